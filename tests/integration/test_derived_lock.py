"""A run recorded without a project lockfile is rebuilt from a lock pip-compile derives
from its installed set: compiled once, stored content-addressed, reused by every later
`audit build` / `--print` / verify, shown by `audit show` (issue 10: it cost > 60 s per
call). The training interpreter is a real venv holding one real wheel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.env.lock_cache import cached_lock_ref
from auditor.store import open_store
from tests.conftest import audit
from tests.unit.test_lock import _wheel


@pytest.fixture
def derived_run(make_repo, tmp_path: Path) -> tuple[Path, dict[str, str], str]:  # type: ignore[no-untyped-def]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "auditor_canary", "1.0")
    venv = tmp_path / "trainenv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--disable-pip-version-check", "--find-links", str(wheels),
                    "auditor-canary==1.0"], check=True)  # from an index: not a local install
    repo = make_repo({"t.py": "import auditor_canary\nprint('{\"step\": 0, \"loss\": 1.0}')\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_WHEELHOUSE": str(wheels),
           "PIP_NO_INDEX": "1", "AUDITOR_BASE_IMAGE": "python:3.11-slim"}
    made = audit("--json", "record", "--", str(venv / "bin" / "python"), "t.py", cwd=repo,
                 env=env)
    assert made.returncode == 0, made.stderr
    return repo, env, json.loads(made.stdout.strip().splitlines()[-1])["id"]


@pytest.mark.slow
def test_a_derived_lock_is_compiled_once_and_reused(derived_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, env, run_id = derived_run
    shown = audit("show", run_id, cwd=repo, env=env)
    assert "derived" in shown.stdout and "compiled lock" not in shown.stdout
    first = audit("build", run_id, "--print", "--backend", "venv", cwd=repo, env=env)
    assert first.returncode == 0, first.stderr
    store = open_store(env["AUDITOR_STORE"], create=False)
    ref = cached_lock_ref(store, store.get_record(run_id))
    assert ref is not None and ref.packages == 1
    assert "auditor-canary==1.0" in store.blobs.read_bytes(ref.sha256).decode()
    assert "compiled lock            1 packages" in audit("show", run_id, cwd=repo,
                                                          env=env).stdout
    # pip-compile made unusable: the second call must not run it
    stub = tmp_path / "stub" / "piptools"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "__main__.py").write_text("raise SystemExit('pip-compile must not run again')\n")
    again = audit("build", run_id, "--print", "--backend", "venv", cwd=repo,
                  env={**env, "PYTHONPATH": str(stub.parent)})
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    # a damaged cache entry is compiled again, never trusted
    damaged = store.blobs.path_for(ref.sha256)
    damaged.chmod(0o644)
    damaged.write_text("six==1.0\n")
    broken = audit("build", run_id, "--print", "--backend", "venv", cwd=repo,
                   env={**env, "PYTHONPATH": str(stub.parent)})
    assert broken.returncode != 0 and "pip-compile" in broken.stderr, broken.stderr
    healed = audit("build", run_id, "--print", "--backend", "venv", cwd=repo, env=env)
    assert healed.returncode == 0, healed.stderr
    assert healed.stdout == first.stdout
    store.close()
