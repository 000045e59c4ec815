"""The runs family of the SQL store: the ``runs`` table (each run's record and summary
columns), its artifact index (``artifacts``) and the filter/sort values derived from the
record (``run_values``, ``store/values.py``). One write per run (``put_record``); reads
give checked records (``store/records.py`` parses them) and ``RunSummary`` rows.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from auditor.core.errors import AmbiguousRunId, RunNotFound
from auditor.store.base import PageIds, QuerySpec, RunSummary
from auditor.store.records import parse_record, validate_run_ref
from auditor.store.sql_base import SqlBase, db, db_iter
from auditor.store.sql_metrics import write_previews
from auditor.store.sql_schema import t_artifacts, t_certs, t_runs, t_values
from auditor.store.summaries import _json_float, _scalar_params, _summary_of_record, pid_alive

if TYPE_CHECKING:  # pydantic's schema loads when a record is read or written
    from auditor.core.schema import RunRecord


class RecordTables(SqlBase):
    """Runs, their artifact index and their derived values."""

    # called inside each put_record transaction (store/signatures.py signs records)
    on_record: Callable[[sa.Connection, RunRecord], None] | None = None

    @db
    def put_record(self, record: RunRecord, *, pid: int | None = None) -> None:
        """Insert or replace a run's record and its artifact index in one transaction."""
        row = record_row(record, pid)
        with self.write_tx(record.identity.id) as conn:
            conn.execute(t_runs.delete().where(t_runs.c.id == record.identity.id))
            conn.execute(t_runs.insert().values(**row))
            write_values(conn, record.identity.id, str(row["record"]))
            if record.identity.status != "running":  # the final record: previews current
                write_previews(conn, record.identity.id, self.paramstyle, only_if_due=False)
            conn.execute(t_artifacts.delete().where(t_artifacts.c.run_id == record.identity.id))
            if record.artifacts:
                conn.execute(t_artifacts.insert(), artifact_rows(record))
            if self.on_record is not None:
                self.on_record(conn, record)

    @db
    def get_record(self, run_id: str) -> RunRecord:
        """The verified record of one exact run id."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t_runs.c.record, t_runs.c.record_sha256).where(t_runs.c.id == run_id)
            ).one_or_none()
        if row is None:
            raise RunNotFound(run_id)
        return parse_record(run_id, row.record, row.record_sha256)

    @db
    def resolve(self, id_or_prefix: str) -> str:
        """Full id of an exact id or a unique prefix (>= 6 chars)."""
        validate_run_ref(id_or_prefix)
        with self.engine.connect() as conn:
            ids = (
                conn.execute(
                    sa.select(t_runs.c.id)
                    .where(t_runs.c.id.startswith(id_or_prefix, autoescape=True))
                    .limit(6)
                )
                .scalars()
                .all()
            )
        if not ids:
            raise RunNotFound(id_or_prefix)
        if len(ids) > 1 and id_or_prefix not in ids:
            raise AmbiguousRunId(id_or_prefix, list(ids))
        return id_or_prefix if id_or_prefix in ids else ids[0]

    @db
    def query_page(self, query: QuerySpec, page: int, size: int) -> PageIds:
        """One page of the runs ``query`` selects, filtered, sorted and cut in SQL."""
        from auditor.store.sqlquery import PageQuery

        sql = PageQuery(t_runs, t_values, t_certs, self.engine.dialect.name)
        with self.engine.connect() as conn:
            ids, total, matched, shown, params, metrics, reruns = sql.page(conn, query, page,
                                                                           size)
        return PageIds(ids, total, matched, shown, params, metrics, reruns)

    @db
    def run_versions(self) -> dict[str, str]:
        """id -> record sha256 of every run: tells a cache which runs changed."""
        with self.engine.connect() as conn:  # the driver's tuples: no row objects
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SELECT id, record_sha256 FROM runs")
                return dict(cursor.fetchall())
            finally:
                cursor.close()

    @db
    def list_runs(self, *, limit: int | None = None,
                  ids: Sequence[str] | None = None) -> list[RunSummary]:
        """Runs newest first (optionally only ``ids``), derived from each record whose text
        still hashes to its digest (never from the summary columns, which no digest
        covers); a run whose record does not is listed with status ``corrupt``."""
        if ids is not None:
            return [s for i in range(0, len(ids), 500)
                    for s in self._summaries(ids[i:i + 500])]
        return self._summaries(None, limit)

    def _summaries(self, ids: Sequence[str] | None, limit: int | None = None
                   ) -> list[RunSummary]:
        query = sa.select(
            t_runs.c.id, t_runs.c.started_at, t_runs.c.record, t_runs.c.record_sha256
        ).order_by(t_runs.c.id.desc())
        if ids is not None:
            query = query.where(t_runs.c.id.in_(list(ids)))
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_summary_of_record(r.id, r.started_at, r.record, r.record_sha256) for r in rows]

    @db
    def run_ids_reproducing(self, run_id: str) -> list[str]:
        """Reruns that point at ``run_id``, newest first."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(t_runs.c.id)
                    .where(t_runs.c.reproduces == run_id)
                    .order_by(t_runs.c.id.desc())
                ).scalars()
            )

    @db
    def mark_stale_runs(self) -> list[str]:
        """Runs left 'running' by a recorder process that no longer exists on this host."""
        host = socket.gethostname()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t_runs.c.id, t_runs.c.pid).where(
                    t_runs.c.status == "running", t_runs.c.host == host
                )
            ).all()
        dead = [r.id for r in rows if r.pid and not pid_alive(r.pid)]
        for run_id in dead:
            self._set_status(run_id, "crashed")
        return dead

    def _set_status(self, run_id: str, status: str) -> None:
        record = self.get_record(run_id)
        if record.identity.status != "running":
            return
        ident = record.identity.model_copy(update={"status": status})
        notes = dict(record.not_captured)
        notes.setdefault("end", "the recorder process died before the run ended")
        self.put_record(record.model_copy(update={"identity": ident, "not_captured": notes}))

    @db
    def runs_with_artifact(self, sha256: str) -> list[tuple[str, str]]:
        """(run id, artifact name) referencing an object."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t_artifacts.c.run_id, t_artifacts.c.name).where(
                    t_artifacts.c.sha256 == sha256
                )
            ).all()
        return [(r.run_id, r.name) for r in rows]

    @db_iter
    def all_records(self) -> Iterator[tuple[str, str, str]]:
        """(id, record JSON, stored digest) of every run, for fsck."""
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(t_runs.c.id, t_runs.c.record, t_runs.c.record_sha256)):
                yield r.id, r.record, r.record_sha256


def artifact_rows(record: RunRecord) -> list[dict[str, object]]:
    """The record's ``artifacts`` rows (its artifact index)."""
    return [{"run_id": record.identity.id, "name": a.name, "sha256": a.sha256, "size": a.size,
             "kind": a.kind} for a in record.artifacts]


def write_values(conn: Connection, run_id: str, record_text: str) -> None:
    """The run's ``run_values`` rows (store/values.py), replacing any it had."""
    from auditor.store.values import record_text_rows

    conn.execute(t_values.delete().where(t_values.c.run_id == run_id))
    rows = record_text_rows(record_text)
    if rows:
        conn.execute(t_values.insert(), rows)


def record_row(record: RunRecord, pid: int | None) -> dict[str, object]:
    """The ``runs`` row of a record (``pid``: the recorder's, to spot a crashed run)."""
    from auditor.core.schema import record_bytes, record_sha256

    ident = record.identity
    summary = {
        "final": {k: _json_float(v) for k, v in record.metrics.final.items()},
        "tags": list(ident.tags),
        "params": _scalar_params(record.params),
    }
    return {
        "id": ident.id,
        "name": ident.name,
        "status": ident.status,
        "started_at": ident.started_at.isoformat(),
        "commit": record.code.commit if record.code else None,
        "dirty": bool(record.code and record.code.dirty),
        "reproduces": ident.reproduces,
        "host": ident.host,
        "pid": pid,
        "summary": json.dumps(summary, allow_nan=False),
        "record": record_bytes(record).decode("utf-8"),
        "record_sha256": record_sha256(record),
    }
