"""`audit lock` from the command line: compile with pip-tools, lint, and drift of a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, audit, git

BAD = FIXTURES / "locks" / "pip" / "bad"


@pytest.mark.parametrize(("name", "words"), [
    ("unhashed.txt", "line 4"), ("loose.txt", "numpy"), ("editable.txt", "line"),
    ("vcs.txt", "line"), ("malformed.txt", "line")])
def test_lint_refuses_bad_locks_naming_the_line(tmp_path: Path, name: str, words: str) -> None:
    res = audit("lock", "--lint", str(BAD / name), cwd=tmp_path)
    assert res.returncode == 2, res.stdout
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:") and words in res.stderr


def test_lint_accepts_unhashed_only_when_allowed(tmp_path: Path) -> None:
    (tmp_path / "pins.txt").write_text("six==1.17.0\nidna==3.10\n")
    refused = audit("lock", "--lint", "pins.txt", cwd=tmp_path)
    assert refused.returncode == 2 and "--hash" in refused.stderr
    res = audit("lock", "--lint", "pins.txt", "--allow-unhashed", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 packages" in res.stdout
    # a lock that mixes hashed and unhashed lines stays refused: pip would fail on it
    mixed = audit("lock", "--lint", str(BAD / "unhashed.txt"), "--allow-unhashed", cwd=tmp_path)
    assert mixed.returncode == 2 and "line 4" in mixed.stderr


@pytest.mark.slow
def test_lock_compiles_a_hashed_lock_with_pip_tools(tmp_path: Path) -> None:
    (tmp_path / "requirements.in").write_text("six==1.17.0\n")
    res = audit("lock", "-o", "requirements.lock", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "requirements.lock").read_text()
    assert "six==1.17.0" in text and "--hash=sha256:" in text
    assert audit("lock", "--lint", "requirements.lock", cwd=tmp_path).returncode == 0


def test_check_reports_drift_recorded_with_the_run(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    locked = (FIXTURES / "locks" / "pip" / "small.requirements.lock").read_text()
    repo = make_repo({"requirements.lock": locked, "t.py": "pass\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "s")}
    res = audit("--json", "record", "--", sys.executable, "t.py", cwd=repo, env=env)
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    check = audit("lock", "--check", run_id, cwd=repo, env=env)
    assert check.returncode == 1  # this interpreter has far more than `six` installed
    assert "drift:" in check.stdout and "requirements.lock (project" in check.stdout
    git(repo, "status")


@pytest.mark.parametrize("line", ["a." * 2_000_000, "x" + " " * 4_000_000 + "y",
                                  "six==1.17.0 --hash=sha256:" + "a" * 4_000_000])
def test_lint_of_a_huge_line_is_fast_and_quotes_at_most_200_characters(
    tmp_path: Path, line: str
) -> None:
    # shlex and two regexes were quadratic here: 40k characters took 40 s, 20 MB never ended
    (tmp_path / "huge.lock").write_text(line + "\n")
    res = audit("lock", "--lint", "huge.lock", cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr[:300]
    assert res.stderr.startswith("error: huge.lock line 1:") and res.stderr.count("\n") == 1
    quoted = max((part for part in res.stderr.split("`")[1::2]), key=len, default="")
    assert len(quoted) <= 200 and len(res.stderr) < 600, res.stderr[:700]


def test_lint_refuses_binary_files_and_folders_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.lock").write_bytes(b"caf\xe9==1.0\n")
    (tmp_path / "folder").mkdir()
    for target, words in (("latin1.lock", "not UTF-8"), ("folder", "is a folder"),
                          ("/dev/zero", "not a regular file")):
        res = audit("lock", "--lint", target, cwd=tmp_path)
        assert res.returncode == 2, (target, res.stderr)
        assert res.stderr.startswith("error:") and words in res.stderr, res.stderr
        assert "internal error" not in res.stderr and res.stderr.count("\n") == 1


def test_a_garbage_project_lock_is_flagged_at_record_and_fails_the_check(
    make_repo, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    repo = make_repo({"requirements.lock": "this is { not a lockfile\n", "t.py": "pass\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "s")}
    res = audit("--json", "record", "--", sys.executable, "t.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    assert "warning: project lockfile requirements.lock is not a valid lock" in res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    check = audit("lock", "--check", run_id, cwd=repo, env=env)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "is not a valid lock" in check.stderr and check.stderr.count("\n") == 1


def test_base_image_release_must_be_a_codename(tmp_path: Path) -> None:
    res = audit("base-image", "build", "--release", "../x", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: invalid Debian release '../x'")
    assert res.stderr.count("\n") == 1
