"""The builds and meta family of the SQL store: the key/value ``meta`` table (record
signatures, a server store's artifact location), remembered builds (``builds``) and the
database's own consistency check.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from auditor.store.sql_base import SqlBase, db
from auditor.store.sql_schema import t_builds, t_meta


class MetaTables(SqlBase):
    """The key/value ``meta`` table and remembered builds."""

    @db
    def get_meta(self, key: str) -> str | None:
        """A value of the store's ``meta`` table."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t_meta.c.value).where(t_meta.c.key == key)
            ).scalar_one_or_none()

    @db
    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """(key, value) of the ``meta`` rows whose key starts with ``prefix``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t_meta.c.key, t_meta.c.value).where(
                t_meta.c.key.startswith(prefix, autoescape=True))).all()
        return [(str(k), str(v)) for k, v in rows]

    @db
    def remember_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set already; returns the value it has now."""
        with self.write_tx(f"meta:{key}") as conn:
            found = conn.execute(
                sa.select(t_meta.c.value).where(t_meta.c.key == key)
            ).scalar_one_or_none()
            if found is None:
                conn.execute(t_meta.insert().values(key=key, value=value))
        return value if found is None else str(found)

    @db
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

    @db
    def get_build(self, inputs_digest: str) -> str | None:
        """A remembered build result (JSON) or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t_builds.c.result).where(t_builds.c.inputs_digest == inputs_digest)
            ).scalar_one_or_none()

    @db
    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` ("ok" when sound)."""
        if not self.is_sqlite:
            return "ok"
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar_one())
