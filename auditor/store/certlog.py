"""The certificate log of a server store, kept in its database (``cert_log`` and
``cert_log_head``, schema revision 0003).

``certify/log.py`` owns the log's format and every check (hash chain, head, signed head);
this module only stores its three parts, with the semantics of its files: the log as
newline-terminated lines in order, and the head and signed head by file name. Appends are
serialised across machines by a PostgreSQL advisory transaction lock (readers take it
shared), so two verifiers on two machines never extend the chain from the same tail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from auditor.core.errors import StoreError

LOG_NAME = "certs.jsonl"  # certify/log.py's names: the same parts as the file log
# pg_advisory_xact_lock key: "auditor certlog" folded into a signed 64-bit integer
PG_LOCK_KEY = int.from_bytes(b"audcertl", "big") & 0x7FFF_FFFF_FFFF_FFFF


_meta = sa.MetaData()  # the tables as revision 0003 makes them (queries only)
t_cert_log = sa.Table(
    "cert_log",
    _meta,
    sa.Column("pos", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("line", sa.LargeBinary, nullable=False),
)
t_cert_log_head = sa.Table(
    "cert_log_head",
    _meta,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
CERT_LOG_TABLES = (t_cert_log, t_cert_log_head)


class TableLog:
    """The certificate log's parts in a server store's database."""

    def __init__(self, engine: Engine, shown_url: str,
                 unavailable: Callable[[sa.exc.SQLAlchemyError], StoreError]) -> None:
        self._engine = engine
        self._url = shown_url  # password hidden
        self._unavailable = unavailable
        self._conn: Connection | None = None

    def label(self, name: str) -> str:
        """How messages name a part: the store and the file the part stands for."""
        return f"{self._url} certificate log ({name})"

    @contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """One transaction holding the log lock; every read and write inside uses it."""
        try:
            with self._engine.begin() as conn:
                lock = sa.func.pg_advisory_xact_lock if exclusive else (
                    sa.func.pg_advisory_xact_lock_shared)
                conn.execute(sa.select(lock(PG_LOCK_KEY)))
                self._conn = conn
                try:
                    yield
                finally:
                    self._conn = None
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def read(self, name: str) -> bytes:
        """The part's bytes; ``b""`` when it does not exist."""
        with self._connection() as conn:
            if name == LOG_NAME:
                lines = conn.execute(sa.select(t_cert_log.c.line).order_by(t_cert_log.c.pos))
                return b"".join(bytes(line) + b"\n" for (line,) in lines)
            found = conn.execute(sa.select(t_cert_log_head.c.data).where(
                t_cert_log_head.c.name == name)).scalar_one_or_none()
            return b"" if found is None else bytes(found)

    def exists(self, name: str) -> bool:
        """Whether the part holds anything (an empty log is the same as none)."""
        with self._connection() as conn:
            table, column = ((t_cert_log, t_cert_log.c.pos) if name == LOG_NAME
                             else (t_cert_log_head, t_cert_log_head.c.name))
            query = sa.select(column).limit(1)
            if name != LOG_NAME:
                query = query.where(t_cert_log_head.c.name == name)
            return conn.execute(query.select_from(table)).first() is not None

    def append_line(self, line: bytes) -> int:
        """Add one line at the end (inside ``locked``); return the log's size in bytes."""
        with self._connection() as conn:
            last = conn.execute(sa.select(sa.func.max(t_cert_log.c.pos))).scalar_one_or_none()
            conn.execute(t_cert_log.insert().values(pos=int(last or 0) + 1, line=line))
            size = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(
                sa.func.length(t_cert_log.c.line) + 1), 0))).scalar_one()
        return int(size)  # the log's bytes, newlines included, counted in the database

    def write(self, name: str, data: bytes | None) -> None:
        """Replace a head part (``None`` removes it), inside ``locked``."""
        with self._connection() as conn:
            conn.execute(t_cert_log_head.delete().where(t_cert_log_head.c.name == name))
            if data is not None:
                conn.execute(t_cert_log_head.insert().values(name=name, data=data))
