"""`audit list` without SQLAlchemy (store/fastlist.py) prints what the full store prints,
on SQLite and on PostgreSQL, and steps aside whenever only the full store can answer
(a schema revision it does not know, a stale run to mark, an empty database, another
artifact location); connection errors are the full store's one line, password hidden."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.core.schema import Code, MetricsSummary
from auditor.store import SqlStore, open_store, signatures
from auditor.store.fastlist import list_server
from tests.conftest import audit
from tests.factories import make_record

LACKS = "imported from MLflow: no code or environment was recorded"
# Runs `audit ARGS` in a fresh interpreter; with FULL=1 both fast paths answer None, so
# the command goes through the full store. stderr's last line says which path answered.
PROBE = """
import os, sys, runpy
import auditor.store.fastlist as fl
taken = []
def wrap(fn):
    def call(*args):
        if os.environ.get("FULL"):
            return None
        found = fn(*args)
        taken.append(found is not None)
        return found
    return call
fl.list_local, fl.list_server = wrap(fl.list_local), wrap(fl.list_server)
sys.argv = ["audit", *sys.argv[1:]]
try:
    runpy.run_module("auditor.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("fast" if any(taken) else "full",
      [m for m in ("sqlalchemy", "pydantic", "alembic") if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


def run_list(location: str, *args: str, full: bool = False,
             env: dict[str, str] | None = None) -> tuple[int, str, str, str]:
    """(exit code, stdout, stderr without the probe's line, which path answered)."""
    res = subprocess.run(
        [sys.executable, "-c", PROBE, "--store", location, *args], capture_output=True,
        text=True, check=False, timeout=120, cwd="/",
        env={**os.environ, **(env or {}), "FULL": "1" if full else ""},
    )
    *err, probe = res.stderr.splitlines()
    return res.returncode, res.stdout, "\n".join(err), probe


def fill(store: SqlStore) -> list[str]:
    """Six runs: NaN and infinite metrics, one signed, one imported, one edited after
    it was written (listed as corrupt)."""
    ids = []
    for i in range(6):
        rec = make_record(name=f"r{i}", tags=("a", f"t{i}"))
        rec = rec.model_copy(update={
            "code": Code(vcs="git", root="/r", commit=f"{i:040x}", tree_sha256="0" * 64,
                         dirty=i % 2 == 1),
            "metrics": MetricsSummary(final={"loss": 1 / (i + 1), "odd": float("nan"),
                                             "big": float("-inf")}),
            "params": {"lr": 0.1 * i, "name": "x"},
            "not_captured": {"verifiable": LACKS} if i == 4 else {},
        })
        store.on_record = signatures.signer(Ed25519PrivateKey.generate()) if i == 2 else None
        store.put_record(rec)
        ids.append(rec.identity.id)
    store.on_record = None
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET record = replace(record, '\"r3\"', '\"r9\"') "
                             "WHERE id = :id"), {"id": ids[3]})
    return ids


@pytest.fixture
def filled(store_location: tuple[str, str | None]) -> tuple[str, list[str]]:
    """(the location `--store` takes, run ids) of a filled store of each kind."""
    store = open_store(store_location[0], blobs=store_location[1])
    try:
        ids = fill(store)
    finally:
        store.close()
    return store_location[0], ids


@pytest.mark.parametrize("args", [(), ("--json",), ("--limit", "2"), ("--limit", "0", "--json"),
                                  ("-q", "--limit", "3")])
def test_fast_list_prints_what_the_full_store_prints(filled: tuple[str, list[str]],
                                                     args: tuple[str, ...]) -> None:
    location, ids = filled
    code, out, err, probe = run_list(location, "list", *args)
    assert (code, err) == (0, ""), err
    assert probe == "fast []", probe  # neither SQLAlchemy, pydantic nor Alembic loaded
    full = run_list(location, "list", *args, full=True)
    assert full[:3] == (code, out, err) and full[3].startswith("full ['sqlalchemy'")
    if "--json" in args:
        rows = {r["id"]: r for r in json.loads(out)}
        assert rows[ids[2]]["signed"] and not rows[ids[1]]["signed"]
        assert rows[ids[1]]["final_metrics"]["odd"] == "nan"
        assert rows[ids[3]]["status"] == "corrupt"  # the digest is checked
    elif "-q" not in args and "--limit" not in args:
        assert f"1 imported run(s) cannot be verified ({ids[4][:10]}): {LACKS}" in out


def test_pg_fast_listing_equals_the_stores_own(pg_url: str, tmp_path: Path) -> None:
    store = open_store(pg_url, blobs=str(tmp_path / "blobs"))
    try:
        ids = fill(store)
        for limit in (None, 2, 100):
            fast = list_server(pg_url, None, limit)
            assert fast is not None
            assert [repr(r) for r in fast.runs] == [repr(r) for r in store.list_runs(limit=limit)]
        fast = list_server(pg_url, str(tmp_path / "blobs"), None)  # the remembered folder
        assert fast is not None and fast.signed == signatures.signed_run_ids(store) == {ids[2]}
        assert [r.lacks for r in fast.runs if r.id == ids[4]] == [LACKS]
    finally:
        store.close()


def test_pg_fast_listing_steps_aside_for_the_full_store(pg_url: str, tmp_path: Path) -> None:
    assert list_server(pg_url, None, None) is None  # an empty database: nothing to read
    store = open_store(pg_url, blobs=str(tmp_path / "blobs"))
    ids = fill(store)
    store.close()
    assert list_server(pg_url, str(tmp_path / "other"), None) is None  # not its artifacts
    refused = run_list(pg_url, "--blobs", str(tmp_path / "other"), "list")
    assert refused[0] == 2 and "keeps its artifacts at" in refused[2]
    assert refused[:3] == run_list(pg_url, "--blobs", str(tmp_path / "other"), "list",
                                   full=True)[:3]
    assert list_server(pg_url.replace("postgresql+psycopg", "postgresql"), None, None) is None
    engine = sa.create_engine(pg_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with engine.begin() as conn:  # a run whose recorder died on this host
        conn.execute(sa.text("UPDATE runs SET status = 'running', host = :h, pid = :p "
                             "WHERE id = :id"),
                     {"h": socket.gethostname(), "p": int(dead.stdout), "id": ids[0]})
    assert list_server(pg_url, None, None) is None
    code, out, _err, probe = run_list(pg_url, "list")  # the full store marks it
    assert code == 0 and probe.startswith("full") and "crashed" in out
    assert list_server(pg_url, None, None) is not None
    with engine.begin() as conn:  # a revision this auditor does not know: refused, as before
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    assert list_server(pg_url, None, None) is None
    code, out, err, probe = run_list(pg_url, "list")
    assert code != 0 and out == "" and "schema revision 9999, newer than this auditor" in err
    assert (code, out, err) == run_list(pg_url, "list", full=True)[:3]
    engine.dispose()


@pytest.mark.parametrize("breakage", ["password", "port"])
def test_pg_fast_list_connection_errors_are_the_full_stores(pg_url: str, tmp_path: Path,
                                                            breakage: str) -> None:
    url = sa.engine.make_url(pg_url)
    if breakage == "password":
        url = url.set(password="wr0ng-Secret%@x")
    else:
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            url = url.set(port=sock.getsockname()[1])
    text = url.render_as_string(hide_password=False)
    for args in (("list",), ("list", "--json")):
        code, out, err, probe = run_list(text, *args)
        assert code == 3 and out == "" and err.count("\n") == 0, err
        assert err.startswith(f"error: cannot open store {url.render_as_string()}: "), err
        assert "wr0ng" not in err and probe.startswith("full")
        assert run_list(text, *args, full=True)[:3] == (code, out, err)


def test_list_where_keeps_what_imported_runs_lack(filled: tuple[str, list[str]]) -> None:
    location, ids = filled
    plain = audit("--store", location, "list", cwd=Path.cwd())
    where = audit("--store", location, "list", "--where", "name ~ r", cwd=Path.cwd())
    line = f"1 imported run(s) cannot be verified ({ids[4][:10]}): {LACKS} (see `audit show`)"
    assert plain.returncode == where.returncode == 0, where.stderr
    assert line in plain.stdout.splitlines() and line in where.stdout.splitlines()
    assert "corrupt" in where.stdout  # a record failing its digest is listed, not fatal
    none = audit("--store", location, "list", "--where", "name = r1", cwd=Path.cwd())
    assert none.returncode == 0 and "imported" not in none.stdout
