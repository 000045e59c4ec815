"""Issue 18, items 2 and 3: reruns in their place (hidden or nested, never counted,
never best, never a sample of the noise) and importance over comparable runs that says
which runs and params it left out and why."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from auditor.store import SqlStore
from auditor.store.query import all_rows, page_runs, parse_query, query_runs
from auditor.ui.importance import best_run, importance
from tests.uifactory import put_run, sweep
from tests.uiserver import serve


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """SQLite and PostgreSQL alike (the runs table's SQL leaves reruns out)."""
    return any_store


def _with_reruns(store: SqlStore) -> tuple[list[str], list[str]]:
    """The 18-run sweep plus three reruns of its worst runs that scored above everything
    (a rerun on other hardware can): originals' ids, reruns' ids."""
    runs = sweep(store)
    worst = [r for r in runs if r.params["lr"] == 0.001][:3]
    reruns = [put_run(store, name=f"rerun of {r.identity.name}", minute=100 + i,
                      params=dict(r.params), final={"accuracy": 0.99, "loss": 0.01},
                      reproduces=r.identity.id) for i, r in enumerate(worst)]
    return [r.identity.id for r in runs], [r.identity.id for r in reruns]


def test_reruns_are_not_counted_ranked_or_best(store: SqlStore) -> None:
    originals, reruns = _with_reruns(store)
    page = page_runs(store, parse_query([], "-metrics.accuracy", originals=True), size=50)
    assert (page.total, page.matched, page.reruns) == (18, 18, 3)  # "18 of 18", not 21
    assert not set(reruns) & {r.id for r in page.rows}
    assert page.rows[0].name.startswith("lr0.1")  # the rerun's 0.99 does not rank first
    assert query_runs(store, ["params.lr < 0.01"], originals=True).matched == 6
    best = best_run(all_rows(store), "accuracy")
    assert best is not None and best["run"] in originals and best["runs"] == 18
    result = importance(all_rows(store), "accuracy")
    assert result.runs == 18 and result.seed_groups == 6  # reruns add no seed samples
    assert {x.run for x in result.left_out} == set(reruns)
    assert all("rerun of" in x.why for x in result.left_out)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_dashboard_hides_reruns_or_nests_them_under_their_original(
        local_store: SqlStore, tmp_path: Path) -> None:
    originals, reruns = _with_reruns(local_store)
    with serve(tmp_path / "store") as url:
        page = _get(url + "/")
        shown = _get(url + "/?reruns=1")
        api = json.loads(_get(url + "/api/runs?reruns=1&size=500"))
    assert re.search(r'id="count">18 of 18 runs<', page)
    assert "+3 reruns, hidden" in page and all(r not in page for r in reruns)
    for rerun in reruns:
        row = re.search(rf'<tr class="rerun" data-run="{rerun}" data-rerun-of="(\w+)">', shown)
        assert row is not None and row.group(1) in originals
        # nested right under its original's row
        assert shown.index(f'data-run="{row.group(1)}"') < shown.index(f'data-run="{rerun}"')
    assert api["total"] == 18 and api["reruns"] == 3
    assert sorted(x["id"] for r in api["runs"] for x in r["reruns"]) == sorted(reruns)


def test_a_setting_that_matters_is_named_with_its_seed_group(store: SqlStore) -> None:
    sweep(store, dummies=("a",), seeds=4)
    said = importance(all_rows(store), "accuracy").statements()
    assert said[0] == "over 12 comparable run(s) (train.py, no commit)"
    lr = next(s for s in said if s.startswith("lr: "))
    assert lr.startswith("lr: stands out of seed noise (effect 0.2")
    best = said[-1]
    assert re.fullmatch(r"best setting lr=0\.1: accuracy 0\.[67]\d+ ± 0\.0\d+ over 4 run\(s\); "
                        r"best run lr0\.1-a \(\w{10}, 0\.[67]\d+\)", best), best
    assert "params left out: dummy: constant" in said


def test_a_setting_that_does_not_matter_stays_inside_the_noise(store: SqlStore) -> None:
    sweep(store, lrs=(0.1,), dummies=("a", "b", "c"), seeds=3)
    result = importance(all_rows(store), "accuracy")
    said = result.statements()
    assert "dummy: inside seed noise" in " ".join(said)
    assert result.best is not None and result.best["distinguishable"] is False


def test_the_mixed_table_leaves_out_what_is_not_comparable(store: SqlStore) -> None:
    """The unfiltered table of issue 18: a sweep, an eval script, runs that lack a param,
    output paths and run names as params, and a rerun."""
    runs = sweep(store, dummies=("a",), seeds=3)
    for i, r in enumerate(runs):  # each run wrote to its own folder, named after itself
        put_run(store, name=f"{r.identity.name}-s{i}", minute=200 + i,
                params={**r.params, "out_dir": f"outputs/run{i}", "run_name": f"n{i}",
                        "epochs": 3, **({"sleep": 0.5} if i % 2 else {})},
                final=dict(r.metrics.final), seed=i)
    put_run(store, name="eval", argv=("python", "eval.py"), params={"lr": 0.1},
            final={"accuracy": 0.2}, minute=300)
    put_run(store, name="no metric", params={"lr": 0.1}, minute=301)
    put_run(store, name="rerun", params={"lr": 0.001, "seed": 0}, final={"accuracy": 0.99},
            reproduces=runs[0].identity.id, minute=302)
    result = importance(all_rows(store), "accuracy")
    # the sweep's first 9 runs lack out_dir, run_name, epochs and sleep: missing is no value
    assert result.runs == 18 and [p.name for p in result.params] == ["lr"]
    assert result.params_left_out == {
        "dummy": "constant", "epochs": "missing in 9 of 18 runs",
        "out_dir": "missing in 9 of 18 runs", "run_name": "missing in 9 of 18 runs",
        "sleep": "missing in 14 of 18 runs"}
    whys = {x.name: x.why for x in result.left_out}
    assert whys["eval"] == "other entry point eval.py"
    assert whys["no metric"] == "no metric 'accuracy'"
    assert whys["rerun"].startswith(f"rerun of {runs[0].identity.id[:10]}")
    said = result.statements()
    assert said[1].startswith("left out 3 run(s): ")
    # only the runs that have them: path-like, unique-per-run and constant params
    later = [r for r in all_rows(store) if "out_dir" in r.params]
    again = importance(later, "accuracy")
    assert again.params_left_out == {"dummy": "constant", "epochs": "constant",
                                     "out_dir": "path-like", "run_name": "unique per run",
                                     "sleep": "missing in 5 of 9 runs"}
    assert [p.name for p in again.params] == ["lr"]
    assert again.best is not None and again.best["setting"] == {"lr": 0.1}
    assert again.best["name"].startswith("lr0.1")  # the best run has the winning setting
