"""What a training prints cannot stall `audit record` or reach the terminal raw: metric keys
are capped per line and per run (reported once), a metrics line cut short is malformed
(exit 2 after the run is stored), and control characters in names are shown escaped by
`audit list` (fast and full path) and `audit show`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from auditor.record.wrap import MAX_KEYS_PER_LINE, MAX_KEYS_PER_RUN
from tests.conftest import audit
from tests.integration.test_fast_list import run_list

PY = sys.executable


def _show(repo: Path, store: Path, run_id: str) -> dict[str, object]:
    res = audit("--json", "show", run_id, cwd=repo, env={"AUDITOR_STORE": str(store)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _recorded(res: object) -> str:
    return json.loads(res.stdout.strip().splitlines()[-1])["id"]  # type: ignore[attr-defined, no-any-return]


@pytest.mark.slow
def test_a_line_of_a_million_metric_keys_is_capped(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = ("import json\n"
              "print(json.dumps({'step': 0, **{f'k{i}': i for i in range(10**6)}}))\n"
              "print(json.dumps({'step': 1, 'k0': 1.5}))\n")
    repo = make_repo({"m.py": script})
    store = tmp_path / "s"
    # correctness, not a benchmark: it was busy for more than 300 s (bench/bench_metric_caps.py)
    res = audit("--json", "record", "-q", "--", PY, "m.py", cwd=repo,
                env={"AUDITOR_STORE": str(store)}, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = _show(repo, store, _recorded(res))
    final = rec["metrics"]["final"]  # type: ignore[index]
    assert len(final) == MAX_KEYS_PER_LINE and final["k0"] == 1.5
    assert rec["not_captured"]["metrics.cap.line"].startswith(  # type: ignore[index]
        f"stdout line 1 holds more than {MAX_KEYS_PER_LINE} metric keys")
    assert res.stderr.count("holds more than") == 1  # reported once


def test_distinct_metric_keys_per_run_are_capped(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines = MAX_KEYS_PER_RUN // MAX_KEYS_PER_LINE + 3
    script = ("import json\n"
              f"for line in range({lines}):\n"
              f"    keys = range({MAX_KEYS_PER_LINE})\n"
              "    print(json.dumps({f'k{line}_{i}': i for i in keys}))\n"
              "print(json.dumps({'k0_0': 7}))\n")
    repo = make_repo({"m.py": script})
    store = tmp_path / "s"
    res = audit("--json", "record", "--", PY, "m.py", cwd=repo,
                env={"AUDITOR_STORE": str(store)}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = _show(repo, store, _recorded(res))
    final = rec["metrics"]["final"]  # type: ignore[index]
    assert len(final) == MAX_KEYS_PER_RUN and final["k0_0"] == 7  # known keys keep going
    assert "metrics.cap.run" in rec["not_captured"]  # type: ignore[operator]
    assert res.stderr.count(f"more than {MAX_KEYS_PER_RUN} distinct metric keys") == 1


@pytest.mark.parametrize("last", ["print('{\"step\": 1, \"loss\": ')",
                                  "import sys; sys.stdout.write('{\"step\": 1, \"loss\": ')"],
                         ids=["with-newline", "no-newline-at-end"])
def test_truncated_metrics_line_fails_after_storing_the_run(make_repo, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            last: str) -> None:
    repo = make_repo({"m.py": "print('{\"step\": 0, \"loss\": 0.5}')\n" + last + "\n"})
    store = tmp_path / "s"
    res = audit("record", "--", PY, "m.py", cwd=repo, env={"AUDITOR_STORE": str(store)})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: stdout line 2 is a metrics line but not valid JSON"), lines
    listed = json.loads(audit("--json", "list", cwd=repo,
                              env={"AUDITOR_STORE": str(store)}).stdout)
    assert [r["final_metrics"] for r in listed] == [{"loss": 0.5}]  # stored with the rest
    lenient = audit("record", "--lenient-metrics", "--", PY, "m.py", cwd=repo,
                    env={"AUDITOR_STORE": str(store)})
    assert lenient.returncode == 0 and "warning: stdout line 2" in lenient.stderr


ESC = "\x1b[31m"
HOSTILE = ("import json\n"
           "print(json.dumps({'step': 0, '\\x1b[2Jloss\\u202e': 0.5}))\n")


def test_control_characters_in_names_are_escaped(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo({"m.py": HOSTILE})
    store = tmp_path / "s"
    env = {"AUDITOR_STORE": str(store)}
    res = audit("--json", "record", "--name", f"{ESC}red\x07[bold]x[/]", "--tag", f"t{ESC}",
                "--", PY, "m.py", f"--lr{ESC}", "0.1", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = _recorded(res)
    wide = {"COLUMNS": "200"}  # the table is cut to the width; never rely on a leaked one
    fast = run_list(str(store), "list", env=wide)
    full = run_list(str(store), "list", full=True, env=wide)
    assert fast[3].startswith("fast") and full[3].startswith("full")
    for code, out, _err, _path in (fast, full):
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "\\x1b[31mred\\x07[bold]x[/]" in out  # visible, markup literal
        assert "\\x1b[2Jloss\\u202e=0.5" in out
    shown = audit("show", run_id, cwd=repo, env={**env, **wide})
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    for text in ("\\x1b[31mred\\x07[bold]x[/]", "t\\x1b[31m", "lr\\x1b[31m",
                 "\\x1b[2Jloss\\u202e"):
        assert text in shown.stdout, text
