"""The dashboard in a real browser (Debian's chromium driven by Playwright), over a sweep
recorded through the real CLI: a tiny torch training where the learning rate matters and
a dummy param does not, 3 seeds per setting (24 runs).

Without chromium the tests are skipped locally but FAIL under ``CI`` (``.ci/run`` installs
it). Screenshots are kept under the test's temp folder; set ``AUDITOR_SCREENSHOT_DIR`` to
keep copies (the README's screenshots come from test_ui_team_browser.py, over PostgreSQL).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT, FIXTURES, GIT_ENV, audit, git
from tests.uiserver import serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
LRS = ("0.003", "0.01", "0.1", "0.3")
DUMMIES = ("a", "b")
SEEDS = ("1", "2", "3")


def chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI must run the browser tests "
                    "(apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """24 runs recorded by `audit record`, three at a time, into one store."""
    root = tmp_path_factory.mktemp("sweep") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    shutil.copy(FIXTURES / "sweep" / "train_sweep.py", root)
    (root / ".gitignore").write_text(".auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "sweep")
    env = {**os.environ, **GIT_ENV}
    pending = [(lr, d, s) for lr in LRS for d in DUMMIES for s in SEEDS]
    running: list[subprocess.Popen[bytes]] = []
    while pending or running:
        while pending and len(running) < 3:
            lr, dummy, seed = pending.pop(0)
            running.append(subprocess.Popen(
                [AUDIT, "record", "--name", f"sweep-lr{lr}", "--tag", "sweep", "--",
                 sys.executable, "train_sweep.py", "--lr", lr, "--dummy", dummy,
                 "--seed", seed], cwd=root, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE))
        for proc in list(running):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                assert proc.returncode == 0, err
                if proc.stderr:
                    proc.stderr.close()
                running.remove(proc)
        time.sleep(0.2)
    out = audit("list", "--json", "--limit", "0", cwd=root)
    runs = json.loads(out.stdout)
    assert len(runs) == len(LRS) * len(DUMMIES) * len(SEEDS)
    return {"root": root, "store": root / ".auditor", "runs": runs}


@pytest.fixture(scope="module")
def url(sweep: dict[str, Any]) -> Iterator[str]:
    with serve(sweep["store"]) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def keep(page: Any, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("AUDITOR_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning")
           else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.problems = problems
    yield tab
    context.close()
    assert problems == [], problems  # CSP violations and script errors show up here


def wait_for(page: Any, selector: str, ok: Any, timeout: float = 90) -> str:
    """Poll an element's text from here (the page's CSP forbids Playwright's eval-based
    wait_for_function, as it should)."""
    deadline = time.monotonic() + timeout
    while True:
        text = page.text_content(selector) or ""
        if ok(text):
            return text
        assert time.monotonic() < deadline, f"{selector} stayed at {text!r}"
        page.wait_for_timeout(250)


def visible_keys(page: Any, section: str) -> list[str]:
    return page.eval_on_selector_all(
        f'#diff tbody[data-section="{section}"] tr',
        "rows => rows.filter(r => r.offsetParent !== null)"
        ".map(r => r.querySelector('td.key').textContent)")


def test_table_filter_sort_select_compare(page: Any, url: str, shots: Path) -> None:
    page.goto(url + "/")
    assert page.text_content("#count") == "24 of 24 runs"
    page.fill("#where", "params.lr >= 0.03")
    page.click("#apply")
    page.wait_for_selector("text=12 of 24 runs")
    page.click('a.sort[data-col="metrics.loss"]')
    page.wait_for_url("**sort=metrics.loss**")
    losses = [float(t) for t in page.eval_on_selector_all(
        'td[data-col="metrics.loss"]', "cells => cells.map(c => c.textContent)")]
    assert losses == sorted(losses) and len(losses) == 12
    keep(page, shots, "runs-table")
    # runs of dummy = a sorted by seed then lr (four lrs a seed): rows 0, 1 and 4 are
    # seed 1 at the two smallest lrs and seed 2 at the smallest, so lr and seed differ
    page.fill("#where", "params.dummy = a")
    page.fill("#sort", "params.seed,params.lr")
    page.click("#apply")
    page.wait_for_selector("text=12 of 24 runs")
    boxes = page.query_selector_all('input[name="run"]')
    for i in (0, 1, 4):
        boxes[i].check()
    assert page.text_content("#compare") == "compare 3"
    page.click("#compare")
    page.wait_for_selector("#diff")
    assert visible_keys(page, "params") == ["lr"]  # dummy is the same: hidden
    assert "seed" in visible_keys(page, "seeds")
    assert "torch_num_threads" not in visible_keys(page, "threads")
    page.click("#show-all")
    assert "dummy" in visible_keys(page, "params")
    assert "torch" in visible_keys(page, "packages")
    page.click("#show-all")
    assert visible_keys(page, "packages") == []
    # seed 1 and seed 2 at the smallest lr differ only in seed: one band, and the other run
    assert page.get_attribute("#curves", "data-mode") == "grouped"
    assert page.get_attribute("#curves", "data-series") == "2"
    page.uncheck("#group-seeds")
    assert page.get_attribute("#curves", "data-series") == "3"
    assert int(page.get_attribute("#curves", "data-points") or 0) == 3 * 30
    assert page.text_content("#importance-message") is not None  # 3 runs: too few
    keep(page, shots, "compare-3")


def check_importance(page: Any) -> None:
    order = (page.get_attribute("#importance", "data-order") or "").split(",")
    assert order[0] == "lr" and "dummy" in order
    assert page.text_content('#importance-table tr[data-param="lr"] td.verdict') == \
        "stands out of seed noise"
    assert page.text_content('#importance-table tr[data-param="dummy"] td.verdict') == \
        "inside seed noise"
    assert "Seed noise: σ =" in (page.text_content("#noise") or "")
    axes = page.get_attribute("#parallel", "data-axes")
    assert axes == "dummy,lr"  # the seed and every constant param left out


def test_importance_ranks_lr_first(page: Any, url: str, sweep: dict[str, Any],
                                   shots: Path) -> None:
    ids = ",".join(r["id"] for r in sweep["runs"])
    page.goto(url + f"/compare?runs={ids}&metric=loss")
    page.wait_for_selector("#importance canvas")
    check_importance(page)
    assert page.get_attribute("#curves", "data-series") == "8"  # 4 lrs x 2 dummies, 3 seeds each
    keep(page, shots, "compare")


def test_compare_and_importance_of_all_filtered_runs_in_one_click(
        page: Any, url: str, shots: Path) -> None:
    page.goto(url + "/?where=params.lr+>%3D+0.01&metric=loss")
    assert page.text_content("#count") == "18 of 24 runs"
    assert "over 18 comparable run(s)" in (page.text_content("#best") or "")
    keep(page, shots, "runs-best")
    page.click("#compare-filtered")
    page.wait_for_selector("#importance canvas")
    assert page.text_content("#where-shown") == "params.lr >= 0.01"
    assert (page.text_content("#scope") or "").startswith(
        "Computed over 18 comparable run(s) (train_sweep.py at commit ")
    assert page.get_attribute("#curves", "data-series") == "6"  # grouped: 3 seeds a setting
    best = page.text_content("#best") or ""
    assert best.startswith("best setting dummy=") and ", lr=" in best and " ± " in best
    check_importance(page)
    keep(page, shots, "compare-filtered")
    page.locator("#importance").scroll_into_view_if_needed()
    keep(page, shots, "importance")


def test_static_export_opens_offline(page: Any, sweep: dict[str, Any], shots: Path,
                                     tmp_path: Path) -> None:
    ids = [r["id"] for r in sweep["runs"]]
    out = tmp_path / "comparison.html"
    done = audit("compare", *ids, "--html", str(out), "--metric", "loss", cwd=sweep["root"])
    assert done.returncode == 0, done.stderr
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri())
    page.wait_for_selector("#importance canvas")
    check_importance(page)
    assert visible_keys(page, "params") == ["dummy", "lr"]
    assert requests == [out.as_uri()]  # nothing fetched: one self-contained file
    keep(page, shots, "static-export")


def test_live_run_shows_new_points(page: Any, url: str, sweep: dict[str, Any],
                                   shots: Path) -> None:
    root = sweep["root"]
    proc = subprocess.Popen(
        [AUDIT, "record", "--name", "live", "--", sys.executable, "train_sweep.py",
         "--steps", "120", "--sleep", "0.5"], cwd=root, env={**os.environ, **GIT_ENV},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # capture before training: slow on a busy host
        live: list[dict[str, Any]] = []
        while not live:
            assert time.monotonic() < deadline, "the live run never showed up as running"
            out = audit("list", "--json", "--where", "status = running", cwd=root)
            live = json.loads(out.stdout or "[]") if out.returncode == 0 else []
            time.sleep(0.5)
        page.goto(url + f"/runs/{live[0]['id']}")
        assert page.text_content("#status") == "running"
        first = wait_for(page, "#points", lambda t: int(t) > 0)
        wait_for(page, "#points", lambda t: int(t) > int(first))  # a new point, no reload
        keep(page, shots, "live-run")
        wait_for(page, "#status", lambda t: t == "finished", timeout=180)
        assert int(page.text_content("#points") or 0) == 120
    finally:
        proc.wait(timeout=180)
