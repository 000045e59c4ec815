"""`audit compare RUN RUN [RUN…] --html FILE`: one self-contained, escaped file."""

from __future__ import annotations

import base64
import hashlib
import html as htmllib
import json
import re
from pathlib import Path

from auditor.store import SqlStore
from tests.conftest import audit
from tests.uifactory import put_run, sweep


def test_export_is_self_contained_and_escaped(tmp_path: Path, store: SqlStore) -> None:
    runs = sweep(store, seeds=2)
    hostile = put_run(store, name="</script><script>alert(1)</script>",
                      params={"lr": 0.5, "dummy": "{{ 7*7 }}"}, final={"accuracy": 0.2},
                      minute=50)
    # the whole sweep: with a handful of runs the hostile outlier alone decides the ranking
    ids = [r.identity.id for r in runs] + [hostile.identity.id]
    out = tmp_path / "cmp.html"
    done = audit("--store", str(tmp_path / "store"), "compare", *ids, "--html", str(out),
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "<script src=" not in html
    # the only link is the inline favicon: nothing is fetched from anywhere
    assert re.findall(r"<link[^>]*>", html) == ['<link rel="icon" href="data:,">']
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None
    policy = htmllib.unescape(csp.group(1))  # the attribute is HTML-escaped; browsers unescape it
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 2
    for body in scripts:  # each inline script is allowed by its own hash, nothing else is
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "<script>alert(1)" not in html and "{{ 7*7 }}" in html and ">49<" not in html
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert data is not None
    view = json.loads(data.group(1))
    assert view["runs"][-1]["name"] == hostile.identity.name
    assert next(p["name"] for p in view["importance"]["params"]) == "lr"


def test_runs_are_a_table_and_as_rerun_gives_the_verdict(tmp_path: Path,
                                                         store: SqlStore) -> None:
    runs = sweep(store, lrs=(0.1,), dummies=("a",), seeds=3)
    loc = str(tmp_path / "store")
    a, b, c = (r.identity.id for r in runs)
    two = audit("--store", loc, "compare", "--as-rerun", a, b, cwd=tmp_path)
    assert two.returncode in (0, 1) and "vs" in two.stdout
    three = audit("--store", loc, "compare", a, b, c, cwd=tmp_path)
    assert three.returncode == 0 and three.stdout.split()[:5] == [
        "id", "name", "verified", "seed", "accuracy"]
    bad = audit("--store", loc, "compare", a, b, "--html", str(tmp_path / "no" / "x.html"),
                cwd=tmp_path)
    assert bad.returncode == 2 and "folder does not exist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
