"""The rerun is itself a run: recorded in the store, pointing at the run it reproduces.

``record_rerun`` stores a ``running`` record before executing (so a killed verification
leaves a trace), then completes it with what the rerun produced: metrics parsed from its
stdout (JSON lines and the recorded ``--metrics-regex``) and from the Python API, outputs
created in the working directory, logs (secrets scrubbed), and determinism switches and
seeds observed inside the rerun process. Its environment is the rebuilt one: the image's
Python and packages, this host's system and GPUs, the replayed variables.

``check_gpus`` decides whether this host can rerun a GPU run: same number of GPUs with
the same model and compute capability, unless the policy allows a mismatch (then the
certificate says so). Each recorded GPU (model and compute capability) must be present on
the host, counted with multiplicity; extra host GPUs are fine.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from auditor.build import BuildResult
from auditor.errors import CouldNotVerify
from auditor.record import outputs, session
from auditor.record.capture import determinism as det
from auditor.record.capture.gpu import capture_gpus, gpu_signature
from auditor.record.capture.secrets import redact_env
from auditor.record.wrap import MetricSink, _ingest_api, _logs, compile_regex
from auditor.rerun import Executed, Prepared, host_path
from auditor.schema import (
    Environment,
    Identity,
    MetricsSummary,
    PythonEnv,
    RunRecord,
    Seeds,
    new_run_id,
)
from auditor.store import SqlStore

Executor = Callable[[Callable[[int, str], None]], Executed]


def record_rerun(
    store: SqlStore, original: RunRecord, prep: Prepared, built: BuildResult, execute: Executor
) -> RunRecord:
    """Execute the rerun and store it as a run that reproduces ``original``."""
    rerun = _initial(original, prep, built)
    store.put_record(rerun)
    sink = MetricSink(store, rerun.identity.id, compile_regex(original.command.metrics_regex))
    try:
        done = execute(sink.feed)
    except BaseException:
        session.finish(store, rerun, status="failed", exit_code=None, updates={})
        raise
    sink.flush()
    return _complete(store, rerun, prep, done, sink)


def _initial(original: RunRecord, prep: Prepared, built: BuildResult) -> RunRecord:
    py = original.environment.python
    env = Environment(
        python=PythonEnv(
            executable=f"python in {built.backend} {built.image_id[:19]}",
            version=built.python_version,
            implementation=py.implementation if py else "CPython",
            build=built.python_build,
            packages=dict(sorted(built.packages.items())),
            lock=py.lock if py else None,
        ),
        system=session._system({}),
        accelerators=session._accelerators({}),
        container_image=built.image_id,
        env_vars=redact_env(prep.env),
    )
    return RunRecord(
        identity=Identity(
            id=new_run_id(),
            name=f"{original.identity.name} (rerun)",
            user=session._user(),
            host=socket.gethostname(),
            started_at=datetime.now(UTC),
            reproduces=original.identity.id,
            tags=("rerun",),
        ),
        command=original.command,
        code=original.code,
        params=original.params,
        data=original.data,
        seeds=Seeds(pythonhashseed=prep.env.get("PYTHONHASHSEED")),
        environment=env,
        artifacts=tuple(a for a in original.artifacts if a.kind in ("code", "lock")),
        not_captured={"replay": "; ".join(prep.notes)} if prep.notes else {},
    )


def _complete(
    store: SqlStore, rerun: RunRecord, prep: Prepared, done: Executed, sink: MetricSink
) -> RunRecord:
    api = _ingest_api(store, rerun.identity.id, done.probe_dir, sink,
                      lambda path: host_path(prep, path))
    produced, warnings = outputs.collect(
        store.blobs, [], prep.snapshot, prep.cwd, outputs.DEFAULT_MAX_OUTPUT_BYTES
    )
    obs = det.read_probe(done.probe_dir, None)
    determinism = det.from_observation(obs, prep.env) if obs else det.environment_only(prep.env)
    seeds = rerun.seeds.model_copy(
        update={
            "seed": api["seed"],
            "seeded": tuple(api["seeded"]),
            "torch_initial_seed": (obs or {}).get("torch_initial_seed"),
        }
    )
    environment = rerun.environment.model_copy(
        update={"accelerators": session.with_cuda_stack(rerun.environment.accelerators, obs)}
    )
    status = "finished" if done.exit_code == 0 else "failed"
    return session.finish(
        store,
        rerun,
        status=status,
        exit_code=done.exit_code,
        updates={
            "params": {**rerun.params, **api["params"]},
            "seeds": seeds,
            "determinism": determinism,
            "environment": environment,
            "metrics": MetricsSummary(
                final=sink.final, points=sink.points, warnings=tuple(sink.warnings + warnings)
            ),
            "artifacts": (
                *rerun.artifacts,
                *_logs(store, done.stdout, done.stderr),
                *produced,
                *api["artifacts"],
            ),
        },
    )


def check_gpus(
    original: RunRecord, *, allow_mismatch: bool, host: dict[str, Any] | None = None
) -> list[str]:
    """Notes for the certificate; CouldNotVerify when this host cannot match the run's GPUs."""
    acc = original.environment.accelerators
    wanted = [(g.name, g.compute_capability) for g in (acc.gpus if acc else ())]
    if not wanted:
        return []
    found = host if host is not None else capture_gpus()
    have = [gpu_signature(g) for g in found.get("gpus", [])] if found.get("captured") else []
    if not Counter(wanted) - Counter(have):  # every recorded (model, capability) is here
        return []
    said = ", ".join(f"{n} (cc {c})" for n, c in wanted)
    here = ", ".join(f"{n} (cc {c})" for n, c in have) or f"no GPU ({found.get('reason', 'none')})"
    message = f"the run used {len(wanted)} GPU(s): {said}; this host has {here}"
    if allow_mismatch:
        return [f"GPU mismatch allowed by policy: {message}"]
    raise CouldNotVerify(
        message,
        hint="rerun on a matching host, or set allow_gpu_mismatch "
        "in the policy (the certificate then says so)",
    )
