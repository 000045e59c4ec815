"""The filter/sort language shared by `audit list --where/--sort` and the dashboard."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.core.errors import InputError
from auditor.store import SqlStore
from auditor.store.base import CertificateRow
from auditor.store.query import parse_query, query_runs
from tests.conftest import audit
from tests.uifactory import START, put_run, sweep


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """The dashboard's queries run against SQLite and PostgreSQL alike."""
    return any_store


def names(store: SqlStore, *where: str, sort: str | None = None) -> list[str]:
    return [r.name for r in query_runs(store, where, sort, size=1000).rows]


def test_param_and_metric_expressions(store: SqlStore) -> None:
    sweep(store)
    assert set(names(store, "params.lr < 0.05")) == {"lr0.001-a", "lr0.001-b", "lr0.01-a",
                                                     "lr0.01-b"}
    assert set(names(store, "params.lr >= 0.1 and params.dummy = b")) == {"lr0.1-b"}
    assert len(names(store, "metrics.accuracy >= 0.65")) == 6
    assert names(store, "params.missing = 1") == []
    assert len(names(store, "params.missing != 1")) == 18  # a run lacking the key differs


def test_sort_descending_missing_last_and_paging(store: SqlStore) -> None:
    sweep(store, lrs=(0.001, 0.1), dummies=("a",), seeds=2)
    put_run(store, name="no-metric", minute=99)
    got = names(store, sort="-metrics.accuracy")
    assert got[:2] == ["lr0.1-a", "lr0.1-a"] and got[-1] == "no-metric"
    assert names(store, sort="metrics.accuracy")[-1] == "no-metric"
    page = query_runs(store, (), "name", page=2, size=2)
    assert (page.page, page.pages, page.matched, [r.name for r in page.rows]) == (
        2, 3, 5, ["lr0.1-a", "lr0.1-a"])


def test_name_tag_status_and_verified(store: SqlStore) -> None:
    a = put_run(store, name="mlp-small", tags=("baseline", "cpu"))
    put_run(store, name="cnn", status="failed", minute=1)
    store.put_certificate(CertificateRow("0" * 64, a.identity.id, None,
                                         "reproduced-bitwise", START, ()))
    assert names(store, "name ~ MLP") == ["mlp-small"]
    assert names(store, "tag = baseline") == ["mlp-small"]
    assert names(store, "tag != baseline") == ["cnn"]
    assert names(store, "status = failed") == ["cnn"]
    assert names(store, "verified = bitwise") == ["mlp-small"]
    assert names(store, "verified = never") == ["cnn"]


def test_numbers_against_text_are_false_not_errors(store: SqlStore) -> None:
    put_run(store, name="text-lr", params={"lr": "auto", "flag": True})
    put_run(store, name="num-lr", params={"lr": 0.5}, minute=1)
    assert names(store, "params.lr < 1") == ["num-lr"]
    assert names(store, "params.lr = auto") == ["text-lr"]
    assert names(store, "params.flag = true") == ["text-lr"]
    assert names(store, 'name = "text-lr"') == ["text-lr"]


@pytest.mark.parametrize("bad", ["params.lr <", "lr < 0.1", "params.lr << 1", "name", "",
                                 "verified = maybe", "params. = 1", "status = 'x"])
def test_bad_filters_are_input_errors(bad: str) -> None:
    if not bad:
        assert parse_query([bad]).clauses == ()
        return
    with pytest.raises(InputError):
        parse_query([bad])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=30))
def test_parser_fuzz_raises_only_input_error(where: str, sort: str) -> None:
    with contextlib.suppress(InputError):
        parse_query([where], sort)


def test_audit_list_where_and_sort(tmp_path: Path, local_store: SqlStore) -> None:
    sweep(local_store, lrs=(0.001, 0.1), seeds=2)
    loc = str(tmp_path / "store")
    out = audit("--store", loc, "list", "--where", "params.lr < 0.05",
                "--sort", "-metrics.accuracy,name", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "lr0.001-a" in out.stdout and "lr0.1" not in out.stdout
    js = audit("--store", loc, "list", "--json", "--where", "params.dummy = b", "--limit", "2",
               "--sort", "-metrics.accuracy", cwd=tmp_path)
    import json

    rows = json.loads(js.stdout)
    assert [r["name"] for r in rows] == ["lr0.1-b", "lr0.1-b"]
    assert rows[0]["verified"] == "never" and rows[0]["params"]["dummy"] == "b"
    bad = audit("--store", loc, "list", "--where", "params.lr <<", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_row_cache_sees_new_changed_removed_and_verified_runs(store: SqlStore) -> None:
    from auditor.store.query import RowCache

    cache = RowCache(store)
    first = put_run(store, name="a", status="running")
    assert [r.status for r in cache.refresh()] == ["running"]
    put_run(store, name="b", minute=1)
    store.put_record(first.model_copy(update={"identity": first.identity.model_copy(
        update={"status": "finished"})}))
    rows = cache.refresh()
    assert sorted((r.name, r.status) for r in rows) == [("a", "finished"), ("b", "finished")]
    store.put_certificate(CertificateRow("1" * 64, first.identity.id, None,
                                         "not-reproduced", START, ()))
    assert {r.name: r.verified for r in cache.refresh()}["a"] == "not-reproduced"
    with store.engine.begin() as conn:  # a run removed behind the cache's back
        conn.exec_driver_sql("DELETE FROM runs WHERE name = 'b'")
    assert [r.name for r in cache.refresh()] == ["a"]


# -- the runs table in SQL (store/sqlquery.py) against the Python reference ------------
ODD_PARAMS: list[dict[str, object]] = [
    {"lr": 0.1, "opt": "adam", "flag": True, "n": 3, "note": "1e3"},
    {"lr": 0.01, "opt": "sgd", "flag": False, "n": 10, "note": None},
    {"lr": float("inf"), "opt": "Adam", "n": -2, "note": "élan"},
    {"lr": float("nan"), "opt": "10", "flag": True},
    {"lr": 1, "opt": "adam", "n": 3.0, "note": "B"},
    {"opt": "a b", "note": "b"},
    {},
]
ODD_FINAL: list[dict[str, float]] = [
    {"accuracy": 0.9, "loss": 0.1}, {"accuracy": 0.5}, {"accuracy": float("nan")},
    {"accuracy": float("inf"), "loss": -0.0}, {"loss": 0.3}, {}, {"accuracy": 0.9}]
QUERIES = [
    ((), None), ((), "name"), ((), "-name"), ((), "params.lr"), ((), "-params.lr"),
    ((), "params.opt,-metrics.accuracy"), ((), "-params.flag"), ((), "params.note"),
    ((), "-params.n,name"), ((), "verified"), ((), "-verified,params.lr"), ((), "started"),
    ((), "metrics.accuracy"), ((), "-metrics.accuracy"), ((), "status,-id"), ((), "commit"),
    (("params.lr < 0.1",), None), (("params.lr >= 0.01",), "-params.lr"),
    (("params.lr != 0.1",), "name"), (("params.lr = 1",), None), (("params.opt = adam",), None),
    (("params.opt ~ AD",), "params.opt"), (("params.opt < b",), None),
    (("params.opt > 5",), None), (("params.opt != adam",), None), (("params.flag = true",), None),
    (("params.flag != true",), None), (("params.flag < 1",), None),
    (("params.note = 1000",), None), (("params.note ~ LAN",), None),
    (("params.note != x",), None), (("params.n <= 3",), "-params.n"),
    (("metrics.accuracy >= 0.9",), "name"), (("metrics.accuracy != 0.9",), None),
    (("metrics.accuracy > 1e308",), None), (("metrics.loss = 0",), None),
    (("metrics.accuracy ~ nan",), None), (("name ~ RUN-1",), None), (("name = run-3",), None),
    (("tag = sweep",), None), (("tag != sweep",), None), (("tag ~ od",), None),
    (("tag < o",), None), (("status = failed",), None), (("status != finished",), None),
    (("verified = bitwise",), None), (("verified != never",), "-verified"),
    (("verified ~ not-reproduced",), None), (("verified < never",), None),
    (("id ~ 0",), None), (("started > 2026-01-01T00:03",), None),
    (("params.lr < 0.5", "metrics.accuracy >= 0.5"), "-metrics.accuracy"),
    (("params.opt = adam and tag = sweep",), "params.lr"),
]


def odd_runs(store: SqlStore) -> None:
    """Runs whose values stress the comparison and sort rules: NaN, inf, booleans,
    numeric strings, None, case, non-ASCII, ties; some verified (twice: newest wins)."""
    for i in range(21):
        rec = put_run(store, name=f"run-{i % 5}", params=ODD_PARAMS[i % 7],
                      final=ODD_FINAL[(i * 3) % 7], minute=i % 9,
                      status=("finished", "failed", "running")[i % 3],
                      tags=(("sweep", "odd") if i % 2 else ("sweep",)) if i % 4 else ())
        if i % 3 == 0:
            store.put_certificate(CertificateRow(f"{i:064x}", rec.identity.id, None,
                                                 "not-reproduced", START, ()))
        if i % 6 == 0:
            store.put_certificate(CertificateRow(f"{i + 100:064x}", rec.identity.id, None,
                                                 "reproduced-bitwise",
                                                 START.replace(year=2027), ()))


def test_sql_pages_equal_the_python_reference(store: SqlStore) -> None:
    from auditor.store.query import all_rows, page_runs, select

    odd_runs(store)
    rows = all_rows(store)
    for where, sort in QUERIES:
        query = parse_query(where, sort)
        for page, size in ((1, 100), (1, 4), (2, 4), (6, 4), (99, 4)):
            want = select(rows, query, page=page, size=size)
            got = store.query_page(query, page, size)  # the SQL itself, no fallback
            assert (got.ids, got.total, got.matched, got.page) == (
                [r.id for r in want.rows], want.total, want.matched, want.page), (where, sort)
            assert (got.param_keys, got.metric_keys) == (want.param_keys, want.metric_keys)
        shown = page_runs(store, query, page=1, size=4)
        assert [r.id for r in shown.rows] == [r.id for r in select(rows, query, size=4).rows]


def test_an_index_that_disagrees_with_the_records_is_not_believed(store: SqlStore) -> None:
    from auditor.store.query import page_runs

    sweep(store, seeds=1)
    with store.engine.begin() as conn:  # rows no digest covers, edited
        conn.exec_driver_sql("UPDATE run_values SET num = 0.5 WHERE kind = 'p' AND key = 'lr'"
                             " AND num < 0.05")
    query = parse_query(["params.lr >= 0.1"], "-params.lr")
    assert len(store.query_page(query, 1, 50).ids) == 6  # the edited index admits four more
    assert sorted(r.name for r in page_runs(store, query).rows) == ["lr0.1-a", "lr0.1-b"]
