"""The dashboard's pages have a size bound: a run with tens of thousands of params and
metrics (an old record, an import) gets a run page of bounded size that says how many more
there are; the runs page offers a bounded list of columns."""

from __future__ import annotations

from auditor.store import SqlStore
from auditor.store.query import page_runs, parse_query
from auditor.ui import pages
from auditor.ui.pages import MAX_COLUMN_KEYS, MAX_CURVES, MAX_ROWS
from auditor.ui.views import run_curves
from tests.uifactory import put_run

KEYS = 20_000


def test_run_page_lists_a_bounded_number_of_rows(store: SqlStore) -> None:
    rec = put_run(store, name="wide", params={f"p{i:05d}": i for i in range(KEYS)},
                  final={f"m{i:05d}": float(i) for i in range(KEYS)},
                  series={f"m{i:05d}": [1.0, 0.5] for i in range(MAX_CURVES + 30)})
    # what the app's /runs/{id} and / routes render
    html = pages.run_page(rec, [], run_curves(store, rec))
    assert len(html) < 600_000, len(html)  # unbounded, it was megabytes
    assert f"and {KEYS - MAX_ROWS} more (audit show --json)" in html  # params and metrics
    assert html.count("<th>p0") == MAX_ROWS and html.count("<th>m0") == MAX_ROWS
    assert "and 30 more (/api/runs/" in html  # curves beyond the bound
    runs = pages.runs_page(page_runs(store, parse_query([], None)), "", "", None, None, [])
    assert 0 < runs.count('value="params.p') <= MAX_COLUMN_KEYS
    assert len(runs) < 600_000, len(runs)
