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
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.store import open_store
from tests.conftest import AUDIT, GIT_ENV, audit, commit_repo, skip_or_fail
from tests.e2e.test_executors_ray import T4_XML, TRAIN
from tests.e2e.test_hostile_rerun import PY, SIX_LOCK
from tests.engines import A100_XML, slurm_cluster, slurm_missing

pytestmark = [pytest.mark.slow]
NOISY = """\
import json, os
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.bin", "wb") as fh:
    fh.write(os.urandom(1024))  # never the same twice: not reproduced
print(json.dumps({"step": 0, "loss": 1.0}))
"""


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
    repo = commit_repo(folder / "proj", {"train.py": TRAIN, "noisy.py": NOISY,
                                         "requirements.lock": SIX_LOCK,
                                         ".gitignore": "outputs/\n"})
    store = folder / "store"
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_CA_BUNDLE": ca, "NO_COLOR": "1"}
    always_a100 = _smi(folder / "a100", A100_XML, only_when_allotted=False)
    always_t4 = _smi(folder / "t4", T4_XML, only_when_allotted=False)
    runs = {"cpu0": _record(repo, env, "0"), "cpu1": _record(repo, env, "1"),
            "gpu": _record(repo, {**env, "PATH": f"{always_a100}:{os.environ['PATH']}"}, "7"),
            "t4": _record(repo, {**env, "PATH": f"{always_t4}:{os.environ['PATH']}"}, "5",
                          tag="t4"),
            "slow": _record(repo, env, "9", "--slow", tag="requeue"),
            "halt": _record(repo, env, "8", "--slow", tag="requeue"),
            "noisy": _record(repo, env, script="noisy.py", tag="requeue")}
    allotted = _smi(folder / "node", A100_XML, only_when_allotted=True)
    with slurm_cluster() as slurm:
        jobs_env = {**env, **slurm.env, "PATH": f"{allotted}:{os.environ['PATH']}"}
        yield {"repo": repo, "env": jobs_env, "runs": runs, "slurm": slurm}
    shutil.rmtree(folder, ignore_errors=True)


def _record(repo: Path, env: dict[str, str], *args: str, tag: str = "batch",
            script: str = "train.py") -> str:
    res = audit("--json", "record", "--tag", tag, "--", PY, script, *args, cwd=repo, env=env)
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


def _slurm_task_running(conf: str, *words: str) -> tuple[int, str] | None:
    """A process whose command line has ``words``, below a task of our Slurm (its
    ``SLURM_CONF``): its pid and the task (``ARRAYJOB_TASK``)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if not all(w.encode() in argv for w in words):
                continue
            pid = up = int(cmdline.parent.name)
            while up > 1:
                env = dict(e.split(b"=", 1) for e in Path(f"/proc/{up}/environ").read_bytes()
                           .split(b"\0") if b"=" in e)
                if env.get(b"SLURM_CONF") == conf.encode() and b"SLURM_ARRAY_JOB_ID" in env:
                    return pid, (env[b"SLURM_ARRAY_JOB_ID"] + b"_"
                                 + env[b"SLURM_ARRAY_TASK_ID"]).decode()
                up = int(Path(f"/proc/{up}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _slurm_job(world: dict[str, Any], job_id: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                           text=True, env={**os.environ, **world["slurm"].env}, check=True)
    return dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)


def test_a_requeued_task_runs_again_and_certifies_once_a_verdict_is_never_requeued(
        world: dict[str, Any]) -> None:
    """``scontrol requeue`` (what a preemption with ``PreemptMode=REQUEUE`` does: SIGTERM,
    then SIGKILL, then the task again) while the slow run's rerun trains: Slurm starts the
    task again, the second attempt claims the run, and the store holds one certificate.
    ``scancel`` of another task while it trains: could-not-verify, recorded, not started
    again. The not-reproduced run's task (exit 1) ends once."""
    runs, conf = world["runs"], world["slurm"].env["SLURM_CONF"]
    slurm_env = {**os.environ, **world["slurm"].env}
    proc = subprocess.Popen(
        [AUDIT, "--json", "verify", "--all", "--tag", "requeue", "--batch", "slurm-rq",
         "--executor", "slurm", "--backend", "venv"], cwd=world["repo"],
        env={**os.environ, **GIT_ENV, **world["env"]}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        first_training, task = _when_training(proc, conf, "9")
        subprocess.run(["scontrol", "requeue", task], env=slurm_env, check=True)
        _, halted = _when_training(proc, conf, "8")
        subprocess.run(["scancel", halted], env=slurm_env, check=True)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    gone = Path(f"/proc/{first_training}/stat")
    assert not gone.exists(), (gone.read_text(), out, err)  # the first attempt was stopped
    jobs = {j["run"]: j for j in json.loads(out)["jobs"]}
    assert jobs[runs["slow"]]["recorded_verdict"].startswith("reproduced"), (jobs, err)
    assert jobs[runs["slow"]]["attempts"] == 2, jobs  # the requeued task's own answer
    assert jobs[runs["noisy"]]["exit"] == 1 and jobs[runs["noisy"]]["attempts"] == 1, jobs
    assert jobs[runs["halt"]]["verdict"] == "could-not-verify", jobs
    assert proc.returncode == 3, (jobs, err)  # the worst, in the documented codes
    slow = _slurm_job(world, task)
    assert slow["Restarts"] == "1" and slow["JobState"] == "COMPLETED", slow
    tasks = [_slurm_job(world, f"{slow['ArrayJobId']}_{i}") for i in (0, 1, 2)]
    (noisy,) = [t for t in tasks if t["JobId"] != slow["JobId"] and
                f"{t['ArrayJobId']}_{t['ArrayTaskId']}" != halted]
    assert noisy["Restarts"] == "0" and noisy["JobState"] == "COMPLETED", noisy
    cancelled = _slurm_job(world, halted)
    assert cancelled["Restarts"] == "0" and cancelled["JobState"] == "CANCELLED", cancelled
    store = open_store(world["env"]["AUDITOR_STORE"])
    try:
        certs = store.certificates(run_id=runs["slow"])
        halt_certs = store.certificates(run_id=runs["halt"])
        items = {i.run_id: i for i in store.batches().get("slurm-rq").items}
    finally:
        store.close()
    assert len(certs) == 1, certs  # the killed attempt issued none
    assert items[runs["slow"]].state == "done"
    assert items[runs["slow"]].certificate_sha256 == certs[0].sha256
    assert items[runs["noisy"]].verdict == "not-reproduced"
    assert halt_certs == [] and items[runs["halt"]].state == "failed", items[runs["halt"]]


def _when_training(proc: subprocess.Popen[str], conf: str, seed: str) -> tuple[int, str]:
    """Wait until the rerun of ``train.py SEED --slow`` trains under our Slurm."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = _slurm_task_running(conf, "train.py", seed, "--slow")
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"the rerun of train.py {seed} never trained under Slurm")
