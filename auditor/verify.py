"""``verify(run) -> VerifyResult``: only composes the stages.

integrity check of the stored record → build (image or venv) → rerun (recorded as a run
that reproduces the original) → compare (every comparer) → verdict → certificate (in-toto
Statement in a DSSE envelope, signed when a key is given, stored, logged in the hash
chain, and written where asked). A could-not-verify outcome raises ``CouldNotVerify``
(exit 3) before any verdict is computed: altered stored artifacts, changed inputs, no
engine, a failed build, a GPU mismatch, a timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor import __version__
from auditor.build import BuildInputs, BuildResult, build, default_base_image
from auditor.build_venv import venv_root_for
from auditor.compare import compare_runs, evidence_from_store
from auditor.errors import CouldNotVerify, InputError
from auditor.lock import Lock, parse_conda_lock, parse_requirements_lock
from auditor.outcome import VerifyResult
from auditor.policy import Policy
from auditor.rerun import (
    Limits,
    cleanup,
    execute_docker,
    execute_venv,
    interrupt_on_sigterm,
    prepare,
    scratch_dir,
)
from auditor.rerun_record import check_gpus, record_rerun
from auditor.schema import RunRecord
from auditor.store import SqlStore, store_dir_of
from auditor.verdict import decide, environment_digest

Progress = Callable[[str], None]


@dataclass(frozen=True)
class VerifyOptions:
    """How to verify (CLI flags, policy and environment variables)."""

    backend: str | None = None
    base_image: str | None = field(default_factory=lambda: os.environ.get("AUDITOR_BASE_IMAGE"))
    wheelhouse: Path | None = field(default_factory=lambda: _env_path("AUDITOR_WHEELHOUSE"))
    ca_bundle: Path | None = field(default_factory=lambda: _env_path("AUDITOR_CA_BUNDLE"))
    no_cache: bool = False
    sign_key: Path | None = None
    certificate: Path | None = None
    skip_replay: frozenset[str] = frozenset()
    limits: Limits = field(default_factory=Limits)
    strict: bool = False
    allow_unhashed: bool = False


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def verify(
    store: SqlStore,
    run_ref: str,
    policy: Policy,
    opts: VerifyOptions,
    progress: Progress = lambda _line: None,
) -> VerifyResult:
    """Rebuild, rerun, compare and certify one recorded run."""
    started = datetime.now(UTC)
    timings: dict[str, float] = {}
    original = store.get_record(store.resolve(run_ref))
    _check_verifiable(store, original)
    notes = check_gpus(original, allow_mismatch=policy.allow_gpu_mismatch)
    progress(f"verifying run {original.identity.id} ({original.identity.name})")
    built = _timed(timings, "build", lambda: build_for(store, original, opts, progress))
    notes += built.differences + ([built.isolation_note] if built.isolation_note else [])
    notes += _derived_lock_note(store, original)
    rerun = _timed(timings, "rerun", lambda: _rerun(store, original, built, opts, policy, progress))
    notes += [n for n in rerun.not_captured.get("sandbox", "").split("; ") if n]
    notes += [f"setting not replayed (test switch): {s}" for s in opts.skip_replay]
    progress("comparing metrics, weights, files and environment")
    verdict = _timed(
        timings,
        "compare",
        lambda: decide(
            compare_runs(
                evidence_from_store(store, original), evidence_from_store(store, rerun), policy
            ),
            original,
            rerun,
            policy,
            notes,
        ),
    )
    timings["total"] = (datetime.now(UTC) - started).total_seconds()
    result = VerifyResult(
        original_run=original.identity.id,
        original_name=original.identity.name,
        rerun_run=rerun.identity.id,
        rerun_name=rerun.identity.name,
        verdict=verdict,
        policy=policy.model_dump(mode="json"),
        image=built.image_id,
        backend=built.backend,
        environment_sha256=environment_digest(rerun),
        started_at=started,
        seconds=timings,
        metric_series=_series(store, original, rerun),
    )
    from auditor.issue import issue_certificate

    return issue_certificate(store, result, original, rerun, opts.sign_key, opts.certificate)


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = datetime.now(UTC)
    try:
        return fn()
    finally:
        timings[name] = (datetime.now(UTC) - start).total_seconds()


def _check_verifiable(store: SqlStore, record: RunRecord) -> None:
    """A finished run whose every stored artifact still hashes to its name."""
    if record.identity.status != "finished":
        raise InputError(
            f"run {record.identity.id} is {record.identity.status}; only finished "
            "runs can be verified"
        )
    for art in record.artifacts:
        store.blobs.verified_path(art.sha256, art.name)  # IntegrityError (exit 3) when altered
    from auditor.tamper import raise_first, series_problems

    raise_first(series_problems(store, record), "cannot verify")  # edited metric points


def load_lock(store: SqlStore, record: RunRecord, *, allow_unhashed: bool = False) -> Lock:
    """The run's lockfile; a derived (unhashed) one is hashed with pip-tools first, once
    (``auditor.lock_cache``: the compiled lock is kept in the store and reused)."""
    py = record.environment.python
    if py is None or py.lock is None:
        raise CouldNotVerify(f"run {record.identity.id} has no recorded Python environment")
    text = store.blobs.read_bytes(py.lock.sha256, py.lock.artifact).decode("utf-8")
    name = Path(py.lock.artifact).name
    if py.lock.kind == "conda":
        tmp = store_dir_of(store) / "tmp" / name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        return parse_conda_lock(tmp)
    if py.lock.origin == "derived":  # compiled once with pip-tools, then reused
        from auditor.lock_cache import compiled_lock

        links = [p for p in [_env_path("AUDITOR_WHEELHOUSE")] if p]
        return compiled_lock(store, record, text, links)
    return parse_requirements_lock(text, name=name, allow_unhashed=allow_unhashed)


def _derived_lock_note(store: SqlStore, record: RunRecord) -> list[str]:
    """The certificate names the lock a derived run was really rebuilt from."""
    from auditor.lock_cache import cached_lock_ref

    ref = cached_lock_ref(store, record)
    return [] if ref is None else [
        f"no project lockfile: rebuilt from the lock compiled from the recorded installed "
        f"set (pip-compile --generate-hashes, {ref.packages} packages, sha256 {ref.sha256})"]


def inputs_for(store: SqlStore, record: RunRecord, opts: VerifyOptions) -> BuildInputs:
    """The build inputs of a run: its lock, recorded Python, base image and build inputs."""
    py = record.environment.python
    lock = load_lock(store, record, allow_unhashed=opts.allow_unhashed)
    acc = record.environment.accelerators
    cuda = acc.torch_cuda if acc and acc.gpus else None
    cudnn = acc.cudnn if acc and acc.gpus else None
    base = opts.base_image or default_base_image(py.version if py else "3", cuda, cudnn)
    return BuildInputs(
        run_id=record.identity.id,
        lock=lock,
        python_version=py.version if py else "3",
        base_image=base,
        base_image_id=_base_id(opts.backend, base),
        wheelhouse=opts.wheelhouse,
        ca_bundle=opts.ca_bundle,
        cuda=cuda,
        cudnn=cudnn,
        auditor_version=__version__,
        strict=opts.strict,
    )


def build_for(
    store: SqlStore, record: RunRecord, opts: VerifyOptions, say: Progress
) -> BuildResult:
    """Build (or reuse) a run's environment and remember the build in the store."""
    inputs = inputs_for(store, record, opts)
    say(
        f"building the environment ({len(inputs.lock.packages)} locked packages, base "
        f"{inputs.base_image})"
    )
    result = build(
        inputs,
        backend=opts.backend,
        no_cache=opts.no_cache,
        progress=say,
        venv_root=venv_root_for(store_dir_of(store)),
    )
    log_sha, _ = store.blobs.put_bytes(result.log.encode())
    store.put_build(
        result.inputs_digest,
        record.identity.id,
        result.model_copy(update={"log": f"sha256:{log_sha}"}).model_dump_json(),
    )
    return result


def _base_id(backend: str | None, base: str) -> str | None:
    from auditor.build import resolve_base_image_id

    if backend == "venv":
        return None
    try:
        return resolve_base_image_id(base)
    except Exception:  # noqa: BLE001 - the build itself reports a missing engine or image
        return None


def rerun_only(store: SqlStore, original: RunRecord, policy: Policy, opts: VerifyOptions,
               say: Progress) -> RunRecord:
    """``audit rerun``: build and rerun without comparing."""
    _check_verifiable(store, original)
    check_gpus(original, allow_mismatch=policy.allow_gpu_mismatch)
    return _rerun(store, original, build_for(store, original, opts, say), opts, policy, say)


def _rerun(
    store: SqlStore,
    original: RunRecord,
    built: BuildResult,
    opts: VerifyOptions,
    policy: Policy,
    say: Progress,
) -> RunRecord:
    with interrupt_on_sigterm():
        return _rerun_in_scratch(store, original, built, opts, policy, say)


def _rerun_in_scratch(
    store: SqlStore,
    original: RunRecord,
    built: BuildResult,
    opts: VerifyOptions,
    policy: Policy,
    say: Progress,
) -> RunRecord:
    tmp = scratch_dir()
    workdir = Path(tmp.name)
    try:
        acc = original.environment.accelerators
        limits = replace(opts.limits, gpus=len(acc.gpus) if acc else 0)
        prep = prepare(
            store, original, workdir, skip_replay=opts.skip_replay, pass_env=policy.pass_env
        )
        say(f"rerunning `{' '.join(prep.argv)}` ({built.backend}, no network)")
        return record_rerun(
            store,
            original,
            prep,
            built,
            lambda sink: (
                execute_docker(prep, built.image_id, limits, sink)
                if built.backend == "docker"
                else execute_venv(
                    prep, Path(built.tag), limits, sink, hidden=(store_dir_of(store),),
                    also_hidden=_repository(original),
                )
            ),
        )
    finally:
        cleanup(workdir)
        tmp.cleanup()


def _repository(original: RunRecord) -> tuple[Path, ...]:
    """The original run's repository on this host: hidden from a venv rerun."""
    return (Path(original.code.root),) if original.code and original.code.root else ()


def _series(
    store: SqlStore, original: RunRecord, rerun: RunRecord, max_points: int = 400
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Metric curves of both runs, downsampled for plots."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for side, rec in (("original", original), ("rerun", rerun)):
        series: dict[str, list[tuple[int, float]]] = {}
        for key in sorted(rec.metrics.final):
            points = [(p.step, p.value) for p in store.iter_metrics(rec.identity.id, key)]
            stride = max(1, len(points) // max_points)
            series[key] = points[::stride]
        out[side] = series
    return out


def _looks_like_file(ref: str) -> bool:
    """A certificate path (an existing file, or a name with a folder or an extension)."""
    try:
        if Path(ref).is_file():
            return True
    except OSError:  # a name too long for the filesystem is not a file
        return False
    return "/" in ref or "." in ref


def load_verify_result(store: SqlStore, ref: str) -> VerifyResult:
    """The stored result of the latest verification of a run (original or rerun id), or of
    the verification a certificate file names."""
    from auditor.issue import stored_result
    from auditor.store import validate_run_ref

    if _looks_like_file(ref):
        from auditor.certificate import open_envelope, read_certificate

        statement = open_envelope(read_certificate(Path(ref)), None, require_signature=False)
        ref = statement.predicate.rerun_run or statement.predicate.original_run
    validate_run_ref(ref)
    run_id = store.resolve(ref)
    record = store.get_record(run_id)
    if record.identity.reproduces is None:
        reruns = store.run_ids_reproducing(run_id)
        if not reruns:
            raise InputError(
                f"run {run_id} has not been verified yet", hint=f"run `audit verify {run_id[:10]}`"
            )
        record = store.get_record(reruns[0])
    return stored_result(store, record)
