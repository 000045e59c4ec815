"""A project with no lockfile, verified with the venv backend (no docker engine needed).

The record derives a lock from the training interpreter's installed packages (here a small
virtualenv with `six`); `audit verify --backend venv` hashes it with pip-tools, builds a
virtualenv from it with `--require-hashes`, reruns, and certifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import audit
from tests.e2e.conftest import six_venv

pytestmark = [pytest.mark.slow]
SCRIPT = ("import json, random, six\n"
          "random.seed(7)\n"
          "for step in range(3):\n"
          "    print(json.dumps({'step': step, 'x': random.random(), 'six': six.__version__ == "
          "'1.17.0'}))\n")


def test_derived_lock_verifies_with_the_venv_backend(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    python = six_venv(tmp_path / "trainenv")
    repo = make_repo({"t.py": SCRIPT})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("--json", "record", "--", str(python), "t.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    shown = json.loads(audit("--json", "show", run_id, cwd=repo, env=env).stdout)
    lock = shown["environment"]["python"]["lock"]
    assert lock["origin"] == "derived" and shown["environment"]["python"]["packages"]["six"]
    res = audit("--json", "verify", run_id, "--backend", "venv", cwd=repo, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)["results"][0]
    assert result["backend"] == "venv" and result["verdict"]["level"] == "reproduced-bitwise"
    assert any("venv backend" in n for n in result["verdict"]["notes"])  # weaker isolation said
