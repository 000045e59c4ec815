"""``RunStore`` over SQLAlchemy 2 Core: SQLite by default, PostgreSQL by URL.

SQLite runs in WAL mode with a 30 s busy timeout, and every write transaction starts
with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing with "database
is locked" at commit time. The schema is created (or refused when old) inside one such
transaction, so several processes opening a fresh store at once create it exactly once.
Rows never leave this module: callers get schema models and the dataclasses of
``store/base.py``. Neither do SQLAlchemy's exceptions: every public method turns them
into ``StoreUnavailable`` (exit 3) naming the store (password hidden) and the driver's
first line. The DB files are touched only through the driver.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from auditor.core.errors import (
    AmbiguousRunId,
    CorruptRecord,
    RunNotFound,
    StoreError,
    StoreUnavailable,
)
from auditor.store.base import (
    CertificateRow,
    MetricPoint,
    PageIds,
    QuerySpec,
    RunSummary,
    bits_to_float,
)
from auditor.store.base import (
    float_to_bits as float_to_bits,  # kept importable from here (sync, tests)
)
from auditor.store.batches import BATCH_TABLES, BatchTables
from auditor.store.blobs import BlobStore
from auditor.store.certlog import CERT_LOG_TABLES, TableLog
from auditor.store.location import not_a_database
from auditor.store.migrate import ensure_schema
from auditor.store.summaries import (
    _json_float,
    _scalar_params,
    _summary_of_record,
)
from auditor.store.summaries import (
    pid_alive as _pid_alive,
)

if TYPE_CHECKING:  # pydantic's schema loads when a record is read or written
    import numpy as np

    from auditor.core.schema import RunRecord

STORE_SCHEMA_VERSION = 3
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
meta = sa.MetaData()

t_meta = sa.Table(
    "meta",
    meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
t_runs = sa.Table(
    "runs",
    meta,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("commit", sa.String(64)),
    sa.Column("dirty", sa.Boolean, nullable=False, default=False),
    sa.Column("reproduces", sa.String(26)),
    sa.Column("host", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("summary", sa.Text, nullable=False),  # small JSON: final metrics, tags
    sa.Column("record", sa.Text, nullable=False),  # canonical JSON of RunRecord
    sa.Column("record_sha256", sa.String(64), nullable=False),
    sa.Column("origin", sa.Text),  # "mlflow:<run id>" for an import; NULL when recorded here
)
sa.Index("ix_runs_started", t_runs.c.started_at)
t_metrics = sa.Table(
    "metrics",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float),  # NULL for NaN (SQL has none); for queries only
    sa.Column("bits", sa.BigInteger, nullable=False),  # IEEE-754 bits: the exact value
    sa.Column("time", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("run_id", "seq"),
)
sa.Index("ix_metrics_key", t_metrics.c.run_id, t_metrics.c.key, t_metrics.c.step)
t_artifacts = sa.Table(
    "artifacts",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.PrimaryKeyConstraint("run_id", "name"),
)
sa.Index("ix_artifacts_sha", t_artifacts.c.sha256)
t_certs = sa.Table(
    "certificates",
    meta,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("rerun_id", sa.String(26)),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("issued_at", sa.String(40), nullable=False),
    sa.Column("subjects", sa.Text, nullable=False),  # JSON list of sha256
)
sa.Index("ix_certs_run", t_certs.c.run_id)
t_builds = sa.Table(
    "builds",
    meta,
    sa.Column("inputs_digest", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # BuildResult JSON (log in a blob)
    sa.Column("created_at", sa.String(40), nullable=False),
)
t_imports = sa.Table(
    "imports",
    meta,
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("source_run_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("imported_at", sa.String(40), nullable=False),
    sa.PrimaryKeyConstraint("source", "source_run_id"),
)

for _table in CERT_LOG_TABLES:  # the certificate log's tables (store/certlog.py), revision 0003
    _table.to_metadata(meta)
for _table in BATCH_TABLES:  # batches, their items and claims (store/batches.py), revision 0005
    _table.to_metadata(meta)
t_values = sa.Table(  # store/values.py: what the runs table filters and sorts on, in SQL
    "run_values",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("kind", sa.String(1), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("num", sa.Float),
    sa.Column("text", sa.Text),
    sa.Column("folded", sa.Text),
    sa.Column("stext", sa.Text),
    sa.PrimaryKeyConstraint("run_id", "kind", "key"),
)
sa.Index("ix_values_num", t_values.c.kind, t_values.c.key, t_values.c.num)
sa.Index("ix_values_text", t_values.c.kind, t_values.c.key, t_values.c.text)
t_previews = sa.Table(  # store/preview.py: derived, display-only
    "metric_previews",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("upto_seq", sa.Integer, nullable=False),  # the run's mark it was made at
    sa.Column("total", sa.Integer, nullable=False),  # points of the key up to upto_seq
    sa.Column("steps", sa.LargeBinary, nullable=False),  # <i8
    sa.Column("vals", sa.LargeBinary, nullable=False),  # <f8
    sa.PrimaryKeyConstraint("run_id", "key"),
)

_INSERT_METRICS = ("INSERT INTO metrics (run_id, seq, key, step, value, bits, time) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)")


def shown_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and records)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        scheme, sep, _rest = url.partition("://")
        return f"{scheme}{sep}…" if sep else "…"


def _reason(exc: sa.exc.SQLAlchemyError, *passwords: str | None) -> str:
    """The driver's first line (any of ``passwords`` in it replaced by ``***``)."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(cause).strip().splitlines()
    line = text[0] if text else type(cause).__name__
    for password in passwords:
        line = line.replace(password, "***") if password else line
    return line


def _db(method: Callable[Concatenate[SqlStore, P], R]) -> Callable[Concatenate[SqlStore, P], R]:
    """SQLAlchemy errors of a store method become ``StoreUnavailable``."""

    @functools.wraps(method)
    def call(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            raise self.unavailable(exc) from None

    return call


def _db_iter(
    method: Callable[Concatenate[SqlStore, P], Iterator[T]],
) -> Callable[Concatenate[SqlStore, P], Iterator[T]]:
    """``_db`` for a generator method (errors surface while it is iterated)."""

    @functools.wraps(method)
    def call(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        try:
            yield from method(self, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            raise self.unavailable(exc) from None

    return call


def _server_engine(url: str) -> Engine:
    return sa.create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 10}, pool_size=2
    )


@contextmanager
def _locked_begin(engine: Engine, run_id: str | None) -> Iterator[Connection]:
    with engine.begin() as conn:
        if run_id is not None:
            key = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big", signed=True)
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        yield conn


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(
        url, connect_args={"timeout": 30, "isolation_level": None}, poolclass=sa.pool.NullPool
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqlStore:
    """A run store in one SQL database plus a blob directory."""

    def __init__(self, url: str, blobs: BlobStore) -> None:
        self._url = url  # may hold a password: never shown, logged or stored
        self.url = shown_url(url)
        self.blobs = blobs
        self.is_sqlite = url.startswith("sqlite")
        # called inside each put_record transaction (store/signatures.py signs records)
        self.on_record: Callable[[sa.Connection, RunRecord], None] | None = None
        try:
            parsed = sa.engine.make_url(url)
            _ = parsed.port  # a malformed port raises here, not later
        except (sa.exc.ArgumentError, ValueError):
            raise StoreError(
                f"not a store URL: {self.url}",
                hint="use a directory, sqlite:////abs/path.db or postgresql+psycopg://host/db",
            ) from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StoreError(
                f"unsupported store URL {parsed.get_backend_name()}://…: auditor stores runs in "
                "SQLite or PostgreSQL",
                hint="use a directory, sqlite:////abs/path.db or postgresql+psycopg://host/db",
            )
        try:
            self.engine = _sqlite_engine(url) if self.is_sqlite else _server_engine(url)
            try:
                self.upgrade = ensure_schema(self.engine, self.url)
            except BaseException:
                self.engine.dispose()
                raise
        except sa.exc.ArgumentError:
            raise StoreError(
                f"not a store URL: {self.url}",
                hint="use a directory, sqlite:////abs/path.db or postgresql+psycopg://host/db",
            ) from None
        except sa.exc.SQLAlchemyError as exc:
            notadb = not_a_database(getattr(exc, "orig", exc), str(self.url))
            if notadb is not None:
                raise notadb from None
            raise StoreUnavailable(
                f"cannot open store {self.url}: {_reason(exc, parsed.password)}"
            ) from None
        except ImportError as exc:
            raise StoreError(
                f"no database driver for {self.url}: {exc.name} is not installed",
                hint="pip install 'auditor[postgres]'",
            ) from None

    def password(self) -> str | None:
        """The URL's password, only to hide it from messages."""
        found = sa.engine.make_url(self._url).password
        return None if found is None else str(found)

    def unavailable(self, exc: sa.exc.SQLAlchemyError) -> StoreUnavailable:
        """The one-line error for a database failure during an operation."""
        return StoreUnavailable(f"store {self.url}: {_reason(exc, self.password())}")

    def _write(self, run_id: str) -> AbstractContextManager[Connection]:
        """A write transaction; on PostgreSQL it also serialises writers of one run."""
        return _locked_begin(self.engine, None if self.is_sqlite else run_id)

    @_db
    def get_meta(self, key: str) -> str | None:
        """A value of the store's ``meta`` table."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t_meta.c.value).where(t_meta.c.key == key)
            ).scalar_one_or_none()

    @_db
    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """(key, value) of the ``meta`` rows whose key starts with ``prefix``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t_meta.c.key, t_meta.c.value).where(
                t_meta.c.key.startswith(prefix, autoescape=True))).all()
        return [(str(k), str(v)) for k, v in rows]

    @_db
    def remember_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set already; returns the value it has now."""
        with self._write(f"meta:{key}") as conn:
            found = conn.execute(
                sa.select(t_meta.c.value).where(t_meta.c.key == key)
            ).scalar_one_or_none()
            if found is None:
                conn.execute(t_meta.insert().values(key=key, value=value))
        return value if found is None else str(found)

    # -- runs ---------------------------------------------------------------------------
    @_db
    def put_record(self, record: RunRecord, *, pid: int | None = None) -> None:
        """Insert or replace a run's record and its artifact index in one transaction."""
        row = _record_row(record, pid)
        with self._write(record.identity.id) as conn:
            conn.execute(t_runs.delete().where(t_runs.c.id == record.identity.id))
            conn.execute(t_runs.insert().values(**row))
            write_values(conn, record.identity.id, str(row["record"]))
            if record.identity.status != "running":  # the final record: previews current
                write_previews(conn, record.identity.id, self.paramstyle, only_if_due=False)
            conn.execute(t_artifacts.delete().where(t_artifacts.c.run_id == record.identity.id))
            if record.artifacts:
                conn.execute(
                    t_artifacts.insert(),
                    [
                        {
                            "run_id": record.identity.id,
                            "name": a.name,
                            "sha256": a.sha256,
                            "size": a.size,
                            "kind": a.kind,
                        }
                        for a in record.artifacts
                    ],
                )
            if self.on_record is not None:
                self.on_record(conn, record)

    @_db
    def get_record(self, run_id: str) -> RunRecord:
        """The verified record of one exact run id."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t_runs.c.record, t_runs.c.record_sha256).where(t_runs.c.id == run_id)
            ).one_or_none()
        if row is None:
            raise RunNotFound(run_id)
        return _parse_record(run_id, row.record, row.record_sha256)

    @_db
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

    @_db
    def query_page(self, query: QuerySpec, page: int, size: int) -> PageIds:
        """One page of the runs ``query`` selects, filtered, sorted and cut in SQL."""
        from auditor.store.sqlquery import PageQuery

        sql = PageQuery(t_runs, t_values, t_certs, self.engine.dialect.name)
        with self.engine.connect() as conn:
            ids, total, matched, shown, params, metrics, reruns = sql.page(conn, query, page,
                                                                           size)
        return PageIds(ids, total, matched, shown, params, metrics, reruns)

    @_db
    def run_versions(self) -> dict[str, str]:
        """id -> record sha256 of every run: tells a cache which runs changed."""
        with self.engine.connect() as conn:  # the driver's tuples: no row objects
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SELECT id, record_sha256 FROM runs")
                return dict(cursor.fetchall())
            finally:
                cursor.close()

    @_db
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

    @_db
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

    @_db
    def mark_stale_runs(self) -> list[str]:
        """Runs left 'running' by a recorder process that no longer exists on this host."""
        host = socket.gethostname()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t_runs.c.id, t_runs.c.pid).where(
                    t_runs.c.status == "running", t_runs.c.host == host
                )
            ).all()
        dead = [r.id for r in rows if r.pid and not _pid_alive(r.pid)]
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

    # -- metrics ------------------------------------------------------------------------
    @_db
    def add_metrics(self, run_id: str,
                    points: Iterable[MetricPoint | tuple[str, int, float, float]]) -> int:
        """Append points in one transaction, preserving exact float bits."""
        batch = list(points)
        if not batch:
            return 0
        values = array("d", [p[2] for p in batch])
        bits = array("q")
        bits.frombytes(values.tobytes())  # IEEE bits of every value at once
        with self._write(run_id) as conn:
            start = conn.execute(sa.select(sa.func.coalesce(sa.func.max(t_metrics.c.seq), -1))
                                 .where(t_metrics.c.run_id == run_id)).scalar_one() + 1
            rows = [(run_id, start + i, p[0], p[1], None if p[2] != p[2] else p[2], b, p[3])
                    for i, (p, b) in enumerate(zip(batch, bits, strict=True))]
            if self.is_sqlite:
                conn.exec_driver_sql(_INSERT_METRICS, rows)
            else:
                cols = ("run_id", "seq", "key", "step", "value", "bits", "time")
                conn.execute(t_metrics.insert(), [dict(zip(cols, r, strict=True)) for r in rows])
            write_previews(conn, run_id, self.paramstyle, only_if_due=True)
        return len(batch)

    @property
    def paramstyle(self) -> str:
        """The driver's placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @_db
    def metric_previews(self, run_id: str
                        ) -> dict[str, tuple[np.ndarray, np.ndarray, int]] | None:
        """key -> (steps, values, total) of every series of the run as its stored preview
        plus the points logged after it (store/preview.py): the dashboard's cheap read.
        None when the run has no usable preview (none stored, or one claiming more points
        than the run has): the caller reads the full series."""
        import numpy as np

        from auditor.store.preview import decode

        mark = self.paramstyle
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(f"SELECT key, upto_seq, total, steps, vals FROM metric_previews "
                               f"WHERE run_id = {mark}", (run_id,))
                stored = cursor.fetchall()
                cursor.execute(f"SELECT MAX(seq) FROM metrics WHERE run_id = {mark}",
                               (run_id,))
                found = cursor.fetchone()
                top = found[0] if found else None
                if not stored or top is None:
                    return None
                upto = {int(r[1]) for r in stored}
                if len(upto) != 1 or next(iter(upto)) > int(top):
                    return None  # not made at one mark, or ahead of the series: not used
                since = next(iter(upto))
                cursor.execute(f"SELECT key, step, bits FROM metrics WHERE run_id = {mark} "
                               f"AND seq > {mark} ORDER BY seq", (run_id, since))
                tail = cursor.fetchall()
            finally:
                cursor.close()
        out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        for key, _upto, total, steps, vals in stored:
            arrays = decode(bytes(steps), bytes(vals))
            if arrays is None:
                return None
            out[str(key)] = (*arrays, int(total))
        if tail:
            grouped: dict[str, list[tuple[int, int]]] = {}
            for key, step, bits in tail:
                grouped.setdefault(str(key), []).append((int(step), int(bits)))
            for key, pairs in grouped.items():
                flat = np.array(pairs, dtype=np.int64)
                steps_, vals_ = flat[:, 0].copy(), flat[:, 1].copy().view(np.float64)
                old = out.get(key)
                if old is None:
                    out[key] = (steps_, vals_, len(pairs))
                else:
                    out[key] = (np.concatenate([old[0], steps_]),
                                np.concatenate([old[1], vals_]), old[2] + len(pairs))
        return out

    @_db
    def refresh_previews(self, run_id: str) -> None:
        """Recompute the run's curve previews from its series now."""
        with self._write(run_id) as conn:
            write_previews(conn, run_id, self.paramstyle, only_if_due=False, force=True)

    @_db
    def preview_problems(self, run_id: str, *, repair: bool = False) -> list[str]:
        """Previews of the run that differ from what its series gives (``repair``:
        rebuilt); a preview made before later points is not a problem."""
        from auditor.store.preview import decode

        with self.engine.connect() as conn:
            stored = conn.execute(sa.select(t_previews).where(t_previews.c.run_id == run_id)
                                  ).all()
            upto = max((int(r.upto_seq) for r in stored), default=-1)
            want = _previews_of(conn, run_id, self.paramstyle, upto) if stored else {}
        if not stored:
            if repair:  # a run stored before previews existed gets its previews
                self.refresh_previews(run_id)
            return []
        problems = []
        keys = {str(r.key) for r in stored}
        if set(want) - keys:
            problems.append(f"run {run_id}: curve previews lack "
                            + ", ".join(sorted(set(want) - keys)))
        for r in stored:
            arrays = decode(bytes(r.steps), bytes(r.vals))
            expected = want.get(str(r.key))
            if (arrays is None or expected is None or int(r.upto_seq) != upto
                    or int(r.total) != expected[2] or arrays[0].tobytes() != expected[0]
                    or arrays[1].tobytes() != expected[1]):
                problems.append(f"run {run_id}: curve preview of {str(r.key)!r} differs from "
                                "its series (derived data: `audit fsck --repair` rebuilds it)")
        if problems and repair:
            self.refresh_previews(run_id)
        return problems

    @_db_iter
    def iter_metrics(self, run_id: str, key: str | None = None) -> Iterator[MetricPoint]:
        """Points in logging order."""
        query = (
            sa.select(t_metrics.c.key, t_metrics.c.step, t_metrics.c.bits, t_metrics.c.time)
            .where(t_metrics.c.run_id == run_id)
            .order_by(t_metrics.c.seq)
        )
        if key is not None:
            query = query.where(t_metrics.c.key == key)
        with self.engine.connect() as conn:
            for r in conn.execute(query.execution_options(yield_per=10_000)):
                yield MetricPoint(r.key, int(r.step), bits_to_float(int(r.bits)), float(r.time))

    @_db
    def metric_arrays(self, run_id: str, key: str | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (steps, values) as numpy arrays in logging order: the bulk read behind
        the dashboard's curves (exact values from the stored bits). One query per key,
        read through the driver's own cursor straight into numpy (no row objects: a
        100,000-point series is 100,000 driver tuples, not 100,000 SQLAlchemy rows)."""
        import itertools

        import numpy as np  # only here: `audit list` does not pay for numpy

        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                if key is None:
                    cursor.execute(f"SELECT DISTINCT key FROM metrics WHERE run_id = {mark}",
                                   (run_id,))
                    keys = sorted(str(r[0]) for r in cursor.fetchall())
                else:
                    keys = [key]
                for k in keys:
                    cursor.execute(f"SELECT step, bits FROM metrics WHERE run_id = {mark} "
                                   f"AND key = {mark} ORDER BY seq", (run_id, k))
                    flat = np.fromiter(itertools.chain.from_iterable(cursor),  # type: ignore[arg-type]
                                       dtype=np.int64)
                    if len(flat):
                        pairs = flat.reshape(-1, 2)
                        out[k] = (pairs[:, 0].copy(), pairs[:, 1].copy().view(np.float64))
            finally:
                cursor.close()
        return out

    @_db
    def metrics_mark(self, run_id: str) -> int:
        """How many metric points the run has had appended (points are append-only, so
        an unchanged mark means unchanged series): a primary-key lookup, for caches."""
        with self.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(t_metrics.c.seq))
                               .where(t_metrics.c.run_id == run_id)).scalar_one()
        return -1 if top is None else int(top)

    # -- artifacts and certificates -----------------------------------------------------
    @_db
    def runs_with_artifact(self, sha256: str) -> list[tuple[str, str]]:
        """(run id, artifact name) referencing an object."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t_artifacts.c.run_id, t_artifacts.c.name).where(
                    t_artifacts.c.sha256 == sha256
                )
            ).all()
        return [(r.run_id, r.name) for r in rows]

    @_db
    def put_certificate(self, row: CertificateRow) -> None:
        """Index a certificate whose envelope is already in the blob store."""
        with self.engine.begin() as conn:
            conn.execute(t_certs.delete().where(t_certs.c.sha256 == row.sha256))
            conn.execute(
                t_certs.insert().values(
                    sha256=row.sha256,
                    run_id=row.run_id,
                    rerun_id=row.rerun_id,
                    verdict=row.verdict,
                    issued_at=row.issued_at.isoformat(),
                    subjects=json.dumps(list(row.subjects)),
                )
            )

    @_db
    def certificates(
        self, *, run_id: str | None = None, subject: str | None = None
    ) -> list[CertificateRow]:
        """Certificates, newest first, optionally for a run or a subject digest."""
        query = sa.select(t_certs).order_by(t_certs.c.issued_at.desc())
        if run_id:
            query = query.where(t_certs.c.run_id == run_id)
        if subject:
            query = query.where(t_certs.c.subjects.contains(subject, autoescape=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            CertificateRow(
                r.sha256,
                r.run_id,
                r.rerun_id,
                r.verdict,
                datetime.fromisoformat(r.issued_at),
                tuple(json.loads(r.subjects)),
            )
            for r in rows
        ]

    def certificate_log(self) -> TableLog | None:
        """The certificate log kept in this database (a server store: every machine using
        the store shares it); None for SQLite, whose log is files in the store folder."""
        if self.is_sqlite:
            return None
        return TableLog(self.engine, self.url, self.unavailable)

    def batches(self) -> BatchTables:
        """Batches of verifications and their claims in this database (revision 0005)."""
        return BatchTables(self.engine, self.unavailable)

    @_db
    def put_build(self, inputs_digest: str, run_id: str, result_json: str) -> None:
        """Remember a build result by its inputs digest."""
        with self.engine.begin() as conn:
            conn.execute(t_builds.delete().where(t_builds.c.inputs_digest == inputs_digest))
            conn.execute(
                t_builds.insert().values(
                    inputs_digest=inputs_digest,
                    run_id=run_id,
                    result=result_json,
                    created_at=datetime.now().astimezone().isoformat(),
                )
            )

    @_db
    def get_build(self, inputs_digest: str) -> str | None:
        """A remembered build result (JSON) or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t_builds.c.result).where(t_builds.c.inputs_digest == inputs_digest)
            ).scalar_one_or_none()

    @_db
    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` ("ok" when sound)."""
        if not self.is_sqlite:
            return "ok"
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar_one())

    @_db_iter
    def all_records(self) -> Iterator[tuple[str, str, str]]:
        """(id, record JSON, stored digest) of every run, for fsck."""
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(t_runs.c.id, t_runs.c.record, t_runs.c.record_sha256)):
                yield r.id, r.record, r.record_sha256

    @_db
    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()


def write_values(conn: Connection, run_id: str, record_text: str) -> None:
    """The run's ``run_values`` rows (store/values.py), replacing any it had."""
    from auditor.store.values import record_text_rows

    conn.execute(t_values.delete().where(t_values.c.run_id == run_id))
    rows = record_text_rows(record_text)
    if rows:
        conn.execute(t_values.insert(), rows)


def _previews_of(conn: Connection, run_id: str, mark: str, upto: int
                 ) -> dict[str, tuple[bytes, bytes, int]]:
    """key -> (steps bytes, values bytes, total) of the run's series up to seq ``upto``."""
    import itertools

    from auditor.store.preview import PREVIEW_POINTS, encode, lttb, small_preview

    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"SELECT key, step, bits FROM metrics WHERE run_id = {mark} "
                       f"AND seq <= {mark} ORDER BY key, seq", (run_id, upto))
        out: dict[str, tuple[bytes, bytes, int]] = {}
        for key, group in itertools.groupby(cursor.fetchall(), key=lambda r: r[0]):
            rows = [(int(r[1]), int(r[2])) for r in group]
            if len(rows) <= PREVIEW_POINTS:  # the same bytes, without importing numpy
                out[str(key)] = (*small_preview(rows), len(rows))
                continue
            import numpy as np

            flat = np.fromiter(itertools.chain.from_iterable(rows),
                               dtype=np.int64).reshape(-1, 2)
            steps, values = flat[:, 0].copy(), flat[:, 1].copy().view(np.float64)
            total = len(steps)
            out[str(key)] = (*encode(*lttb(steps, values, PREVIEW_POINTS)), total)
        return out
    finally:
        cursor.close()


def write_previews(conn: Connection, run_id: str, mark: str, *, only_if_due: bool,
                   force: bool = False) -> None:
    """Recompute the run's curve previews at its current mark (store/preview.py) unless
    they are at it already (``force``: even then); with ``only_if_due`` only when enough
    points came since the last ones."""
    from auditor.store.preview import due

    top = conn.execute(sa.select(sa.func.max(t_metrics.c.seq))
                       .where(t_metrics.c.run_id == run_id)).scalar_one()
    if top is None:
        conn.execute(t_previews.delete().where(t_previews.c.run_id == run_id))
        return
    upto = conn.execute(sa.select(sa.func.max(t_previews.c.upto_seq))
                        .where(t_previews.c.run_id == run_id)).scalar_one()
    upto = -1 if upto is None else int(upto)
    if not force and (upto == int(top) or (only_if_due and not due(upto, int(top)))):
        return
    previews = _previews_of(conn, run_id, mark, int(top))
    conn.execute(t_previews.delete().where(t_previews.c.run_id == run_id))
    conn.execute(t_previews.insert(), [
        {"run_id": run_id, "key": key, "upto_seq": int(top), "total": total, "steps": steps,
         "vals": vals} for key, (steps, vals, total) in previews.items()])


def validate_run_ref(text: str) -> None:
    """Refuse anything that is not a run id or prefix of our alphabet (paths, NUL, …)."""
    from auditor.core.errors import InvalidRunId
    from auditor.core.schema import MIN_PREFIX, is_run_id_prefix

    if not is_run_id_prefix(text):
        shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
        raise InvalidRunId(
            f"invalid run id {shown}: expected {MIN_PREFIX}-26 characters "
            "of 0-9 and a-z (see `audit list`)"
        )


def _record_row(record: RunRecord, pid: int | None) -> dict[str, object]:
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


def _parse_record(run_id: str, text: str, stored_sha: str) -> RunRecord:
    from pydantic import ValidationError

    from auditor.core.schema import SCHEMA_VERSION, RunRecord, record_sha256

    where = f"runs/{run_id}/record.json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptRecord(f"{where}: invalid JSON at byte {exc.pos}") from None
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version")
        newer = isinstance(found, int) and not isinstance(found, bool) and found > SCHEMA_VERSION
        # `audit store upgrade` migrates the store's tables, never a record: no record
        # schema but 1 exists, so another version is a newer auditor's or a damaged record
        raise CorruptRecord(
            f"{where}: record schema_version {found!r} is not {SCHEMA_VERSION}",
            hint="a newer auditor wrote it: upgrade auditor to read it" if newer
            else "run `audit fsck`",
        )
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise CorruptRecord(f"{where}: field {loc!r}: {first['msg']}") from None
    if record_sha256(record) != stored_sha:
        raise CorruptRecord(
            f"{where}: record does not match its sha256 (edited after it was written)",
            hint="run `audit fsck`",
        )
    return record
