"""Issue 18 items 5 and 6 behind the dashboard: runs that differ only in seed grouped into
one mean ± std band, legends naming the differing params, a 16-run diff table with long
values cut (the whole value kept for hover and copy), and a run page whose certificates
say their verdict, first divergence and top cause, with the report served, and whose
rerun overlays its original and marks the first divergence so far."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from auditor.certify.decide import decide
from auditor.certify.issue import issue_certificate
from auditor.certify.verdict import VerifyResult
from auditor.compare import compare_runs, evidence_from_store
from auditor.core.policy import DEFAULT_POLICY
from auditor.store import SqlStore, open_store
from auditor.ui.views import compare_view, live_divergence, rows_for, run_labels
from tests.factories import metric_points
from tests.uifactory import put_run, sweep
from tests.uiserver import serve


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(str(tmp_path / "store"))
    yield opened
    opened.close()


@contextmanager
def client(folder: Path) -> Iterator[httpx.Client]:
    """The real `audit ui` over the store in ``folder``, and an HTTP client of it."""
    with serve(folder / "store") as base, \
            httpx.Client(base_url=base, timeout=60) as http:
        yield http


def test_seed_groups_make_one_band_each_and_legends_name_the_params(store: SqlStore) -> None:
    runs = sweep(store, lrs=(0.01, 0.1), dummies=("a", "b"), seeds=3)
    view = compare_view(store, [r.identity.id for r in runs], "loss", {})
    groups = view["groups"]
    assert [g["label"] for g in groups] == ["dummy=a · lr=0.01", "dummy=b · lr=0.01",
                                            "dummy=a · lr=0.1", "dummy=b · lr=0.1"]
    assert all(len(g["runs"]) == 3 for g in groups)
    labels = [r["label"] for r in view["runs"]]
    assert labels[0] == "dummy=a · lr=0.01 · seed=0" and len(set(labels)) == len(labels)
    assert not any("·" in lab and re.search(r"· [0-9a-z]{6}$", lab) for lab in labels)


def test_runs_differing_in_more_than_seed_are_groups_of_one(store: SqlStore) -> None:
    runs = [put_run(store, name=f"r{i}", params={"lr": i}, series={"loss": [1.0, 0.5]})
            for i in range(3)]
    view = compare_view(store, [r.identity.id for r in runs], "loss", {})
    assert [len(g["runs"]) for g in view["groups"]] == [1, 1, 1]
    same = [put_run(store, name="same", series={"loss": [1.0]}) for _ in range(2)]
    rows = rows_for(same, {})
    assert run_labels(rows) == {r.id: f"same · {r.id[-6:]}" for r in rows}


def test_sixteen_run_diff_table_cuts_long_values_keeping_them_whole(
        store: SqlStore, tmp_path: Path) -> None:
    runs = [put_run(store, name=f"run-{i}", params={"lr": i / 10, "seed": i,
                                                      "ckpt": "/data/" + "x" * 60 + str(i)})
            for i in range(16)]
    with client(tmp_path) as http:
        html = http.get("/compare", params={"runs": ",".join(r.identity.id for r in runs)}).text
    cut = re.findall(r'<span class="long" title="([^"]+)">([^<]+)</span>', html)
    assert len(cut) >= 16 and all(title == text for title, text in cut)  # whole, for copy
    assert '<div id="diff-wrap">' in html  # scrolls sideways, key column sticky (app.css)
    header = html.split("<thead>", 2)[1].split("</thead>")[0]
    assert "lr=0.1 · seed=1" in header and "run-1<br>" not in header


def _certified_rerun(store: SqlStore, diverge_at: int | None) -> tuple[str, str]:
    """A recorded original and a second recording of it marked as its rerun, compared,
    decided and certified by the real pipeline (the rerun itself is not rebuilt here:
    tests/e2e/test_verify.py covers a docker rerun)."""
    values = [1.0 / (i + 1) for i in range(20)]
    other = [v if diverge_at is None or i < diverge_at else v + 0.5
             for i, v in enumerate(values)]
    original = put_run(store, name="orig", params={"lr": 0.1}, series={"loss": values},
                       final={"loss": values[-1]})
    rerun = put_run(store, name="orig", params={"lr": 0.1}, series={"loss": other},
                    final={"loss": other[-1]}, reproduces=original.identity.id)
    left, right = evidence_from_store(store, original), evidence_from_store(store, rerun)
    verdict = decide(compare_runs(left, right, DEFAULT_POLICY.compare), original, rerun,
                     DEFAULT_POLICY, [])
    from datetime import UTC, datetime

    result = VerifyResult(original_run=original.identity.id, original_name="orig",
                          rerun_run=rerun.identity.id, rerun_name="orig", verdict=verdict,
                          policy=DEFAULT_POLICY.table(), started_at=datetime.now(UTC))
    issue_certificate(store, result, original, rerun, None, None)
    return original.identity.id, rerun.identity.id


def test_run_page_explains_its_certificate_and_serves_the_report(
        store: SqlStore, tmp_path: Path) -> None:
    original, rerun = _certified_rerun(store, diverge_at=5)
    with client(tmp_path) as http:
        page = http.get(f"/runs/{original}").text
        report = http.get(f"/runs/{rerun}/report")
        assert http.get(f"/runs/{original}/report").status_code == 200  # the original's too
    row = page.split('<table id="certificates">', 1)[1].split("</table>", 1)[0]
    assert 'class="badge not-reproduced"' in row
    assert "metrics/loss@step 5" in row
    cause = re.search(r'<td class="cause"[^>]*>([^<]+)</td>', row)
    assert cause and cause.group(1) != "-"
    assert f'href="/runs/{rerun}/report"' in row
    assert report.status_code == 200 and "Not reproduced" in report.text
    assert report.headers["content-security-policy"].startswith("default-src 'none'")


def test_rerun_page_overlays_its_original_and_marks_the_first_divergence(
        store: SqlStore, tmp_path: Path) -> None:
    original = put_run(store, name="o", series={"loss": [1.0, 0.5, 0.25, 0.125]})
    rerun = put_run(store, name="o", status="running", reproduces=original.identity.id,
                    series={"loss": [1.0, 0.5]})
    assert live_divergence(store, rerun.identity.id, original.identity.id) == {}
    with client(tmp_path) as http:
        live = http.get(f"/api/runs/{rerun.identity.id}/curves").json()
        assert live["original"] == original.identity.id and live["divergence"] == {}
        assert [c["run"] for c in live["curves"]["loss"]] == [rerun.identity.id,
                                                             original.identity.id]
        assert live["curves"]["loss"][1]["dashed"] is True
        store.add_metrics(rerun.identity.id, metric_points("loss", [1.0, 0.5, 0.3])[2:])
        live = http.get(f"/api/runs/{rerun.identity.id}/curves").json()
        assert live["divergence"] == {"loss": {"step": 2, "original": 0.25, "rerun": 0.3}}
        page = http.get(f"/runs/{rerun.identity.id}").text
        assert 'id="overlay"' in page and f'href="/runs/{original.identity.id}"' in page
        plain = http.get(f"/api/runs/{original.identity.id}/curves").json()
        assert plain["original"] is None and len(plain["curves"]["loss"]) == 1
