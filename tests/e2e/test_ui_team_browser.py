"""The dashboard over a team store (issue 18 items 5 and 6) in Debian's chromium through
Playwright: a real sweep recorded by `audit record` (3 learning rates x 2 dummy values x 3
seeds of a tiny torch training) plus runs logged through the Python API, in a real
PostgreSQL store (a schema of the tests' own cluster).

Checked: the runs table; compare grouping runs that differ only in seed into one mean ±
std band per setting, legends naming the differing params, smoothing and a log axis,
parallel coordinates coloured by the metric, a diff table whose long values are cut but
whole for hover and copy; the run page's certificates explained with the report served;
a running rerun's page overlaying its original and marking the first divergence as its
points arrive. Set ``AUDITOR_SCREENSHOT_DIR=docs/img`` to refresh the README's
screenshots (runs-table, compare-grouped, importance, run-certificate).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from auditor.store import open_store
from tests.conftest import AUDIT, FIXTURES, GIT_ENV, audit, git, pg_schema_url
from tests.e2e.test_ui_browser import browser, chromium, page, wait_for  # noqa: F401
from tests.factories import metric_points
from tests.uiserver import serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
LRS = ("0.01", "0.1", "0.3")
DUMMIES = ("a", "b")
SEEDS = ("1", "2", "3")
API_RUN = """\
import sys
import auditor
lr = float(sys.argv[1])
with auditor.start_run(name="api-lr" + sys.argv[1], params={"lr": lr, "dummy": "api",
                       "seed": int(sys.argv[2])}, tags=["api"], quiet=True) as run:
    loss = 1.0
    for step in range(30):
        loss *= 1 - lr
        run.log_metric("loss", loss, step=step)
"""


@pytest.fixture(scope="module")
def team(postgres_url: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[dict[str, Any]]:
    """The sweep in a fresh PostgreSQL schema (dropped afterwards), artifacts in a folder."""
    chromium()  # no browser: skip (or fail in CI) before recording anything
    schema = "t_" + secrets.token_hex(6)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = pg_schema_url(postgres_url, schema)
    base = tmp_path_factory.mktemp("team")
    root = base / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    shutil.copy(FIXTURES / "sweep" / "train_sweep.py", root)
    (root / "api_run.py").write_text(API_RUN)
    (root / ".gitignore").write_text(".auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "sweep")
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": url, "AUDITOR_BLOBS": str(base / "blobs")}
    commands = [[AUDIT, "record", "--name", f"sweep-lr{lr}", "--tag", "sweep", "--",
                 sys.executable, "train_sweep.py", "--lr", lr, "--dummy", d, "--seed", s]
                for lr in LRS for d in DUMMIES for s in SEEDS]
    commands += [[sys.executable, "api_run.py", lr, s] for lr in ("0.1", "0.3")
                 for s in ("1", "2")]
    running: list[subprocess.Popen[bytes]] = []
    try:
        while commands or running:
            while commands and len(running) < 3:
                running.append(subprocess.Popen(commands.pop(0), cwd=root, env=env,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE))
            for proc in list(running):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    assert proc.returncode == 0, err
                    if proc.stderr:
                        proc.stderr.close()
                    running.remove(proc)
            time.sleep(0.2)
        listed = audit("--json", "list", "--limit", "0", cwd=root, env=env)
        runs = json.loads(listed.stdout)
        assert len(runs) == len(LRS) * len(DUMMIES) * len(SEEDS) + 4
        yield {"url": url, "blobs": str(base / "blobs"), "root": root, "runs": runs}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(scope="module")
def url(team: dict[str, Any]) -> Iterator[str]:
    with serve(team["url"]) as base:
        yield base


def keep(target: Any, name: str, tmp: Path) -> None:
    """A screenshot of a page or an element; copied to AUDITOR_SCREENSHOT_DIR when set."""
    path = tmp / f"{name}.png"
    if hasattr(target, "goto"):
        target.screenshot(path=str(path), full_page=False)
    else:
        target.screenshot(path=str(path))
    wanted = os.environ.get("AUDITOR_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / path.name)


def attr(page: Any, selector: str, name: str) -> str:  # noqa: F811
    return page.get_attribute(selector, name) or ""


def test_runs_table_grouped_compare_and_importance(page: Any, url: str,  # noqa: F811
                                                   tmp_path: Path) -> None:
    page.goto(url + "/?where=tag+%3D+sweep&metric=loss&sort=-metrics.loss")
    assert page.text_content("#count") == "18 of 22 runs"
    assert "over 18 comparable run(s)" in (page.text_content("#best") or "")
    keep(page, "runs-table", tmp_path)
    page.click("#compare-filtered")
    page.wait_for_selector("#importance canvas")
    # one band per setting: 6 settings of 3 seeds, named by the params that differ
    assert attr(page, "#curves", "data-mode") == "grouped"
    assert attr(page, "#curves", "data-series") == "6"
    legend = attr(page, "#curves", "data-legend").split("|")
    assert "dummy=a · lr=0.01 (n=3)" in legend and not any("sweep ·" in x for x in legend)
    assert attr(page, "#parallel", "data-color") == "loss"  # coloured by the chosen metric
    # the band drawn is the group's mean ± sample std, recomputed here from the API's curves
    api = httpx.get(url + "/api/compare", params={"where": "tag = sweep", "metric": "loss",
                                                    "sort": "-metrics.loss"},
                    timeout=60).json()
    first = api["groups"][0]
    curves = [c for c in api["curves"]["loss"] if c["run"] in first["runs"]]
    assert len(curves) == 3 and all(c["steps"] == curves[0]["steps"] for c in curves)
    drawn = page.evaluate(
        "() => echarts.getInstanceByDom(document.getElementById('curves')).getOption()"
        ".series.slice(0, 3).map(s => [s.name, s.data.map(p => p[1])])")
    assert drawn[0][0] == first["label"] + " (n=3)"
    values = np.array([c["values"] for c in curves])
    mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
    assert np.allclose(drawn[0][1], mean)
    assert np.allclose(drawn[1][1], mean - std)  # the band's lower edge, then its width
    assert np.allclose(drawn[2][1], 2 * std)
    keep(page.locator("#curves").locator("xpath=.."), "compare-grouped", tmp_path)
    page.uncheck("#group-seeds")
    assert attr(page, "#curves", "data-mode") == "runs"
    assert attr(page, "#curves", "data-series") == "18"
    assert "dummy=b · lr=0.3 · seed=2" in attr(page, "#curves", "data-legend").split("|")
    page.check("#group-seeds")
    page.check("#log-y")
    assert attr(page, "#curves", "data-y") == "log"
    page.focus("#smoothing")
    for _ in range(60):
        page.keyboard.press("ArrowRight")
    assert attr(page, "#curves", "data-smoothing") == "0.6"
    assert page.text_content("#smoothing-value") == "0.6"
    page.uncheck("#log-y")
    # the diff table of 18 runs: long values cut on screen, whole in the page (hover, copy)
    page.click("#show-all")
    cut = page.eval_on_selector_all(
        "#diff span.long", "spans => spans.filter(s => s.offsetParent !== null).map(s => "
        "[s.textContent, s.title, s.scrollWidth > s.clientWidth])")
    assert cut and all(text == title for text, title, _ in cut)
    assert any(truncated for _, _, truncated in cut)
    assert any(len(text) == 64 for text, _, _ in cut)  # a sha256, whole for copy
    page.click("#show-all")
    section = page.locator("#importance").locator("xpath=..")
    section.scroll_into_view_if_needed()
    keep(section, "importance", tmp_path)
    assert page.text_content('#importance-table tr[data-param="lr"] td.verdict') == \
        "stands out of seed noise"


def _certify(store: Any, diverge_at: int) -> tuple[str, str]:
    """An original and a rerun of it that diverges at ``diverge_at``, certified through the
    real compare, decide and issue pipeline (the rerun itself comes from the store API:
    a docker rerun is tests/e2e/test_verify.py's)."""
    from datetime import UTC, datetime

    from auditor.certify.decide import decide
    from auditor.certify.issue import issue_certificate
    from auditor.certify.verdict import VerifyResult
    from auditor.compare import compare_runs, evidence_from_store
    from auditor.core.policy import DEFAULT_POLICY
    from tests.uifactory import put_run

    values = [1.0 / (i + 1) for i in range(30)]
    other = [v + (0.2 if i >= diverge_at else 0.0) for i, v in enumerate(values)]
    original = put_run(store, name="certified", series={"loss": values},
                       final={"loss": values[-1]}, params={"lr": 0.1})
    rerun = put_run(store, name="certified", series={"loss": other}, final={"loss": other[-1]},
                    params={"lr": 0.1}, reproduces=original.identity.id)
    verdict = decide(compare_runs(evidence_from_store(store, original),
                                  evidence_from_store(store, rerun), DEFAULT_POLICY.compare),
                     original, rerun, DEFAULT_POLICY, [])
    result = VerifyResult(original_run=original.identity.id, original_name="certified",
                          rerun_run=rerun.identity.id, rerun_name="certified",
                          verdict=verdict, policy=DEFAULT_POLICY.table(),
                          started_at=datetime.now(UTC))
    issue_certificate(store, result, original, rerun, None, None)
    return original.identity.id, rerun.identity.id


def test_run_page_explains_certificates_and_a_live_rerun_diverging(
        page: Any, url: str, team: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    from tests.uifactory import put_run

    store = open_store(team["url"], blobs=team["blobs"], create=False)
    try:
        original, rerun = _certify(store, diverge_at=7)
        page.goto(f"{url}/runs/{original}")
        assert page.text_content("#certificates td.badge") == "not-reproduced"
        assert page.text_content("#certificates td.divergence") == "metrics/loss@step 7"
        assert (page.text_content("#certificates td.cause") or "-") != "-"
        keep(page.locator("#certificates").locator("xpath=.."), "run-certificate", tmp_path)
        assert page.locator("#certificates tr[data-cert]").count() == 1
        page.click("#certificates a.report")
        page.wait_for_url(f"**/runs/{rerun}/report")
        assert "Not reproduced" in (page.text_content("body") or "")
        # a rerun still running: the original dashed beside it, the divergence marked live
        live = put_run(store, name="certified", status="running", reproduces=original,
                       series={"loss": [1.0 / (i + 1) for i in range(5)]})
        page.goto(f"{url}/runs/{live.identity.id}")
        assert page.text_content("#divergence") == "no divergence so far"
        assert attr(page, "#curves", "data-series") == "2"
        assert attr(page, "#curves", "data-legend") == "rerun|original"
        store.add_metrics(live.identity.id,
                          metric_points("loss", [1.0 / (i + 1) for i in range(5)] + [9.0])[5:])
        text = wait_for(page, "#divergence", lambda t: t.startswith("first divergence"))
        assert text.startswith("first divergence: loss at step 5 (original 0.166")
        assert attr(page, "#curves", "data-divergence") == "5"
    finally:
        store.close()
