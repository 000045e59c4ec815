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
