"""The SQLite list path without SQLAlchemy gives what ``SqlStore.list_runs`` gives, and
steps aside whenever the full store is needed (old schema, a stale run to mark)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.core.schema import Code, MetricsSummary
from auditor.store import local_database, open_store, signatures
from auditor.store.fastlist import list_local
from tests.conftest import audit
from tests.factories import make_record


def _fill(root: Path) -> list[str]:
    store = open_store(str(root))
    ids = []
    for i in range(5):
        rec = make_record()
        rec = rec.model_copy(update={
            "identity": rec.identity.model_copy(update={"name": f"r{i}", "tags": ("a", f"t{i}")}),
            "code": Code(vcs="git", root="/r", commit=f"{i:040x}", tree_sha256="0" * 64,
                         dirty=i % 2 == 1),
            "metrics": MetricsSummary(final={"loss": 1 / (i + 1), "odd": float("nan")}),
            "params": {"lr": 0.1 * i, "name": "x"},
        })
        store.on_record = signatures.signer(Ed25519PrivateKey.generate()) if i == 2 else None
        store.put_record(rec)  # type: ignore[attr-defined]
        ids.append(rec.identity.id)
    with store.engine.begin() as conn:  # type: ignore[attr-defined]  # one record edited
        conn.execute(sa.text("UPDATE runs SET record = replace(record, '\"r3\"', '\"r9\"') "
                             "WHERE id = :id"), {"id": ids[3]})
    store.close()
    return ids


def test_fast_listing_equals_the_stores_own(tmp_path: Path) -> None:
    ids = _fill(tmp_path / "s")
    store = open_store(str(tmp_path / "s"))
    db = local_database(str(tmp_path / "s"))
    assert db == (tmp_path / "s" / "store.db").resolve()
    for limit in (None, 2):
        fast = list_local(db, limit)
        assert fast is not None
        assert [repr(r) for r in fast.runs] == [repr(r) for r in store.list_runs(limit=limit)]
    fast = list_local(db, None)
    assert fast is not None
    assert {r.id: r.status for r in fast.runs}[ids[3]] == "corrupt"  # the digest is checked
    assert fast.signed == signatures.signed_run_ids(store) == {ids[2]}
    store.close()


def test_fast_listing_steps_aside_for_the_full_store(tmp_path: Path) -> None:
    ids = _fill(tmp_path / "s")
    db = local_database(str(tmp_path / "s"))
    assert db is not None and local_database(str(tmp_path / "none")) is None
    assert local_database("postgresql+psycopg://u@127.0.0.1:1/db") is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # a run whose recorder died on this host
        conn.execute(sa.text("UPDATE runs SET status = 'running', host = :h, pid = :p "
                             "WHERE id = :id"),
                     {"h": socket.gethostname(), "p": int(dead.stdout), "id": ids[0]})
    assert list_local(db, None) is None
    res = audit("--store", str(tmp_path / "s"), "list", cwd=tmp_path)  # the full path marks it
    assert res.returncode == 0 and "crashed" in res.stdout, res.stderr
    assert list_local(db, None) is not None
    with engine.begin() as conn:  # an old revision: open_store upgrades or refuses it
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))
    assert list_local(db, None) is None
    engine.dispose()


def test_audit_list_imports_neither_sqlalchemy_nor_pydantic(tmp_path: Path) -> None:
    _fill(tmp_path / "s")
    probe = ("import sys, runpy; sys.argv = ['audit', 'list', '--json']\n"
             "try:\n    runpy.run_module('auditor.cli.main', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print([m for m in ('sqlalchemy', 'pydantic', 'alembic') if m in sys.modules],"
             " file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "AUDITOR_STORE": str(tmp_path / "s")}, check=False)
    assert res.stderr.strip().splitlines()[-1] == "[]", res.stderr
    assert '"name": "r4"' in res.stdout
