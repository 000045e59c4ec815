"""Store schema migrations (Alembic): fresh, old and newer stores; one migration at a time."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from auditor.store import SqlStore, open_store
from auditor.store import migrate as migrate_mod
from auditor.store.sql import meta


def test_head_constant_is_the_newest_script() -> None:
    assert migrate_mod.head() == migrate_mod.HEAD


def test_migrations_build_exactly_the_tables_the_code_uses(any_store: SqlStore) -> None:
    # A column added to store/sql.py without a migration (or the reverse) fails here.
    with any_store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), meta)
    assert diff == []


def test_upgrade_command_reports_the_current_revision(
    store_location: tuple[str, str | None],
) -> None:
    open_store(store_location[0], blobs=store_location[1]).close()
    again = open_store(store_location[0], blobs=store_location[1])
    assert not again.upgrade.migrated and again.upgrade.after == migrate_mod.HEAD
    again.close()


@pytest.mark.parametrize("table", ["runs", "metrics", "artifacts", "certificates", "imports"])
def test_fresh_store_has_every_table(any_store: SqlStore, table: str) -> None:
    assert table in sa.inspect(any_store.engine).get_table_names()
