"""Issue 18, item 7: the store stays out of git (`.auditor/.gitignore`), a tree mismatch
names the paths that differ, and `audit checkout` into a location it cannot fill leaves
nothing behind (real git, real tmpfs mounts in a private mount namespace)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import AUDIT, audit, commit_repo, git

SCRIPT = "import json\nprint(json.dumps({'step': 0, 'loss': 1.0}))\n"


def _record(repo: Path) -> str:
    res = audit("--json", "record", "--", sys.executable, "train.py", cwd=repo)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def test_a_new_store_ignores_itself_so_git_add_all_leaves_it_out(tmp_path: Path) -> None:
    repo = commit_repo(tmp_path / "repo", {"train.py": SCRIPT})  # no .gitignore of ours
    _record(repo)
    assert (repo / ".auditor" / ".gitignore").read_text().splitlines()[-1] == "*"
    git(repo, "add", "-A")
    staged = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True).stdout
    assert ".auditor" not in staged
    _record(repo)  # the next run's tree is clean and checks out whole
    res = audit("checkout", _record(repo), str(tmp_path / "out"), cwd=repo)
    assert res.returncode == 0, res.stderr


def test_a_committed_store_is_named_in_the_tree_mismatch(tmp_path: Path) -> None:
    repo = commit_repo(tmp_path / "repo", {"train.py": SCRIPT})
    _record(repo)
    (repo / ".auditor" / ".gitignore").unlink()  # a store made before it was written
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "oops: the store")
    run_id = _record(repo)
    res = audit("checkout", run_id, str(tmp_path / "out"), cwd=repo)
    assert res.returncode == 3, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert "rebuilt source tree does not match the record" in line
    assert "lie where recording left files out (the store?): .auditor/" in line
    assert ".auditor/store.db" in line and "git rm -r --cached" in line
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_checkout_into_a_full_or_read_only_location_leaves_nothing(tmp_path: Path) -> None:
    assert shutil.which("unshare"), "util-linux unshare is needed (apt-get install util-linux)"
    repo = commit_repo(tmp_path / "repo", {"train.py": SCRIPT,
                                           "big.txt": "x" * 300_000 + "\n"})
    run_id = _record(repo)
    small, ro = tmp_path / "small", tmp_path / "ro"
    small.mkdir()
    ro.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {small} && mount -t tmpfs -o ro tmpfs {ro}"
              f" && {AUDIT} checkout {run_id} {small}/new/dest; echo full=$?"
              f"; ls -A {small}; {AUDIT} checkout {run_id} {ro}/dest; echo ro=$?; ls -A {ro}")
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          script], cwd=repo, capture_output=True, text=True, timeout=120,
                         check=False)
    out = res.stdout.split()
    assert out == ["full=2", "ro=2"], (res.stdout, res.stderr)  # both folders left empty
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: cannot check out into {small}/new/dest: ")
    assert "No space left on device" in errors[0] and "nothing was left there" in errors[0]
    # a read-only place is refused before the store opens (the safe writer's folder probe)
    assert errors[1].startswith(f"error: {ro}/dest: cannot write: "), errors[1]
    assert "Read-only file system" in errors[1]
