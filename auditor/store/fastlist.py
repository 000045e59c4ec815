"""``audit list`` over a local SQLite store without SQLAlchemy, Alembic or pydantic.

Importing SQLAlchemy alone costs several times a bare ``python -c pass``; a plain listing
needs three read queries, so it goes through the standard library's ``sqlite3`` (the
same driver ``SqlStore`` uses underneath). It answers only when nothing needs the full
store: the schema is at ``HEAD`` (else ``open_store`` upgrades or refuses it) and no run
of this host is left ``running`` by a dead recorder (else ``mark_stale_runs`` must write).
In every other case it returns None and the caller opens the store as usual. Summaries
come from the digest-checked record text (``store/summaries.py``), as ``list_runs``
derives them.
"""

from __future__ import annotations

import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from auditor.core.errors import StoreUnavailable
from auditor.store.base import RunSummary
from auditor.store.location import not_a_database
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
        sigs = {}
        for key, value in conn.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                                       (len(PREFIX), PREFIX)):
            sig = _parse(key, value)
            if sig is not None:
                sigs[sig.run_id] = sig.record_sha256
    runs = [_summary_of_record(*row) for row in rows]
    signed = {run_id for run_id, _started, _text, sha in rows if sigs.get(run_id) == sha}
    return Listing(runs, signed)

