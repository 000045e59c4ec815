"""``verify(run) -> VerifyResult``: only composes the stages.

integrity check of the stored record → build (image or venv) → rerun (recorded as a run
that reproduces the original) → compare (every comparer) → verdict → certificate (in-toto
Statement in a DSSE envelope, signed when a key is given, stored, logged in the hash
chain, and written where asked). A could-not-verify outcome raises ``CouldNotVerify``
(exit 3) before any verdict is computed: altered stored artifacts, changed inputs, no
engine, a failed build, a GPU mismatch, a timeout.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from auditor.certify.decide import decide, environment_digest
from auditor.certify.verdict import VerifyResult
from auditor.compare import compare_runs, evidence_from_store, plot_series
from auditor.core.errors import CouldNotVerify, InputError
from auditor.core.keys import load_private_key
from auditor.core.policy import Policy, RerunPolicy
from auditor.core.progress import stage
from auditor.core.safefile import check_target
from auditor.core.schema import RunRecord
from auditor.env.inputs import build_for, build_notes
from auditor.rerun.backends import choose
from auditor.rerun.record import check_gpus, sandbox_notes
from auditor.rerun.run import rerun as rerun_in
from auditor.rerun.sandbox import Limits
from auditor.store import RunStore

Progress = Callable[[str], None]


@dataclass(frozen=True)
class VerifyOptions:
    """How to verify (CLI flags, policy and environment variables)."""

    backend: str | None = None
    base_image: str | None = field(default_factory=lambda: os.environ.get("AUDITOR_BASE_IMAGE"))
    wheelhouse: Path | None = field(default_factory=lambda: _env_path("AUDITOR_WHEELHOUSE"))
    ca_bundle: Path | None = field(default_factory=lambda: _env_path("AUDITOR_CA_BUNDLE"))
    wheel_cache: Path | None = field(default_factory=lambda: _env_path("AUDITOR_WHEEL_CACHE"))
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
    store: RunStore,
    original: RunRecord,
    policy: Policy,
    opts: VerifyOptions,
    progress: Progress = lambda _line: None,
) -> VerifyResult:
    """Rebuild, rerun, compare and certify one recorded run (resolved once, by the caller)."""
    started = datetime.now(UTC)
    timings: dict[str, float] = {}
    notes = _check_verifiable(store, original, policy.rerun)
    _check_outputs(opts)
    progress(f"verifying run {original.identity.id} ({original.identity.name})")
    backend = choose(opts.backend, progress)
    with _timed(timings, "build", progress, "environment"):
        built = build_for(store, original, opts, backend, progress)
    with _timed(timings, "rerun", progress, "rerun"):
        rerun = rerun_in(store, original, built, backend, limits=opts.limits,
                         skip_replay=opts.skip_replay, pass_env=policy.rerun.pass_env, say=progress)
    notes += [*build_notes(store, original, built), *sandbox_notes(rerun),
              *(f"setting not replayed (test switch): {s}" for s in opts.skip_replay)]
    with _timed(timings, "compare", progress, "comparing metrics, weights, files and environment"):
        left, right = evidence_from_store(store, original), evidence_from_store(store, rerun)
        verdict = decide(compare_runs(left, right, policy.compare), original, rerun, policy, notes)
    timings["total"] = (datetime.now(UTC) - started).total_seconds()
    result = VerifyResult(
        original_run=original.identity.id, original_name=original.identity.name,
        rerun_run=rerun.identity.id, rerun_name=rerun.identity.name, verdict=verdict,
        policy=policy.table(), image=built.image_id, backend=built.backend,
        environment_sha256=environment_digest(rerun), started_at=started, seconds=timings,
        metric_series=plot_series(left, right))
    from auditor.certify.issue import issue_certificate

    with stage(progress, "certificate"):
        return issue_certificate(store, result, original, rerun, opts.sign_key, opts.certificate)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str, progress: Progress, label: str
           ) -> Iterator[None]:
    """Time a stage into ``timings`` and show it (``auditor.core.progress.stage``)."""
    start = datetime.now(UTC)
    try:
        with stage(progress, label):
            yield
    finally:
        timings[name] = (datetime.now(UTC) - start).total_seconds()


def _check_verifiable(store: RunStore, record: RunRecord, policy: RerunPolicy) -> list[str]:
    """A finished run whose every stored artifact still hashes to its name, on a host with
    its GPUs (or a policy that allows a mismatch: then the notes say so). A run imported
    from another tracker lacks what a rerun needs: exit 3, one line."""
    if "verifiable" in record.not_captured:
        raise CouldNotVerify(
            f"run {record.identity.id} cannot be verified: "
            f"{record.not_captured.get('import', 'it was imported')}; it has "
            f"{record.not_captured['verifiable']}",
            hint="record the training with `audit record` to verify it")
    if record.identity.status != "finished":
        raise InputError(
            f"run {record.identity.id} is {record.identity.status}; only finished "
            "runs can be verified"
        )
    for art in record.artifacts:
        store.blobs.verified_path(art.sha256, art.name)  # IntegrityError (exit 3) when altered
    from auditor.release.tamper import raise_first, series_problems

    raise_first(series_problems(store, record), "cannot verify")  # edited metric points
    return check_gpus(record, allow_mismatch=policy.allow_gpu_mismatch)


def preflight(store: RunStore, original: RunRecord, policy: Policy, opts: VerifyOptions
              ) -> list[str]:
    """The checks every verification makes before it builds anything (a full one, or a
    partial one of ``spotcheck``): the run verifiable, the signing key and the certificate
    target usable; the notes for the certificate."""
    notes = _check_verifiable(store, original, policy.rerun)
    _check_outputs(opts)
    return notes


def _check_outputs(opts: VerifyOptions) -> None:
    """The signing key and the certificate target, checked before any build: a bad key or
    an unwritable target is exit 2 now, not after a cold image build and a rerun."""
    if opts.sign_key is not None:
        load_private_key(opts.sign_key)
    if opts.certificate is not None:
        check_target(opts.certificate)


def rerun_only(store: RunStore, original: RunRecord, policy: RerunPolicy, opts: VerifyOptions,
               say: Progress) -> RunRecord:
    """``audit rerun``: build and rerun without comparing (the policy's rerun part only)."""
    _check_verifiable(store, original, policy)
    backend = choose(opts.backend, say)
    built = build_for(store, original, opts, backend, say)
    return rerun_in(store, original, built, backend, limits=opts.limits,
                    skip_replay=opts.skip_replay, pass_env=policy.pass_env, say=say)


def _looks_like_file(ref: str) -> bool:
    """A certificate path (an existing file, or a name with a folder or an extension)."""
    try:
        if Path(ref).is_file():
            return True
    except OSError:  # a name too long for the filesystem is not a file
        return False
    return "/" in ref or "." in ref


def load_verify_result(store: RunStore, ref: str) -> VerifyResult:
    """The stored result of the latest verification of a run (original or rerun id), or of
    the verification a certificate file names."""
    from auditor.certify.issue import stored_result
    from auditor.store import validate_run_ref

    if _looks_like_file(ref):
        from auditor.certify.certificate import open_envelope, read_certificate

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
