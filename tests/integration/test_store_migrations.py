"""Store schema migrations (Alembic): fresh, old and newer stores; one migration at a time."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from auditor.certify import log as certlog
from auditor.core.errors import StoreError
from auditor.core.schema import record_sha256
from auditor.release.fsck import check_store
from auditor.store import SqlStore, open_store
from auditor.store import migrate as migrate_mod
from auditor.store.sql import meta
from tests.conftest import audit


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


@pytest.mark.parametrize("table", ["runs", "metrics", "artifacts", "certificates", "imports",
                                   "batches", "batch_items", "verify_claims"])
def test_fresh_store_has_every_table(any_store: SqlStore, table: str) -> None:
    assert table in sa.inspect(any_store.engine).get_table_names()


# -- a real v1 store, made by auditor 0.1.0 (fixtures/stores/make_v1.py) -----------------
V1 = Path(__file__).resolve().parents[2] / "fixtures" / "stores" / "v1"
MANIFEST = json.loads((V1 / "manifest.json").read_text())


def _copy_v1(dest: Path) -> Path:
    shutil.copytree(V1, dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _legacy_pg(url: str, blobs: Path) -> tuple[str, str]:
    """The v1 fixture's rows in a PostgreSQL schema shaped as auditor 0.1.0 made it (the
    artifacts and certificate log in a folder beside it)."""
    copy = _copy_v1(blobs)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        cfg = migrate_mod._config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, migrate_mod.BASELINE)
        conn.execute(sa.text("DROP TABLE alembic_version"))  # 0.1.0 had no Alembic
        source = sa.create_engine(f"sqlite:///{copy / 'store.db'}")
        src_meta = sa.MetaData()
        src_meta.reflect(source)
        with source.connect() as src:
            for table in src_meta.sorted_tables:
                rows = [dict(r._mapping) for r in src.execute(table.select())]
                conn.execute(sa.text(f"DELETE FROM {table.name}"))
                if rows:
                    conn.execute(table.insert(), rows)
        source.dispose()
    engine.dispose()
    for name in ("store.db", "store.db-wal", "store.db-shm", "manifest.json"):
        (copy / name).unlink(missing_ok=True)
    return url, str(blobs)


@pytest.fixture
def v1_location(store_location: tuple[str, str | None], tmp_path: Path) -> tuple[str, str | None]:
    if store_location[1] is None:
        return str(_copy_v1(tmp_path / "v1")), None
    return _legacy_pg(store_location[0], tmp_path / "v1-blobs")


def _assert_nothing_lost(store: SqlStore) -> None:
    from auditor.store.query import all_rows, parse_query, select

    rows = all_rows(store)  # revision 0004 indexed every record: SQL pages as Python's
    for where, sort in (((), "name"), ((), "-started"), (("name ~ a",), "-name"),
                        (("tag != x",), "status")):
        query = parse_query(where, sort)
        assert store.query_page(query, 1, 100).ids == [
            r.id for r in select(rows, query, size=100).rows]
    by_id = {r.id: r for r in store.list_runs()}
    assert sorted(by_id) == sorted(r["id"] for r in MANIFEST["runs"])
    for run in MANIFEST["runs"]:
        record = store.get_record(run["id"])  # parses and matches its stored digest
        assert record_sha256(record) == run["record_sha256"]  # certificates still name it
        assert by_id[run["id"]].name == run["name"] and list(by_id[run["id"]].tags) == run["tags"]
        points = [[p.key, p.step, struct.pack("<d", p.value).hex(), p.time]
                  for p in store.iter_metrics(run["id"])]
        assert points == run["metrics"]  # NaN, ±Inf, -0.0, subnormal: bit for bit
        for art in record.artifacts:
            assert run["artifacts"][art.name] == art.sha256
            store.blobs.verified_path(art.sha256, art.name)
    certs = [{"sha256": c.sha256, "run_id": c.run_id, "verdict": c.verdict,
              "issued_at": c.issued_at.isoformat(), "subjects": list(c.subjects)}
             for c in store.certificates()]
    assert certs == MANIFEST["certificates"]
    assert store.get_build(MANIFEST["build"]) is not None
    assert check_store(store).problems == []


def test_v1_store_upgrades_with_nothing_lost(v1_location: tuple[str, str | None]) -> None:
    store = open_store(v1_location[0], blobs=v1_location[1])
    assert store.upgrade == migrate_mod.Upgrade("0001", migrate_mod.HEAD, True)
    assert store.get_meta("schema_version") == "3"  # auditor 0.1.0 now refuses it as newer
    _assert_nothing_lost(store)
    if store.certificate_log() is not None:  # a server store took its folder log in (0003)
        folder = store.blobs.root / "log"
        assert not folder.exists() and folder.with_name("log.in-database").is_dir()
        logged = [e.cert_sha256 for e in certlog.read_entries(certlog.log_of(store))]
        assert sorted(logged) == sorted(c["sha256"] for c in MANIFEST["certificates"])
    store.close()
    again = open_store(v1_location[0], blobs=v1_location[1])
    assert not again.upgrade.migrated
    _assert_nothing_lost(again)
    again.close()


def test_audit_store_upgrade_command(tmp_path: Path) -> None:
    location = str(_copy_v1(tmp_path / "v1"))
    first = audit("--store", location, "store", "upgrade", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"upgraded from revision 0001 to {migrate_mod.HEAD}")
    second = audit("--store", location, "store", "upgrade", cwd=tmp_path)
    assert second.stdout.strip().endswith(f"is at the current revision {migrate_mod.HEAD}")


def _open_and_report(loc: tuple[str, str | None], queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        store = open_store(loc[0], blobs=loc[1])
        queue.put("migrated" if store.upgrade.migrated else "ok")
        store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_several_processes_upgrade_an_old_store_exactly_once(
    v1_location: tuple[str, str | None],
) -> None:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_open_and_report, args=(v1_location, queue)) for _ in range(6)]
    for proc in procs:
        proc.start()
    answers = sorted(queue.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert answers == ["migrated"] + ["ok"] * 5
    store = open_store(v1_location[0], blobs=v1_location[1])
    _assert_nothing_lost(store)
    store.close()


def test_a_failing_migration_leaves_the_old_store_as_it_was(
    v1_location: tuple[str, str | None],
) -> None:
    engine = sa.create_engine(
        v1_location[0] if "://" in v1_location[0] else f"sqlite:///{v1_location[0]}/store.db"
    )
    with engine.begin() as conn:  # a table in the way: revision 0002 cannot create it
        conn.execute(sa.text("CREATE TABLE imports (x INTEGER)"))
    with pytest.raises(StoreError, match="cannot open store") as err:
        open_store(v1_location[0], blobs=v1_location[1])
    assert "\n" not in str(err.value)
    tables = set(sa.inspect(engine).get_table_names())
    assert "alembic_version" not in tables  # still a v1 store: nothing half-applied
    with engine.connect() as conn:
        assert conn.execute(sa.text("select value from meta where key='schema_version'")
                            ).scalar_one() == "1"
        assert "origin" not in {c["name"] for c in sa.inspect(conn).get_columns("runs")}
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE imports"))
    engine.dispose()
    store = open_store(v1_location[0], blobs=v1_location[1])  # and a retry completes
    _assert_nothing_lost(store)
    store.close()


def test_upgrade_hint_is_only_given_where_upgrade_helps(tmp_path: Path) -> None:
    # An old store (fixtures/stores/v1): `audit store upgrade` migrates it and its runs read.
    location = str(_copy_v1(tmp_path / "v1"))
    run_id = MANIFEST["runs"][0]["id"]
    assert audit("--store", location, "store", "upgrade", cwd=tmp_path).returncode == 0
    shown = audit("--store", location, "show", run_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    # A record of a newer record schema: upgrading the store would not help, so no hint says so.
    engine = sa.create_engine(f"sqlite:///{location}/store.db")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET record = json_set(record, '$.schema_version', 99) "
                             "WHERE id = :id"), {"id": run_id})
    engine.dispose()
    newer = audit("--store", location, "show", run_id, cwd=tmp_path)
    assert newer.returncode == 2, newer.stderr  # CorruptRecord
    assert "schema_version 99" in newer.stderr and "upgrade auditor" in newer.stderr
    assert "store upgrade" not in newer.stderr
