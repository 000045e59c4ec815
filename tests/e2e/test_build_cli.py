"""Issue 3 end to end: record the torch fixture, `audit build` it with the torch wheel from a
wheelhouse, import torch in the image, and check the image's package set equals the lock."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from auditor.core.lockfile import parse_requirements_lock
from tests.conftest import audit

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_recorded_run_builds_and_image_matches_lock(train_repo: Path, tmp_path: Path,
                                                    docker_client: Any,
                                                    base_image: tuple[str, str],
                                                    ca_bundle: Path,
                                                    torch_wheelhouse: Path) -> None:
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("--json", "record", "--", sys.executable, "train_mlp.py", "--epochs", "1",
                cwd=train_repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    flags = ["--base-image", base_image[0], "--wheelhouse", str(torch_wheelhouse),
             "--ca-bundle", str(ca_bundle)]
    printed = audit("build", run_id, *flags, "--print", cwd=train_repo, env=env)
    assert printed.returncode == 0 and "--require-hashes" in printed.stdout
    assert "USER auditor" in printed.stdout and "org.auditor.run-id" in printed.stdout
    res = audit("--json", "build", run_id, *flags, cwd=train_repo, env=env, timeout=900)
    assert res.returncode == 0, res.stderr
    built = json.loads(res.stdout)
    out = docker_client.containers.run(built["image_id"], ["python", "-c",
                                       "import torch; print(torch.__version__)"],
                                       network_mode="none", remove=True)
    assert out.decode().strip() == "2.13.0+cpu"
    lock = parse_requirements_lock((train_repo / "requirements.lock").read_text())
    locked = {p.name: p.version for p in lock.packages}
    installed = {k: v for k, v in built["packages"].items() if k not in ("pip",)}
    assert installed == locked
    again = audit("--json", "build", run_id, *flags, cwd=train_repo, env=env)
    assert json.loads(again.stdout)["cached"] is True
