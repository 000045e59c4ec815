"""``kill -9`` of ``audit verify`` mid-rerun (issue 16, item 14): the next command that
opens the store removes the dead verify's container and scratch folder and marks its rerun
``crashed``; a live verify running beside it is not touched."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from auditor.store import open_store
from tests.conftest import AUDIT, FIXTURES, GIT_ENV, audit, git
from tests.e2e.test_hostile_rerun import PY, SLEEPER, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def _sleeper_run(repo: Path, env: dict[str, str], script: str) -> str:
    (repo / script).write_text(SLEEPER)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", script)
    res = audit("--json", "record", "--", PY, script, "unused", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def _status(store: Path, run_id: str) -> list[str]:
    opened = open_store(str(store))
    try:
        return [opened.get_record(i).identity.status
                for i in opened.run_ids_reproducing(run_id)]
    finally:
        opened.close()


def test_the_next_command_cleans_what_a_killed_verify_left_and_spares_a_live_one(
    tmp_path: Path, base_image: tuple[str, str], ca_bundle: Path, torch_wheelhouse: Path,
    docker_client: Any,
) -> None:
    token = uuid.uuid4().hex[:12]
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copy(FIXTURES / "train" / "requirements.lock", repo)
    store = tmp_path / "store"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_BASE_IMAGE": base_image[0],
           "AUDITOR_WHEELHOUSE": str(torch_wheelhouse), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    doomed = _sleeper_run(repo, env, f"doomed_{token}.py")
    live = _sleeper_run(repo, env, f"live_{token}.py")

    def containers(run_id: str) -> list[Any]:
        return list(docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"auditor.run={run_id}"}))

    def start(run_id: str, script: str) -> tuple[subprocess.Popen[str], Path]:
        proc = subprocess.Popen([AUDIT, "verify", run_id, "--backend", "docker"], cwd=repo,
                                env={**os.environ, **GIT_ENV, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        pattern = f"{tempfile.gettempdir()}/auditor-rerun-*/tree/{script}"
        scratch = Path(_wait_for(lambda: glob.glob(pattern), 600)[0]).parent.parent
        _wait_for(lambda: [c for c in containers(run_id) if c.status == "running"], 180)
        return proc, scratch

    killed, dead_scratch = start(doomed, f"doomed_{token}.py")
    survivor: subprocess.Popen[str] | None = None
    try:
        survivor, live_scratch = start(live, f"live_{token}.py")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
        # what kill -9 leaves: the container, the scratch folder, a `running` rerun
        assert [c.status for c in containers(doomed)] == ["running"]
        assert dead_scratch.exists()
        assert _status(store, doomed) == ["running"]

        res = audit("show", doomed, cwd=repo, env=env)  # the next command
        assert res.returncode == 0, res.stderr
        assert "cleaned up after a dead verify" in res.stderr, res.stderr
        assert containers(doomed) == []
        assert not dead_scratch.exists(), dead_scratch
        assert _status(store, doomed) == ["crashed"]
        # the live verify beside it: its container, folder and rerun untouched
        assert survivor.poll() is None
        assert [c.status for c in containers(live)] == ["running"]
        assert live_scratch.exists()
        assert _status(store, live) == ["running"]
    finally:  # also when starting the live one failed: no process or pipe left behind
        for proc in (killed, survivor):
            if proc is not None:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=120)
    assert survivor is not None
    assert survivor.returncode == 130  # stopped by this test, and cleaned by itself
    assert containers(live) == [] and not live_scratch.exists()
    assert _status(store, live) == ["failed"]
