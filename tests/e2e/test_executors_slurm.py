"""``audit verify --all --executor slurm`` on a real one-node Slurm (issue 21 item 4):
Debian's ``slurm-wlm`` and ``munge``, started by this module on this machine
(``tests/engines.slurm_cluster``: munged, slurmctld and slurmd as root in a private folder,
free ports). The node declares one ``gpu:a100`` GRES backed by ``/dev/null`` (this machine
has no GPU: the only stand-in), and ``nvidia-smi`` on the jobs' PATH prints a real A100
report only where Slurm allotted that GPU (``CUDA_VISIBLE_DEVICES`` set), so a GPU run
verifies only under ``--gres=gpu:a100:1``.

Every verification is real: ``audit verify RUN --batch B`` in a submitit array task, a
venv rerun in bubblewrap (backend ``venv``), results in a SQLite store on the shared disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import audit, commit_repo, skip_or_fail
from tests.e2e.test_executors_ray import T4_XML, TRAIN
from tests.e2e.test_hostile_rerun import PY, SIX_LOCK
from tests.engines import A100_XML, slurm_cluster, slurm_missing

pytestmark = [pytest.mark.slow]


def _smi(folder: Path, xml: Path, only_when_allotted: bool) -> Path:
    folder.mkdir(parents=True)
    guard = 'if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then echo "No devices were found"; ' \
            "exit 6; fi\n" if only_when_allotted else ""
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{guard}exec cat {xml}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    why = slurm_missing()
    if why:
        skip_or_fail(why)
    folder = Path(tempfile.mkdtemp(prefix="auditor-test-slurm-"))
    os.chmod(folder, 0o755)
    repo = commit_repo(folder / "proj", {"train.py": TRAIN, "requirements.lock": SIX_LOCK,
                                         ".gitignore": "outputs/\n"})
    store = folder / "store"
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_CA_BUNDLE": ca, "NO_COLOR": "1"}
    always_a100 = _smi(folder / "a100", A100_XML, only_when_allotted=False)
    always_t4 = _smi(folder / "t4", T4_XML, only_when_allotted=False)
    runs = {"cpu0": _record(repo, env, "0"), "cpu1": _record(repo, env, "1"),
            "gpu": _record(repo, {**env, "PATH": f"{always_a100}:{os.environ['PATH']}"}, "7"),
            "t4": _record(repo, {**env, "PATH": f"{always_t4}:{os.environ['PATH']}"}, "5",
                          tag="t4")}
    allotted = _smi(folder / "node", A100_XML, only_when_allotted=True)
    with slurm_cluster() as slurm:
        jobs_env = {**env, **slurm.env, "PATH": f"{allotted}:{os.environ['PATH']}"}
        yield {"repo": repo, "env": jobs_env, "runs": runs, "slurm": slurm}
    shutil.rmtree(folder, ignore_errors=True)


def _record(repo: Path, env: dict[str, str], *args: str, tag: str = "batch") -> str:
    res = audit("--json", "record", "--tag", tag, "--", PY, "train.py", *args, cwd=repo,
                env=env)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def _verify(world: dict[str, Any], *args: str, env: dict[str, str] | None = None
            ) -> tuple[int, dict[str, Any], str]:
    res = audit("--json", "verify", *args, "--executor", "slurm", "--backend", "venv",
                cwd=world["repo"], env=env or world["env"], timeout=900)
    shown = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, shown, res.stderr


def test_a_job_array_verifies_the_batch_with_gres_and_never_twice(
        world: dict[str, Any]) -> None:
    runs = world["runs"]
    ids = [runs["cpu0"], runs["cpu1"], runs["gpu"]]
    code, shown, err = _verify(world, "--all", "--tag", "batch", "--batch", "slurm-1")
    jobs = {j["run"]: j for j in shown.get("jobs", [])}
    assert set(jobs) == set(ids), (shown, err)
    for run_id in ids:
        assert jobs[run_id]["verdict"] == "reproduced", (jobs[run_id], err)
        assert jobs[run_id]["node"] == "localhost"
    assert code == 0
    assert "--gres=gpu:a100:1" in err  # the GPU run's array asked for the recorded GPU
    res = audit("--json", "batch", "show", "slurm-1", cwd=world["repo"], env=world["env"])
    items = {i["run_id"]: i for i in json.loads(res.stdout)["items"]}
    for run_id in ids:
        assert items[run_id]["state"] == "done" and items[run_id]["certificate_sha256"]
    # again: every run is skipped, nothing reaches Slurm
    code, again, err = _verify(world, "--all", "--tag", "batch", "--batch", "slurm-1")
    assert code == 0 and again["jobs"] == [] and set(ids) <= set(again["skipped"]), again


def test_a_gpu_no_node_has_is_refused_by_slurm_exit_3_naming_it(world: dict[str, Any]) -> None:
    code, shown, _err = _verify(world, "--all", "--tag", "t4", "--batch", "slurm-t4")
    (job,) = shown["jobs"]
    assert code == 3 and job["exit"] == 3
    assert "gpu:t4:1" in job["message"] and "Tesla T4" in job["message"], job


def test_an_unreachable_controller_is_one_line_exit_3(world: dict[str, Any],
                                                      tmp_path: Path) -> None:
    conf = Path(world["slurm"].env["SLURM_CONF"]).read_text()
    dead = tmp_path / "slurm.conf"
    dead.write_text(conf.replace("SlurmctldPort=", "SlurmctldPort=1#"))
    env = {**world["env"], "SLURM_CONF": str(dead)}
    res = audit("verify", world["runs"]["t4"], "--executor", "slurm", "--batch", "slurm-down",
                cwd=world["repo"], env=env, timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Slurm" in errors[0] and "Traceback" not in res.stderr
