"""``verify(run) -> VerifyResult``: only composes the stages.

integrity check of the stored record → build (image or venv) → rerun (recorded as a run
that reproduces the original) → compare (every comparer) → verdict → certificate (in-toto
Statement in a DSSE envelope, signed when a key is given, stored, logged in the hash
chain, and written where asked). A could-not-verify outcome raises ``CouldNotVerify``
(exit 3) before any verdict is computed: altered stored artifacts, changed inputs, no
engine, a failed build, a GPU mismatch, a timeout.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.core.errors import AuditorError, CouldNotVerify, InputError
from auditor.core.policy import Policy, RerunPolicy
from auditor.core.progress import stage, timed
from auditor.core.safefile import check_target
from auditor.core.schema import RunRecord
from auditor.env.inputs import build_for, build_notes
from auditor.rerun.backends import choose
from auditor.rerun.record import check_gpus, sandbox_notes
from auditor.rerun.run import rerun as rerun_in
from auditor.rerun.sandbox import Limits
from auditor.store import RunStore

if TYPE_CHECKING:
    from auditor.certify.verdict import VerifyResult
    from auditor.store.batches import ItemResult as ItemResultT
    from auditor.store.batches import Shard as ShardT

Progress = Callable[[str], None]

# What only the stages after the rerun use (the comparers with numpy, the verdict and the
# certificate): imported in the background while the rerun runs, not before it starts.
AFTER_RERUN = ("auditor.certify.decide", "auditor.compare.environment",
               "auditor.compare.files", "auditor.compare.metrics", "auditor.compare.params",
               "auditor.compare.process", "auditor.certify.issue")


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
    with timed(timings, "build", progress, "environment"):
        built = build_for(store, original, opts, backend, progress)
    loading = _import_in_background(AFTER_RERUN)
    with timed(timings, "rerun", progress, "rerun"):
        rerun = rerun_in(store, original, built, backend, limits=opts.limits,
                         skip_replay=opts.skip_replay, pass_env=policy.rerun.pass_env, say=progress)
    loading.join()  # the imports below then find what it loaded (or fail here, as always)
    from auditor.certify.decide import decide, verify_result
    from auditor.certify.issue import issue_certificate
    from auditor.compare import compare_runs, evidence_from_store, plot_series

    notes += [*build_notes(store, original, built), *sandbox_notes(rerun),
              *(f"setting not replayed (test switch): {s}" for s in opts.skip_replay)]
    with timed(timings, "compare", progress, "comparing metrics, weights, files and environment"):
        left, right = evidence_from_store(store, original), evidence_from_store(store, rerun)
        verdict = decide(compare_runs(left, right, policy.compare), original, rerun, policy, notes)
    result = verify_result(original, rerun, verdict, policy, image=built.image_id,
                           backend=built.backend, started=started, seconds=timings,
                           metric_series=plot_series(left, right))
    with stage(progress, "certificate"):
        return issue_certificate(store, result, original, rerun, opts.sign_key, opts.certificate)


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a daemon thread (the rerun waits on its container meanwhile).
    A failure is left to the caller's own import of the module, which raises it."""
    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - raised again by the caller's import
                return

    thread = threading.Thread(target=load, name="auditor-imports", daemon=True)
    thread.start()
    return thread


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
    withheld = record.not_captured.get("code.diff")
    if withheld and record.code is not None and record.code.diff_artifact is None:
        # the tree cannot be rebuilt: say so before a build (a derived lock: minutes)
        raise CouldNotVerify(f"run {record.identity.id} cannot be verified: {withheld}",
                             hint="record the run again once its changes hold no secret")
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
        from auditor.core.keys import load_private_key

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


# -- batches (store/batches.py): shards, claims, one row per run --------------------------
@dataclass(frozen=True)
class BatchOutcome:
    """What one worker of a batch did: its verifications, its runs that could not be
    verified (id, exit code, message), and the runs it left to others (id, why)."""

    batch_id: str
    results: list[VerifyResult]
    failures: list[tuple[str, int, str]]
    skipped: list[tuple[str, str]]


def current_certificate(store: RunStore, record: RunRecord, policy_sha256: str) -> str | None:
    """The sha256 of a certificate of ``record`` issued under the policy whose digest is
    ``policy_sha256`` for this very record (its digest, hence its lockfile), if any: such
    a run is not verified again by a batch."""
    from auditor.certify.certificate import open_envelope
    from auditor.core.schema import record_sha256
    from auditor.store.batches import policy_digest

    digest = record_sha256(record)
    for row in store.certificates(run_id=record.identity.id):
        try:
            predicate = open_envelope(store.blobs.read_bytes(row.sha256, "certificate"), None,
                                      require_signature=False).predicate
        except AuditorError:
            continue  # unreadable: not a current certificate (fsck names it)
        if predicate.original_record_sha256 == digest and policy_digest(
                predicate.policy) == policy_sha256:
            return row.sha256
    return None


def lacking_certificate(store: RunStore, run_ids: list[str], policy: Policy
                        ) -> tuple[list[str], list[tuple[str, str]]]:
    """The runs of ``run_ids`` without a current certificate under ``policy`` (no batch
    verified them under it and lockfile, and no certificate of theirs was issued under
    it), and the others with the reason."""
    from auditor.store.batches import lock_digest, policy_digest

    psha = policy_digest(policy.table())
    records = {i: store.get_record(i) for i in run_ids}
    open_ids = store.batches().needs_verification(
        run_ids, psha, {i: lock_digest(r) for i, r in records.items()})
    skipped = [(i, "verified by an earlier batch under this policy")
               for i in run_ids if i not in set(open_ids)]
    lacking = []
    for run_id in open_ids:
        cert = current_certificate(store, records[run_id], psha)
        if cert is None:
            lacking.append(run_id)
        else:
            skipped.append((run_id, f"has certificate {cert[:12]}… under this policy"))
    return lacking, skipped


def verify_in_batch(store: RunStore, record: RunRecord, policy: Policy, opts: VerifyOptions,
                    batch_id: str, *, worker: str, node: str | None = None,
                    reports: tuple[str, ...] = (), progress: Progress = lambda _line: None,
                    ) -> tuple[VerifyResult | None, ItemResultT | None, str]:
    """Claim ``record`` in batch ``batch_id`` and, when this worker owns the claim, verify
    it and record the item's result (verdict, node, GPU, duration, reports). Returns the
    result (None when not verified), the item result (None when another worker holds the
    claim), and why it was skipped ("" when verified). A could-not-verify is recorded
    (the claim stays open to a later batch) and raised again."""
    from auditor.store.batches import ItemResult, lock_digest, policy_digest

    tables = store.batches()
    psha, lsha = policy_digest(policy.table()), lock_digest(record)
    run_id = record.identity.id
    lease = float(opts.limits.timeout_s) * 2 + 3600  # a killed worker's claim expires
    claim = tables.claim(batch_id, run_id, psha, lsha, worker=worker, lease_s=lease)
    if not claim.owned:
        why = (f"verified by batch {claim.batch_id}" if claim.state == "done"
               else f"being verified by batch {claim.batch_id} ({claim.worker})")
        tables.skip(batch_id, run_id, why, certificate_sha256=claim.certificate_sha256)
        return None, None, why
    here = node or os.environ.get("AUDITOR_NODE") or os.uname().nodename
    started = datetime.now(UTC)
    try:
        result = verify(store, record, policy, opts, progress)
    except BaseException as exc:
        code = exc.exit_code if isinstance(exc, AuditorError) else 3
        verdict = "bad-input" if code == 2 else "could-not-verify"
        message = str(exc) if isinstance(exc, AuditorError) else f"interrupted: {exc!r}"
        item = ItemResult(verdict, code, node=here, gpu=None,
                          seconds=(datetime.now(UTC) - started).total_seconds(),
                          message=message)
        tables.finish(batch_id, run_id, psha, lsha, item, worker=worker)
        raise
    item = ItemResult(result.verdict.level, result.verdict.exit_code, node=here,
                      gpu=_gpu_of(store, result.rerun_run),
                      seconds=result.seconds.get("total"), rerun_id=result.rerun_run,
                      certificate_sha256=result.certificate_sha256, reports=reports)
    tables.finish(batch_id, run_id, psha, lsha, item, worker=worker)
    return result, item, ""


def _gpu_of(store: RunStore, rerun_id: str | None) -> str:
    """The GPU models the rerun saw (``cpu`` for none)."""
    if rerun_id is None:
        return "cpu"
    acc = store.get_record(rerun_id).environment.accelerators
    names = sorted({g.name for g in acc.gpus}) if acc else []
    return ", ".join(names) if names else "cpu"


def verify_batch(store: RunStore, run_ids: list[str], policy: Policy, opts: VerifyOptions, *,
                 batch_id: str, shard: ShardT, executor: str = "local",
                 selection: dict[str, object] | None = None, worker: str | None = None,
                 report_dir: Path | None = None, progress: Progress = lambda _line: None,
                 ) -> BatchOutcome:
    """``audit verify --all --batch ID --shard I/N``: this shard's runs that lack a
    current certificate, each claimed, verified and recorded in the batch."""
    from auditor.store.batches import default_worker, partition, policy_digest, shard_of

    mine = partition(run_ids, shard)
    lacking, skipped = lacking_certificate(store, mine, policy)
    tables = store.batches()
    tables.create(batch_id, policy_sha256=policy_digest(policy.table()), shards=shard.count,
                  executor=executor, selection=selection or {})
    tables.add_items(batch_id, [(i, shard_of(i, shard.count)) for i in mine])
    for run_id, why in skipped:
        tables.skip(batch_id, run_id, why)
    results: list[VerifyResult] = []
    failures: list[tuple[str, int, str]] = []
    me = worker or default_worker()
    for run_id in lacking:
        links = (str(report_dir / f"{run_id}.html"),) if report_dir else ()
        try:
            result, _item, why = verify_in_batch(store, store.get_record(run_id), policy, opts,
                                                 batch_id, worker=me, reports=links,
                                                 progress=progress)
        except AuditorError as exc:
            failures.append((run_id, exc.exit_code, str(exc)))
            continue
        if result is None:
            skipped.append((run_id, why))
        else:
            results.append(result)
    return BatchOutcome(batch_id, results, failures, skipped)
