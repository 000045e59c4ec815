"""The HTML report in a real headless browser (Debian's chromium): it loads without console
messages, its SVG plots render, hostile names stay text, and a screenshot is kept.

Without chromium the test is skipped locally but FAILS when ``CI`` is set (``.ci/run``
installs it). The screenshot is left at ``<tmp>/report.png``; set
``AUDITOR_SCREENSHOT_DIR`` to keep a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from auditor.certify.verdict import VerifyResult
from auditor.report.html import render_html

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
BANNER_RED = np.array([0xB3, 0x26, 0x1E]) / 255  # .failed
ORIGINAL_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # plots.ORIGINAL_COLOR


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI must run the browser test "
                    "(apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def run_chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = VerifyResult.model_validate_json((FIXTURES / "not_reproduced.json").read_text())
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(result), encoding="utf-8")
    return path


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_dom_has_plots_and_escaped_names_and_no_console_messages(page: Path,
                                                                 tmp_path: Path) -> None:
    done = run_chromium(tmp_path, page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert console_messages(done.stderr) == []
    assert len(re.findall(r"<svg\b", dom)) == 5
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "run note: {{ 7*7 }}" in dom
    assert "<img" not in dom


def test_screenshot_shows_the_banner_and_the_plots(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,2000")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    if keep := os.environ.get("AUDITOR_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(keep) / "report.png")
    assert shot.stat().st_size > 30_000
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05  # not a blank page
    assert near(pixels[:140], BANNER_RED) > 20_000  # the verdict banner is red
    assert near(pixels, ORIGINAL_BLUE) > 500  # the original curves were drawn


def near(pixels: np.ndarray, colour: np.ndarray, tolerance: float = 0.06) -> int:
    """How many pixels are within ``tolerance`` of ``colour`` in every channel."""
    return int((np.abs(pixels - colour) <= tolerance).all(axis=-1).sum())
