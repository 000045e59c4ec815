"""Tamper evidence: the certificate log against the index, and stored evidence against the
certificates that signed it. Used by ``audit gate`` (any problem: ``IntegrityError``,
exit 3) and ``audit fsck`` (every problem listed).

Contract:

- ``index_problems(store, trusted)``: the append-only log (``certlog.log_of(store)``: the
  store folder's ``log/certs.jsonl``, or a server store's ``cert_log`` table) must pass
  ``certlog.verify_log`` (chain, head; the *signed* head when ``trusted`` keys are given),
  every logged certificate must be in the blob store and parse, and the ``certificates``
  table must hold exactly the logged certificates with the fields their statements say.
  A row deleted (``delete from certificates where verdict='not-reproduced'``), inserted
  or edited behind the log's back is named by its sha256, its run and its log line.
- ``evidence_problems(store, statement, source)``: the certified run's record must still
  hash to the digest the certificate signed (so a record rewritten together with its
  ``record_sha256`` column is caught), the rerun's too (ignoring the verification result
  attached after signing), and every subject must be an artifact of that record with the
  same sha256 whose object still exists and re-hashes to its name (T7 flipped, T8
  swapped, deleted objects), and the metric points must still hash to the record's
  ``metrics.series_sha256`` (``series_problems``).

- ``transfer_problems(store, run_ids, trusted)``: what ``audit push``/``pull`` check at the
  source before copying anything: ``index_problems`` (the log, its signed head against the
  lines it covers, the certificates table), every record to be moved against its digest and
  its record signature (``AUDITOR_SIGN_KEY``; verified with ``trusted`` keys), and every
  certificate of a moved run against the evidence it signed (``evidence_problems``: a
  certified record rewritten together with its digest no longer matches).

Tampering by someone who can write the store files is detected, not prevented: a
rollback of the log and its signed head together to an older signed state is only
visible against a copy of the head kept elsewhere (see docs/SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from auditor.certify import log as certlog
from auditor.certify.attest import MODEL_PREFIX, in_folder, model_digest
from auditor.certify.certificate import Statement, open_envelope
from auditor.certify.issue import RESULT_ARTIFACT
from auditor.core.errors import AuditorError, IntegrityError, RunNotFound
from auditor.core.keys import PublicKey
from auditor.core.schema import ArtifactRef, RunRecord, record_sha256
from auditor.store import CertificateRow, signatures
from auditor.store.base import (
    CertificateReader,
    HasBlobs,
    MetricReader,
    RecordReader,
    RunReader,
    StoreAudit,
    runs_to_move,
    series_digest,
)


@dataclass(frozen=True)
class Logged:
    """One certificate of the log, with its (not signature-checked) statement."""

    line: int
    sha256: str
    statement: Statement


def logged_certificates(
    store: CertificateReader, trusted: list[PublicKey] | None
) -> tuple[list[Logged], list[str]]:
    """The log's certificates and the problems found reading them."""
    log = certlog.log_of(store)
    if not certlog.has_log(log):
        return [], []
    signed = log.exists(certlog.SIGNED_HEAD_NAME)
    try:
        certlog.verify_log(log, trusted if (trusted and signed) else None)
        if trusted and not signed and certlog.read_entries(log):
            return [], [f"{log.label(certlog.SIGNED_HEAD_NAME)}: missing: the certificate "
                        "log head is not signed, so deleted entries cannot be ruled out"]
        entries = certlog.read_entries(log)
    except AuditorError as exc:
        return [], [str(exc)]
    found: list[Logged] = []
    problems: list[str] = []
    for entry in entries:
        try:
            data = store.blobs.read_bytes(entry.cert_sha256, f"certificate log line {entry.seq}")
            statement = open_envelope(data, None, require_signature=False,
                                      source=f"certificate sha256:{entry.cert_sha256[:12]}…")
        except AuditorError as exc:
            problems.append(f"certificate log line {entry.seq}: {exc}")
            continue
        if statement.predicate.original_run != entry.run_id:
            problems.append(f"certificate log line {entry.seq}: names run {entry.run_id} but "
                            f"its certificate certifies run {statement.predicate.original_run}")
        found.append(Logged(entry.seq, entry.cert_sha256, statement))
    return found, problems


def index_problems(store: CertificateReader, trusted: list[PublicKey] | None) -> list[str]:
    """What is wrong with the log, or with the certificates table measured against it."""
    logged, problems = logged_certificates(store, trusted)
    if problems and not logged:
        return problems
    rows = {row.sha256: row for row in store.certificates()}
    by_sha = {item.sha256: item for item in logged}
    for item in logged:
        row = rows.get(item.sha256)
        if row is None:
            pred = item.statement.predicate
            problems.append(
                f"certificate sha256:{item.sha256} (log line {item.line}, run "
                f"{pred.original_run}, {pred.verdict}, issued {pred.issued_at:%Y-%m-%d}) is "
                "missing from the certificates table: it was deleted behind the log's back")
        else:
            problems += _row_problems(row, item)
    for sha, row in rows.items():
        if sha not in by_sha:
            problems.append(
                f"certificates table: sha256:{sha} (run {row.run_id}, {row.verdict}) is not in "
                "the certificate log: it was added behind the log's back")
    return problems


def _row_problems(row: CertificateRow, item: Logged) -> list[str]:
    pred = item.statement.predicate
    signed = {
        "run_id": pred.original_run,
        "rerun_id": pred.rerun_run,
        "verdict": pred.verdict,
        "issued_at": pred.issued_at.astimezone(UTC).isoformat(),
        "subjects": tuple(s.digest.get("sha256", "") for s in item.statement.subject),
    }
    issued = row.issued_at if row.issued_at.tzinfo else row.issued_at.replace(tzinfo=UTC)
    stored = {"run_id": row.run_id, "rerun_id": row.rerun_id, "verdict": row.verdict,
              "issued_at": issued.astimezone(UTC).isoformat(),
              "subjects": row.subjects}
    return [f"certificates table: sha256:{row.sha256} (log line {item.line}): {name} is "
            f"{stored[name]!r} but the certificate says {signed[name]!r}: the row was edited"
            for name in signed if stored[name] != signed[name]]


def evidence_problems(store: RunReader, statement: Statement, source: str) -> list[str]:
    """What no longer matches between the store and a certificate's signed digests."""
    pred = statement.predicate
    record, problem = _record(store, pred.original_run, source)
    if record is None:
        return [problem]
    now = record_sha256(record)
    if now != pred.original_record_sha256:
        return [f"{source}: the record of run {pred.original_run} was rewritten after it was "
                f"certified (signed sha256:{pred.original_record_sha256[:16]}…, now "
                f"sha256:{now[:16]}…)"]
    problems = _rerun_problems(store, statement, source) + series_problems(store, record)
    artifacts = {a.name: a for a in record.artifacts}
    for subject in statement.subject:
        sha = subject.digest.get("sha256", "")
        if subject.name.startswith("record:"):
            if sha != now:
                problems.append(f"{source}: subject {subject.name} sha256:{sha[:16]}… is not "
                                f"the record's digest sha256:{now[:16]}…")
            continue
        if subject.name.startswith(MODEL_PREFIX):
            problems += _model_problems(statement, record, subject.name, sha, source)
            continue
        problems += _subject_problems(store, subject.name, sha, artifacts, source)
    return problems


def series_problems(store: MetricReader, record: RunRecord) -> list[str]:
    """The stored metric points against the series digest the record holds."""
    signed = record.metrics.series_sha256
    if signed is None:
        return []
    now = series_digest(store.iter_metrics(record.identity.id))
    if now == signed:
        return []
    return [f"run {record.identity.id}: the stored metric series does not match the record's "
            f"series_sha256 ({signed[:16]}…, now {now[:16]}…): metric points were changed, "
            "added or deleted behind auditor's back"]


def _model_problems(statement: Statement, record: RunRecord, name: str, sha: str,
                    source: str) -> list[str]:
    """A ``model:<folder>`` subject: the folder's outputs in the record hash to it, and each
    of them is itself a subject (a model digest never covers an uncompared output)."""
    members = in_folder(record.outputs(), name.removeprefix(MODEL_PREFIX))
    if not members or model_digest((rel, a.sha256) for rel, a in members) != sha:
        return [f"{source}: subject {name} (sha256:{sha[:16]}…) is not the digest of that "
                "folder's outputs in the certified run's record"]
    named = {s.digest.get("sha256", "") for s in statement.subject}
    missing = [a.name for _, a in members if a.sha256 not in named]
    return [f"{source}: subject {name} covers {missing[0]}, which the certificate does not "
            "certify"] if missing else []


def _subject_problems(store: HasBlobs, name: str, sha: str, artifacts: dict[str, ArtifactRef],
                      source: str) -> list[str]:
    art = artifacts.get(name)
    if art is None or art.sha256 != sha:
        return [f"{source}: subject {name} (sha256:{sha[:16]}…) is not that artifact of the "
                "certified run's record"]
    try:
        store.blobs.verified_path(sha, name)
    except IntegrityError as exc:
        return [f"{source}: {exc}"]
    return []


def _rerun_problems(store: RecordReader, statement: Statement, source: str) -> list[str]:
    pred = statement.predicate
    if not pred.rerun_run or not pred.rerun_record_sha256:
        return []
    rerun, problem = _record(store, pred.rerun_run, source)
    if rerun is None:
        return [problem]
    signed_part = rerun.model_copy(update={
        "artifacts": tuple(a for a in rerun.artifacts if a.name != RESULT_ARTIFACT)})
    if record_sha256(signed_part) != pred.rerun_record_sha256:
        return [f"{source}: the record of rerun {pred.rerun_run} was rewritten after it was "
                "certified"]
    return []


def _record(store: RecordReader, run_id: str, source: str) -> tuple[RunRecord | None, str]:
    try:
        return store.get_record(run_id), ""
    except RunNotFound:
        return None, f"{source}: run {run_id} is no longer in the store (deleted behind our back)"
    except AuditorError as exc:
        return None, f"{source}: {exc}"


def raise_first(problems: list[str], what: str) -> None:
    """``IntegrityError`` naming the first problem (and how many more) when there are any."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(f"{what}: {problems[0]}{more}",
                             hint="the store was changed behind auditor's back; run `audit fsck`")


def transfer_problems(store: StoreAudit, run_ids: Sequence[str],
                      trusted: list[PublicKey] | None) -> list[str]:
    """What is wrong at a push's or pull's source, for the runs it would move (see the
    module contract): nothing may be copied when this is not empty."""
    problems = index_problems(store, trusted)
    wanted, certified = runs_to_move(store, run_ids)
    for run_id in wanted:
        problems += _record_problems(store, run_id, trusted)
    for sha, row in certified.items():
        source = f"certificate sha256:{sha[:12]}… of run {row.run_id}"
        try:
            statement = open_envelope(store.blobs.read_bytes(sha, source), None,
                                      require_signature=False, source=source)
        except AuditorError as exc:
            problems.append(str(exc))
            continue
        problems += evidence_problems(store, statement, source)
    return problems


def _record_problems(store: signatures.SignedRecords, run_id: str,
                     trusted: list[PublicKey] | None) -> list[str]:
    """The record against its digest and its stored signature."""
    try:
        record = store.get_record(run_id)
    except RunNotFound:
        return []  # named by the caller's own lookup (a certificate's rerun gone: evidence)
    except AuditorError as exc:
        return [str(exc)]
    sig = signatures.signature_of(store, run_id)
    if sig is None:
        return []
    if sig.record_sha256 != record_sha256(record):
        return [f"run {run_id}: the record was rewritten after it was signed (signed "
                f"sha256:{sig.record_sha256[:16]}…, now {record_sha256(record)[:16]}…)"]
    if trusted and not signatures.verifies(sig, trusted):
        return [f"run {run_id}: its record signature does not verify with any trusted key "
                f"(signed by {sig.keyid[:12]})"]
    return []
