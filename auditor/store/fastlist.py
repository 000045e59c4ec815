"""``audit list`` without SQLAlchemy, Alembic or pydantic: a local SQLite store through
the standard library's ``sqlite3``, a PostgreSQL store through ``psycopg`` (each the
driver ``SqlStore`` uses underneath).

Importing SQLAlchemy alone costs several times a bare ``python -c pass``; a plain listing
needs a few read queries. It answers only when nothing needs the full store: the schema
is at ``HEAD`` (else ``open_store`` upgrades or refuses it) and no run of this host is
left ``running`` by a dead recorder (else ``mark_stale_runs`` must write); on PostgreSQL
also only for a ``postgresql+psycopg://`` URL without ``host``/``port`` in its query
(the full store resolves those) and a store that remembers its artifact location, the
one named by ``--blobs`` if any (else the full store refuses it or must remember it).
In every other case it returns None and the caller opens the store as usual. Summaries
come from the digest-checked record text (``store/summaries.py``), as ``list_runs``
derives them. A listing reads no artifact, so the artifact location is not contacted.
Connection errors are the full store's: one ``StoreUnavailable`` line, password hidden.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from auditor.core.errors import StoreError, StoreUnavailable
from auditor.store.base import RunSummary
from auditor.store.location import is_local_blobs, local_blob_dir, not_a_database
from auditor.store.revision import HEAD
from auditor.store.signatures import PREFIX, _parse
from auditor.store.summaries import _summary_of_record, pid_alive


@dataclass(frozen=True)
class Listing:
    """The newest runs and which of them carry a signature of their current record."""

    runs: list[RunSummary]
    signed: set[str]


def list_local(db: Path, limit: int | None) -> Listing | None:
    """The newest ``limit`` runs (all with None) of the SQLite store ``db``, or None when
    the full store must be opened (see the module docstring)."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise (not_a_database(exc, f"sqlite:///{db}")
               or StoreUnavailable(f"cannot open store sqlite:///{db}: {exc}")) from None
    try:
        return _read(conn, limit)
    except sqlite3.Error as exc:
        raise (not_a_database(exc, f"sqlite:///{db}")
               or StoreUnavailable(f"store sqlite:///{db}: {exc}")) from None
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, limit: int | None) -> Listing | None:
    conn.execute("PRAGMA busy_timeout=30000")
    try:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError:
        return None  # no revision table: an old or empty store
    if revision != [(HEAD,)]:
        return None
    running = conn.execute("SELECT pid FROM runs WHERE status = 'running' AND host = ?",
                           (socket.gethostname(),)).fetchall()
    if any(pid and not pid_alive(pid) for (pid,) in running):
        return None
    with conn:  # one read snapshot for the rows and their signatures
        rows = conn.execute(
            "SELECT id, started_at, record, record_sha256 FROM runs ORDER BY id DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        meta = conn.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                            (len(PREFIX), PREFIX)).fetchall()
    return _listing(rows, meta)


def _listing(rows: list[Any], meta: list[Any]) -> Listing:
    """The summaries of ``rows`` (id, started_at, record, record_sha256) and which of them
    carry a signature (``meta`` rows under ``PREFIX``) for their exact record."""
    sigs = {}
    for key, value in meta:
        sig = _parse(key, value)
        if sig is not None:
            sigs[sig.run_id] = sig.record_sha256
    runs = [_summary_of_record(*row) for row in rows]
    signed = {run_id for run_id, _started, _text, sha in rows if sigs.get(run_id) == sha}
    return Listing(runs, signed)



# -- PostgreSQL --------------------------------------------------------------------------
# SQLAlchemy's own URL pattern (sqlalchemy.engine.url._parse_url), so a URL names the
# same server, role and database here as in the full store.
_URL = re.compile(
    r"""(?P<name>[\w+]+)://(?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?"""
    r"""(?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?"""
    r"""(?:/(?P<database>[^?]*))?(?:\?(?P<query>.*))?""")
PG_DRIVER = "postgresql+psycopg"


@dataclass(frozen=True)
class _Server:
    shown: str  # as ``shown_url`` renders it: password as ***
    params: dict[str, Any]  # psycopg.connect keywords, as SQLAlchemy's dialect builds them
    password: str | None


def _server(url: str) -> _Server | None:
    """What the full store would connect to, or None where only it can tell."""
    m = _URL.fullmatch(url)
    if m is None or m["name"] != PG_DRIVER:
        return None
    query: dict[str, str] = {}
    for key, value in parse_qsl(m["query"] or ""):
        if key in query or key in ("host", "port"):  # lists and multi-host: the full store
            return None
        query[key] = value
    user, password, database = (None if m[k] is None else unquote(m[k])
                                for k in ("username", "password", "database"))
    host = m["ipv4host"] or m["ipv6host"]
    if m["port"] and not m["port"].isdigit():
        return None  # the full store says the URL is malformed
    port = int(m["port"]) if m["port"] else None
    shown = PG_DRIVER + "://"
    if user is not None:
        shown += quote(user, safe=" +") + (":***" if password is not None else "") + "@"
    if host is not None:
        shown += f"[{host}]" if ":" in host else host
    shown += f":{port}" if port is not None else ""
    shown += "/" + quote(database, safe=" +/") if database is not None else ""
    if query:
        shown += "?" + "&".join(f"{quote_plus(k)}={quote_plus(query[k])}" for k in sorted(query))
    params: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port), ("user", user),
                              ("password", password), ("dbname", database)) if v}
    return _Server(shown, {**params, **query, "connect_timeout": 10}, password)


def _first_line(exc: BaseException, password: str | None) -> str:
    """The driver's first line, as ``sql._reason`` gives it (password as ***)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line.replace(password, "***") if password else line


def _canonical_blobs(blobs: str) -> str | None:
    """The artifact URL the full store would compare with the remembered one."""
    try:
        if is_local_blobs(blobs):
            return f"file://{local_blob_dir(blobs)}"
        from auditor.store.remote import split_blob_url

        scheme, base = split_blob_url(blobs)
    except StoreError:
        return None  # the full store says what is wrong with it
    return f"{scheme}://{base}"


def list_server(url: str, blobs: str | None, limit: int | None) -> Listing | None:
    """The newest ``limit`` runs (all with None) of the PostgreSQL store at ``url`` with
    artifacts named ``blobs`` (None: the remembered ones), or None when the full store
    must be opened (see the module docstring)."""
    server = _server(url)
    if server is None:
        return None
    try:
        import psycopg
    except ImportError:
        return None  # the full store names the missing driver
    try:
        conn = psycopg.connect(**server.params)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot open store {server.shown}: {_first_line(exc, server.password)}") from None
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot
        return _read_pg(conn, blobs, limit)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None  # an empty database: the full store creates or refuses it
    except psycopg.Error as exc:
        raise StoreUnavailable(f"store {server.shown}: {_first_line(exc, server.password)}"
                               ) from None
    finally:
        conn.close()


def _read_pg(conn: Any, blobs: str | None, limit: int | None) -> Listing | None:
    if conn.execute("SELECT version_num FROM alembic_version").fetchall() != [(HEAD,)]:
        return None
    known = conn.execute("SELECT value FROM meta WHERE key = 'blobs_url'").fetchall()
    if not known or (blobs is not None and _canonical_blobs(blobs) != known[0][0]):
        return None
    running = conn.execute("SELECT pid FROM runs WHERE status = 'running' AND host = %s",
                           (socket.gethostname(),)).fetchall()
    if any(pid and not pid_alive(pid) for (pid,) in running):
        return None
    rows = conn.execute(
        "SELECT id, started_at, record, record_sha256 FROM runs ORDER BY id DESC"
        + (" LIMIT %s" if limit is not None else ""),
        (limit,) if limit is not None else (),
    ).fetchall()
    meta = conn.execute("SELECT key, value FROM meta WHERE substr(key, 1, %s) = %s",
                        (len(PREFIX), PREFIX)).fetchall()
    return _listing(rows, meta)
