"""Moving runs between stores: ``audit push`` (local → team) and ``audit pull`` (team → local).

One function, ``sync(source, target, run_ids)``, does both directions. For each run:

1. The source record is read and checked against its digest, its metric points against
   the record's ``metrics.series_sha256``, and every object it names is re-hashed at the
   source (``verified_path``).
2. Objects are written to the target create-only (an object already there is never
   overwritten) and re-hashed *at the target* afterwards, so a wrong or altered object
   on either side stops the run with ``IntegrityError`` naming the digest.
3. Last, one transaction on the target inserts the metric points, the record row, its
   artifact index, its signature (``record-sig:<id>`` in ``meta``) and its import key;
   the derived rows (the ``run_values`` index and the curve previews) are made there
   from what was copied, never copied themselves.
   A run is therefore either wholly at the target or not at all: a push killed at any
   point leaves at most objects that no record names yet, and the next push completes
   it. The record is then read back through its digest.

A run already at the target with the same record digest is skipped (pushing twice adds
nothing), except that an object of it missing there (deleted behind our back) is copied
again; one with another digest is a conflict: the run is not touched, the others are
still moved, and ``RunConflict`` names it at the end. Runs still recording are not moved
(their record is not final). Certificates of the moved runs travel after both of their
runs (the rerun a certificate names is moved with it): the envelope object first, then
the certificate log of the target (``CertificateLog``, given by the caller: the log is
the certify stage's), then the certificates row; a certificate already logged is not
logged twice.

What this module checks is each object and record as it moves. The source as a whole (its
certificate log and signed head, its certificates table, record signatures, certified
records against their certificates) is checked by the caller before ``sync`` is called
(``auditor.release.tamper.transfer_problems``, from ``audit push``/``pull``): this stage
sits below the certify stage that owns those formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from auditor.core.errors import IntegrityError, RunConflict, StoreError, StoreUnavailable
from auditor.core.schema import RunRecord, record_sha256
from auditor.store.base import (
    CertificateRow,
    MetricPoint,
    RunStore,
    float_to_bits,
    runs_to_move,
    series_digest,
)
from auditor.store.signatures import PREFIX as SIG_PREFIX
from auditor.store.sql import SqlStore
from auditor.store.sql_base import reason
from auditor.store.sql_metrics import write_previews
from auditor.store.sql_records import artifact_rows, record_row, write_values
from auditor.store.sql_schema import t_artifacts, t_imports, t_meta, t_metrics, t_runs

BATCH = 5_000


class CertificateLog(Protocol):
    """The target's certificate log, as the certify stage keeps it."""

    def has(self, cert_sha256: str) -> bool:
        """True when the certificate is logged already."""

    def append(self, cert_sha256: str, run_id: str) -> None:
        """Log the certificate."""


@dataclass
class SyncReport:
    """What a push or pull did, run by run."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, why)
    conflicts: list[str] = field(default_factory=list)
    objects: int = 0  # objects written to the target
    object_bytes: int = 0
    certificates: int = 0  # certificates added to the target
    restored: int = 0  # objects of runs already there that had gone missing there


def sync(
    source: RunStore,
    target: RunStore,
    run_ids: Sequence[str],
    *,
    log: CertificateLog | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> SyncReport:
    """Move ``run_ids`` (full ids in ``source``), their certificates and the reruns those
    name, from ``source`` to ``target``. ``RunConflict`` at the end when any run conflicted."""
    if not isinstance(source, SqlStore) or not isinstance(target, SqlStore):
        raise StoreError("push and pull move runs between SQL stores only")
    try:
        return _sync(source, target, run_ids, log, progress)
    except sa.exc.SQLAlchemyError as exc:  # the direct queries below; methods translate
        from auditor.store.denied import denial

        denied = denial(exc, target.url)  # the target's role may not write: one line, exit 2
        if denied is not None:
            raise denied from None
        why = reason(exc, source.password(), target.password())
        raise StoreUnavailable(f"moving runs from {source.url} to {target.url}: {why}") from None


def _sync(source: SqlStore, target: SqlStore, run_ids: Sequence[str],
          log: CertificateLog | None, progress: Callable[[str], None]) -> SyncReport:
    report = SyncReport()
    wanted, certificates = runs_to_move(source, run_ids)
    moved: set[str] = set()
    for run_id in wanted:
        state = _sync_run(source, target, run_id, report)
        progress(f"{state:8} {run_id}")
        if state in ("copied", "present"):
            moved.add(run_id)
    for sha, row in certificates.items():
        both = row.run_id in moved and (row.rerun_id is None or row.rerun_id in moved)
        if both and _sync_certificate(source, target, row, log):
            report.certificates += 1
            progress(f"{'copied':8} certificate sha256:{sha[:12]}… of run {row.run_id}")
    if report.conflicts:
        first = report.conflicts[0]
        more = len(report.conflicts) - 1
        raise RunConflict(
            f"run {first} is in {target.url} with a different record"
            + (f" (and {more} more run(s) conflict)" if more else "")
            + f"; {len(report.copied)} run(s) copied, {len(report.present)} already there",
            hint="the same run id must never hold two records: compare them with `audit show`",
        )
    return report


def _sync_run(source: SqlStore, target: SqlStore, run_id: str, report: SyncReport) -> str:
    there = _target_digest(target, run_id)
    record = source.get_record(run_id)  # CorruptRecord when it fails its digest
    digest = record_sha256(record)
    if there is not None:
        if there == digest:
            for art in record.artifacts:  # an object deleted there behind our back: again
                if not target.blobs.has(art.sha256):
                    report.object_bytes += _copy_object(
                        source, target, art.sha256, f"run {run_id}: artifact {art.name!r}",
                        report)
                    report.restored += 1
            report.present.append(run_id)
            return "present"
        report.conflicts.append(run_id)
        return "conflict"
    if record.identity.status == "running":
        report.skipped.append((run_id, "still recording"))
        return "running"
    points = list(source.iter_metrics(run_id))
    expected = record.metrics.series_sha256
    if expected is not None and series_digest(points) != expected:
        raise IntegrityError(
            f"run {run_id}: its metric points in {source.url} no longer hash to the record's "
            "series digest: not copied", hint="run `audit fsck` there")
    for art in record.artifacts:
        report.object_bytes += _copy_object(source, target, art.sha256, f"run {run_id}: "
                                            f"artifact {art.name!r}", report)
    if not _insert_run(source, target, record, points):
        return _sync_run(source, target, run_id, report)  # another pusher won the race
    target.get_record(run_id)  # read back through its digest
    report.copied.append(run_id)
    return "copied"


def _copy_object(source: SqlStore, target: SqlStore, sha256: str, what: str,
                 report: SyncReport) -> int:
    """Copy one object create-only; both sides re-hashed. Returns the bytes written."""
    existing = target.blobs.rehash(sha256)
    if existing == sha256:
        return 0
    if existing is not None:
        raise IntegrityError(
            f"{what}: object sha256:{sha256} in the target's artifact store was altered (its "
            f"bytes hash to {existing[:16]}…); not overwritten", hint="run `audit fsck` there")
    path = source.blobs.verified_path(sha256, what)  # IntegrityError when altered here
    got, size = target.blobs.put_file(path)
    after = target.blobs.rehash(sha256)
    if got != sha256 or after != sha256:
        raise IntegrityError(
            f"{what}: object sha256:{sha256} does not hash to its name after the copy "
            f"(it hashes to {(after or got)[:16]}…)", hint="run `audit fsck` on both stores")
    report.objects += 1
    return size


def _target_digest(target: SqlStore, run_id: str) -> str | None:
    with target.engine.connect() as conn:
        return conn.execute(
            sa.select(t_runs.c.record_sha256).where(t_runs.c.id == run_id)
        ).scalar_one_or_none()


def _extras(source: SqlStore, run_id: str) -> tuple[str | None, str | None, list[dict[str, str]]]:
    """(origin, record signature, import keys) of a source run."""
    with source.engine.connect() as conn:
        origin = conn.execute(
            sa.select(t_runs.c.origin).where(t_runs.c.id == run_id)).scalar_one_or_none()
        sig = conn.execute(sa.select(t_meta.c.value).where(
            t_meta.c.key == SIG_PREFIX + run_id)).scalar_one_or_none()
        imports = [dict(r._mapping) for r in conn.execute(
            sa.select(t_imports).where(t_imports.c.run_id == run_id))]
    return origin, sig, imports


def _insert_run(source: SqlStore, target: SqlStore, record: RunRecord,
                points: list[MetricPoint]) -> bool:
    """Everything of the run's rows in one target transaction; False when the run
    appeared there meanwhile (nothing written)."""
    run_id = record.identity.id
    origin, sig, imports = _extras(source, run_id)
    row = record_row(record, None) | {"origin": origin}
    with target.write_tx(run_id) as conn:
        if conn.execute(sa.select(t_runs.c.id).where(t_runs.c.id == run_id)).first():
            return False
        conn.execute(t_metrics.delete().where(t_metrics.c.run_id == run_id))
        for start in range(0, len(points), BATCH):
            conn.execute(t_metrics.insert(), list(_metric_rows(run_id, start,
                                                               points[start:start + BATCH])))
        conn.execute(t_artifacts.delete().where(t_artifacts.c.run_id == run_id))
        if record.artifacts:
            conn.execute(t_artifacts.insert(), artifact_rows(record))
        if sig is not None:
            conn.execute(t_meta.delete().where(t_meta.c.key == SIG_PREFIX + run_id))
            conn.execute(t_meta.insert().values(key=SIG_PREFIX + run_id, value=sig))
        for imp in imports:
            conn.execute(t_imports.delete().where(
                t_imports.c.source == imp["source"],
                t_imports.c.source_run_id == imp["source_run_id"]))
            conn.execute(t_imports.insert().values(**imp))
        conn.execute(t_runs.insert().values(**row))  # last: the run exists from here on
        write_values(conn, run_id, str(row["record"]))  # derived rows: made here, not copied
        write_previews(conn, run_id, target.paramstyle, only_if_due=False)
    return True


def _metric_rows(run_id: str, start: int, points: Iterable[MetricPoint]
                 ) -> Iterable[dict[str, object]]:
    for i, (key, step, value, time) in enumerate(points):
        yield {"run_id": run_id, "seq": start + i, "key": key, "step": step,
               "value": None if value != value else value, "bits": float_to_bits(value),
               "time": time}


def _sync_certificate(source: SqlStore, target: SqlStore, row: CertificateRow,
                      log: CertificateLog | None) -> bool:
    """Copy one certificate (envelope, log line, row); False when it was there already."""
    sha256 = row.sha256
    if any(r.sha256 == sha256 for r in target.certificates(run_id=row.run_id)):
        return False
    _copy_object(source, target, sha256, f"certificate of run {row.run_id}", SyncReport())
    if log is not None and not log.has(sha256):
        log.append(sha256, row.run_id)
    target.put_certificate(row)
    return True


# -- imports from other trackers (``record/from_mlflow.py``) ----------------------------
def imported_run_id(store: RunStore, source: str, source_run_id: str) -> str | None:
    """The run an earlier import of ``source_run_id`` made, if any."""
    sql = _sql(store)
    with _translated(sql), sql.engine.connect() as conn:
        return conn.execute(sa.select(t_imports.c.run_id).where(
            t_imports.c.source == source, t_imports.c.source_run_id == source_run_id)
        ).scalar_one_or_none()


def import_run(store: RunStore, record: RunRecord, points: list[MetricPoint], *, source: str,
               source_run_id: str, origin: str) -> bool:
    """Add an imported run (its objects already stored): metrics, record row, artifact
    index and the import key in one transaction. False when the source run was imported
    meanwhile (nothing written)."""
    from datetime import UTC, datetime

    sql = _sql(store)
    run_id = record.identity.id
    row = record_row(record, None) | {"origin": origin}
    with _translated(sql), sql.write_tx(f"import:{source}:{source_run_id}") as conn:
        if conn.execute(sa.select(t_imports.c.run_id).where(
                t_imports.c.source == source,
                t_imports.c.source_run_id == source_run_id)).first():
            return False
        for start in range(0, len(points), BATCH):
            conn.execute(t_metrics.insert(), list(_metric_rows(run_id, start,
                                                               points[start:start + BATCH])))
        if record.artifacts:
            conn.execute(t_artifacts.insert(), artifact_rows(record))
        conn.execute(t_imports.insert().values(
            source=source, source_run_id=source_run_id, run_id=run_id,
            imported_at=datetime.now(UTC).isoformat()))
        conn.execute(t_runs.insert().values(**row))
        write_values(conn, run_id, str(row["record"]))
        write_previews(conn, run_id, sql.paramstyle, only_if_due=False)
        if sql.on_record is not None:
            sql.on_record(conn, record)
    return True


def _sql(store: RunStore) -> SqlStore:
    if not isinstance(store, SqlStore):
        raise StoreError("imports go into SQL stores only")
    return store


@contextmanager
def _translated(store: SqlStore) -> Iterator[None]:
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:  # direct queries: methods translate their own
        raise StoreUnavailable(f"store {store.url}: {reason(exc, store.password())}") from None
