"""The one engine every family of the SQL store shares, and how its errors surface.

SQLite runs in WAL mode with a 30 s busy timeout, and every write transaction starts
with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing with "database
is locked" at commit time. The schema is created (or refused when old) inside one such
transaction, so several processes opening a fresh store at once create it exactly once.
SQLAlchemy's exceptions never leave a store method: ``db`` turns them into
``StoreUnavailable`` (exit 3) naming the store (password hidden) and the driver's first
line. The DB files are touched only through the driver.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from auditor.core.errors import StoreError, StoreUnavailable
from auditor.store.blobs import BlobStore
from auditor.store.location import not_a_database
from auditor.store.migrate import ensure_schema

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S", bound="SqlBase")
URL_HINT = "use a directory, sqlite:////abs/path.db or postgresql+psycopg://host/db"


def shown_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and records)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        scheme, sep, _rest = url.partition("://")
        return f"{scheme}{sep}…" if sep else "…"


def reason(exc: sa.exc.SQLAlchemyError, *passwords: str | None) -> str:
    """The driver's first line (any of ``passwords`` in it replaced by ``***``)."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    text = str(cause).strip().splitlines()
    line = text[0] if text else type(cause).__name__
    for password in passwords:
        line = line.replace(password, "***") if password else line
    return line


def db(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """SQLAlchemy errors of a store method become ``StoreUnavailable``."""

    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            raise self.unavailable(exc) from None

    return call


def db_iter(
    method: Callable[Concatenate[S, P], Iterator[T]],
) -> Callable[Concatenate[S, P], Iterator[T]]:
    """``db`` for a generator method (errors surface while it is iterated)."""

    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
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


class SqlBase:
    """One SQL database (its engine, migrated on open) plus a blob directory: what every
    table family of ``SqlStore`` works on."""

    def __init__(self, url: str, blobs: BlobStore) -> None:
        self._url = url  # may hold a password: never shown, logged or stored
        self.url = shown_url(url)
        self.blobs = blobs
        self.is_sqlite = url.startswith("sqlite")
        try:
            parsed = sa.engine.make_url(url)
            _ = parsed.port  # a malformed port raises here, not later
        except (sa.exc.ArgumentError, ValueError):
            raise StoreError(f"not a store URL: {self.url}", hint=URL_HINT) from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StoreError(
                f"unsupported store URL {parsed.get_backend_name()}://…: auditor stores runs in "
                "SQLite or PostgreSQL",
                hint=URL_HINT,
            )
        try:
            self.engine = _sqlite_engine(url) if self.is_sqlite else _server_engine(url)
            try:
                self.upgrade = ensure_schema(self.engine, self.url)
            except BaseException:
                self.engine.dispose()
                raise
        except sa.exc.ArgumentError:
            raise StoreError(f"not a store URL: {self.url}", hint=URL_HINT) from None
        except sa.exc.SQLAlchemyError as exc:
            notadb = not_a_database(getattr(exc, "orig", exc), str(self.url))
            if notadb is not None:
                raise notadb from None
            raise StoreUnavailable(
                f"cannot open store {self.url}: {reason(exc, parsed.password)}"
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

    def unavailable(self, exc: sa.exc.SQLAlchemyError) -> StoreError:
        """The one-line error for a database failure during an operation (a role's
        missing privilege named as such: store/roles.py)."""
        from auditor.store.denied import denial

        return denial(exc, self.url) or StoreUnavailable(
            f"store {self.url}: {reason(exc, self.password())}")

    def write_tx(self, run_id: str) -> AbstractContextManager[Connection]:
        """A write transaction; on PostgreSQL it also serialises writers of one run (or
        of any other key: ``meta:<key>``, ``import:<source>:<id>``)."""
        return _locked_begin(self.engine, None if self.is_sqlite else run_id)

    @property
    def paramstyle(self) -> str:
        """The driver's placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @db
    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()
