"""Bring a store's schema to the revision this code needs, exactly once, under a lock.

Revisions are Alembic scripts in ``store/migrations/versions``. Opening a store checks its
revision without locking (the common case: already current). Otherwise it takes the
store's migration lock (a PostgreSQL advisory transaction lock; on SQLite the store's
``BEGIN IMMEDIATE`` write transaction, which excludes every other writer), looks again,
and migrates inside that one transaction, so several processes opening an empty or old
store at once migrate it exactly once and a failed migration leaves it as it was.

- An empty database gets every revision from the first.
- A store made before migrations existed (``meta.schema_version = 1``, no
  ``alembic_version`` table) is stamped at revision ``0001`` and upgraded.
- A store at a revision this code does not know (made by a newer auditor) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from auditor.core.errors import StoreError
from auditor.store.revision import BASELINE, HEAD

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
__all__ = ["BASELINE", "HEAD", "Upgrade", "ensure_schema", "head"]
# pg_advisory_xact_lock key: "auditor migrate" folded into a signed 64-bit integer.
PG_LOCK_KEY = 0x6175646974_6D6967 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Upgrade:
    """What ``ensure_schema`` found and did."""

    before: str | None  # revision found (None: empty store)
    after: str
    migrated: bool


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    """The newest revision of the migration scripts (loads Alembic)."""
    found = _scripts().get_current_head()
    assert found is not None
    return found


def _current_fast(engine: Engine) -> str | None:
    """The revision in ``alembic_version`` by plain SQL (no Alembic import), or None."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    except sa.exc.DBAPIError:
        return None  # no such table (yet); a dead server fails again on the slow path
    return str(rows[0][0]) if len(rows) == 1 else None


def _found(conn: Connection) -> str | None:
    """The store's revision; ``BASELINE`` for a pre-migrations store; None when empty."""
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None:
        return current
    tables = set(sa.inspect(conn).get_table_names())
    if "meta" not in tables:
        return None
    legacy = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'"))
    value = legacy.scalar_one_or_none()
    if value == "1":
        return f"legacy:{BASELINE}"
    raise StoreError(
        f"store has an unknown schema (meta.schema_version={value!r}) and no revision",
        hint="restore it from a backup, or point --store at another location",
    )


def _check_known(found: str | None, shown_url: str) -> None:
    from alembic.util.exc import CommandError

    if found is None or found.startswith("legacy:"):
        return
    try:
        _scripts().get_revision(found)
    except CommandError:
        raise StoreError(
            f"store {shown_url} has schema revision {found}, newer than this auditor "
            f"(which knows up to {HEAD})",
            hint="upgrade auditor to use this store",
        ) from None


def ensure_schema(engine: Engine, shown_url: str, *, lock_timeout_s: int = 120) -> Upgrade:
    """Migrate the store to ``head()`` unless it is there already; refuse a newer one."""
    fast = _current_fast(engine)
    if fast == HEAD:
        return Upgrade(HEAD, HEAD, False)
    _check_known(fast, shown_url)  # a newer store is refused without waiting for the lock
    from alembic import command

    target = head()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s)}s'"))
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_LOCK_KEY)))
        found = _found(conn)  # again, now that no one else can be migrating
        _check_known(found, shown_url)
        if found == target:
            return Upgrade(found, target, False)
        cfg = _config()
        cfg.attributes["connection"] = conn
        if found is not None and found.startswith("legacy:"):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, target)
    return Upgrade(found.removeprefix("legacy:") if found else None, target, True)
