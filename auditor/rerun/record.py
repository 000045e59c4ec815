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

import os
import re
import socket
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.core.errors import CouldNotVerify
from auditor.core.schema import (
    Environment,
    Identity,
    MetricsSummary,
    PythonEnv,
    RunRecord,
    Seeds,
    new_run_id,
)
from auditor.env.spec import BuildResult
from auditor.record import outputs, session
from auditor.record.capture import determinism as det
from auditor.record.capture.gpu import capture_gpus, gpu_signature
from auditor.record.capture.secrets import redact_env, redact_text
from auditor.record.checkpoints import ingest_spool
from auditor.record.childio import ingest_api, rerun_logs
from auditor.record.wrap import MetricSink, compile_regex, observed, probe_params
from auditor.rerun import lease
from auditor.rerun.bwrap import ISOLATED
from auditor.rerun.ingest import collect_api_artifacts, collect_changed, open_inside, stage_probe
from auditor.rerun.sandbox import Executed, Prepared
from auditor.store import RunStore

Executor = Callable[[Callable[[int, str], None]], Executed]


def record_rerun(
    store: RunStore, original: RunRecord, prep: Prepared, built: BuildResult, execute: Executor
) -> RunRecord:
    """Execute the rerun and store it as a run that reproduces ``original``."""
    rerun = _initial(original, prep, built)
    store.put_record(rerun, pid=os.getpid())  # `running` while this process lives
    lease.note_run(prep.workdir, rerun.identity.id)
    sink = MetricSink(store, rerun.identity.id, compile_regex(original.command.metrics_regex))
    try:
        done = execute(sink.feed)
    except BaseException:
        session.finish(store, rerun, status="failed", exit_code=None, updates={})
        raise
    sink.flush()
    final = _complete(store, rerun, prep, done, sink)
    reason = failed_at_start(original, done)
    if reason:
        raise CouldNotVerify(reason, hint="the rerun is stored as failed: "
                             f"audit show {final.identity.id[:12]}")
    return final


def sandbox_notes(rerun: RunRecord) -> list[str]:
    """The sandbox the rerun ran in, as stored with its record (for the certificate)."""
    return [n for n in rerun.not_captured.get("sandbox", "").split("; ") if n]


def isolation_level(backend: str | None, notes: list[str] | tuple[str, ...]) -> str | None:
    """How isolated the rerun was, for the certificate: ``container`` (docker), ``venv``
    (the venv in bubblewrap, which its sandbox notes say), ``none`` (a venv rerun without
    bubblewrap: a host process that could read this host's files); None when unknown."""
    if backend == "docker":
        return "container"
    if backend == "venv":
        return "venv" if any(n.startswith(ISOLATED) for n in notes) else "none"
    return None


_ENVIRONMENT_FAILURE = re.compile(
    r"^(?:ModuleNotFoundError|ImportError)\b"
    r"|can't open file|[Pp]ermission denied|PermissionError|No such file or directory"
    r"|^(?:unshare|setpriv|sh|mount|auditor|bwrap): "
)


def failed_at_start(original: RunRecord, done: Executed) -> str | None:
    """Why a failed rerun is auditor's failure, not the run's, or None.

    A rerun that exits non-zero before the training's first line of output (when the
    original printed one), or whose last error line is an import, permission or missing-file
    error, never got to run the training: that is could-not-verify (exit 3), with the
    rerun's last stderr lines, never a reproducibility verdict.
    """
    if done.exit_code == 0:
        return None
    printed = any(a.name == "logs/stdout.txt" and a.size > 0 for a in original.artifacts)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if (printed and not done.stdout.strip()) or _ENVIRONMENT_FAILURE.search(last):
        tail = " | ".join(line.strip() for line in lines[-3:]) or "(nothing on stderr)"
        return (f"the rerun failed before the training started (exit {done.exit_code}); "
                f"last stderr lines: {redact_text(tail)[:600]}")
    return None


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
    store: RunStore, rerun: RunRecord, prep: Prepared, done: Executed, sink: MetricSink
) -> RunRecord:
    """Complete the rerun's record from what it left behind, all of it untrusted: only
    regular files inside its own tree and probe folder are read (``rerun_ingest``)."""
    max_bytes = outputs.DEFAULT_MAX_OUTPUT_BYTES
    with tempfile.TemporaryDirectory(prefix="auditor-ingest-") as staging:
        staged = Path(staging)
        lines, warnings = stage_probe(done.probe_dir, staged)
        api = ingest_api(store, rerun.identity.id, staged, sink)
        obs = det.read_probe(staged, None)
        notes = dict(rerun.not_captured)
        params = _params(prep.record, rerun, staged, done, notes)
    cwd_rel = prep.cwd.relative_to(prep.tree).as_posix()
    produced = collect_changed(store.blobs, prep.tree, cwd_rel, prep.snapshot.changed(), max_bytes)
    logged = collect_api_artifacts(store.blobs, prep.tree, done.seen_as, lines, max_bytes)
    taken = {a.name for a in produced.artifacts}
    # the rerun's checkpoints (a segment's end) and its resumed-state snapshot, untrusted
    spool = ingest_spool(store.blobs, done.probe_dir / "checkpoints", opener=open_inside)
    warnings += [*produced.warnings, *logged.warnings, *spool.warnings]
    determinism, seeds, environment = observed(rerun, obs, dict(prep.env), api)
    notes.update(produced.withheld + logged.withheld)  # outputs holding a secret
    if done.notes:
        notes["sandbox"] = "; ".join(done.notes)
    status = "finished" if done.exit_code == 0 else "failed"
    return session.finish(
        store,
        rerun,
        status=status,
        exit_code=done.exit_code,
        updates={
            "params": {**params, **api["params"]},
            "seeds": seeds,
            "determinism": determinism,
            "environment": environment,
            "metrics": MetricsSummary(
                final=sink.final, points=sink.points, warnings=tuple(sink.warnings + warnings)
            ),
            "artifacts": (
                *rerun.artifacts,
                *rerun_logs(store, done.stdout, done.stderr),
                *produced.artifacts,
                # a logged file the rerun also wrote is kept once, as the tree holds it
                *(a for a in logged.artifacts if a.name not in taken),
                *spool.artifacts,
            ),
            "checkpoints": tuple(spool.checkpoints),
            "not_captured": notes,
        },
    )


def _params(original: RunRecord, rerun: RunRecord, staged: Path, done: Executed,
            notes: dict[str, str]) -> dict[str, Any]:
    """The rerun's params, like for like with its original's: when the original's came from
    the probe (its note of sources), the rerun's own probe's (paths under the rerun's tree
    mapped back to the original's); else, or when the rerun's parse was not seen (noted),
    the original's as recorded (the same command line)."""
    if "params" not in original.not_captured:  # the command line's, or an older record
        return dict(rerun.params)
    root = original.code.root if original.code else ""
    params = probe_params(staged, rerun.params, notes,
                          rebase=(done.seen_as, root) if root else None)
    if "params" not in notes:
        notes["params"] = ("the rerun's argparse parse was not seen; the original's params "
                           "are shown")
    return params


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
