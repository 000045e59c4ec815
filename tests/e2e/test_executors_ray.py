"""``audit verify --all --executor ray://HOST:PORT`` on a real local Ray cluster (issue 21
item 5), started by this module: a head and a second node on 127.0.0.1
(``tests/engines.ray_cluster``). The second node stands in for a GPU machine: it carries
the custom resource ``accelerator_type:A100`` (what Ray gives a node with an A100) and an
``nvidia-smi`` that prints a real A100 report (``fixtures/nvidia-smi``); this machine has
no GPU, so that is the only fake. Each node names itself in ``AUDITOR_NODE``, which
``audit verify --batch`` stores as the item's node.

Every verification is real: ``audit verify RUN --batch B`` run by Ray as a job, a venv
rerun in bubblewrap (backend ``venv``: a docker engine inside Ray jobs is impractical
here; ``isolation`` is then ``venv``, which the default gate does not accept — the tests
check verdicts and the store, not the gate), results in a SQLite store on the shared disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import audit, commit_repo
from tests.e2e.test_hostile_rerun import PY, SIX_LOCK
from tests.engines import GPU_RESOURCE, RayCluster, fake_gpu_bin, ray_cluster

pytestmark = [pytest.mark.slow]

TRAIN = '''\
import json, os, sys, time
os.makedirs("outputs", exist_ok=True)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if "--slow" in sys.argv:
    time.sleep(12)  # long enough to kill the worker of its rerun
with open("outputs/model.bin", "wb") as fh:
    fh.write(bytes((seed + i) % 256 for i in range(1024)))
for step in range(3):
    print(json.dumps({"step": step, "loss": (seed + 1.0) / (step + 1)}))
'''
T4_XML = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-smi" / \
    "tesla-t4-515.105.01.xml"


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """The cluster, a repo with its runs recorded, and the store they are in."""
    folder = Path(tempfile.mkdtemp(prefix="auditor-test-ray-"))
    os.chmod(folder, 0o755)  # the rerun user (uid 1000) enters the tree, not the store
    repo = commit_repo(folder / "proj", {"train.py": TRAIN, "requirements.lock": SIX_LOCK,
                                         ".gitignore": "outputs/\n"})
    store = folder / "store"
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_CA_BUNDLE": ca, "NO_COLOR": "1"}
    runs: dict[str, str] = {}
    for seed in range(4):
        runs[f"cpu{seed}"] = _record(repo, env, str(seed), tag="parallel")
    a100 = fake_gpu_bin(folder / "a100-bin")
    runs["gpu"] = _record(repo, {**env, "PATH": f"{a100}:{os.environ['PATH']}"}, "7",
                          tag="parallel")
    runs["slow"] = _record(repo, env, "9", "--slow")
    t4 = folder / "t4-bin"
    t4.mkdir()
    (t4 / "nvidia-smi").write_text(f"#!/bin/sh\nexec cat {T4_XML}\n")
    (t4 / "nvidia-smi").chmod(0o755)
    runs["t4"] = _record(repo, {**env, "PATH": f"{t4}:{os.environ['PATH']}"}, "5",
                         tag="parallel")
    with ray_cluster(env={"AUDITOR_CA_BUNDLE": ca}, cpus=2) as cluster:
        yield {"cluster": cluster, "repo": repo, "env": env, "runs": runs, "store": store}
    shutil.rmtree(folder, ignore_errors=True)


def _record(repo: Path, env: dict[str, str], *args: str, tag: str = "alone") -> str:
    res = audit("--json", "record", "--tag", tag, "--", PY, "train.py", *args, cwd=repo,
                env=env)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def _verify(world: dict[str, Any], *args: str, timeout: int = 900
            ) -> tuple[int, dict[str, Any], str]:
    cluster: RayCluster = world["cluster"]
    res = audit("--json", "verify", *args, "--executor", cluster.address, "--backend", "venv",
                cwd=world["repo"], env=world["env"], timeout=timeout)
    shown = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, shown, res.stderr


def _batch(world: dict[str, Any], batch: str) -> dict[str, dict[str, Any]]:
    res = audit("--json", "batch", "show", batch, cwd=world["repo"], env=world["env"])
    assert res.returncode in (0, 1, 3), res.stderr
    return {i["run_id"]: i for i in json.loads(res.stdout)["items"]}


def _ray_jobs(cluster: RayCluster) -> list[Any]:
    from ray.job_submission import JobSubmissionClient

    return list(JobSubmissionClient(cluster.url).list_jobs())


def _gpu_node(cluster: RayCluster) -> str:
    from ray.util.state import list_nodes

    nodes = list_nodes(address=cluster.url, detail=True, raise_on_missing_output=False)
    (node,) = [n for n in nodes if (n.resources_total or {}).get(GPU_RESOURCE)]
    return str(node.node_id)


def _certificates(world: dict[str, Any], run_id: str) -> list[str]:
    res = audit("--json", "show", run_id, cwd=world["repo"], env=world["env"])
    assert res.returncode == 0, res.stderr
    from auditor.store import open_store

    store = open_store(str(world["store"]), create=False)
    try:
        reruns = store.run_ids_reproducing(run_id)
        return [r for r in reruns if _has_certificate(store, r)]
    finally:
        store.close()


def _has_certificate(store: Any, rerun_id: str) -> bool:
    from auditor.certify.issue import stored_result

    try:
        stored_result(store, store.get_record(rerun_id))
    except Exception:  # noqa: BLE001 - no certificate for this rerun
        return False
    return True


def test_a_batch_runs_in_parallel_places_the_gpu_run_and_is_never_verified_twice(
        world: dict[str, Any]) -> None:
    runs, cluster = world["runs"], world["cluster"]
    batch = "ray-parallel-1"
    ids = [runs[k] for k in ("cpu0", "cpu1", "cpu2", "cpu3", "gpu")]
    before = len(_ray_jobs(cluster))
    started = time.monotonic()
    code, shown, err = _verify(world, "--all", "--tag", "parallel", "--batch", batch)
    wall = time.monotonic() - started
    jobs = {j["run"]: j for j in shown.get("jobs", [])}
    # the T4 run is in the selection too: no node has its GPU
    assert set(ids) <= set(jobs), (shown, err)
    for run_id in ids:
        assert jobs[run_id]["verdict"] == "reproduced", (jobs[run_id], err)
    assert jobs[runs["t4"]]["exit"] == 3 and "Tesla T4" in jobs[runs["t4"]]["message"]
    assert code == 3  # the worst outcome: the T4 run could not be verified
    # placed by the accelerator resource: only the labelled node ran the GPU run
    assert jobs[runs["gpu"]]["node"] == _gpu_node(cluster)
    items = _batch(world, batch)
    assert items[runs["gpu"]]["node"] == "gpu-node" and items[runs["gpu"]]["state"] == "done"
    # refused before submission: could-not-verify in the batch, not left pending
    assert (items[runs["t4"]]["state"], items[runs["t4"]]["verdict"]) == (
        "failed", "could-not-verify"), items[runs["t4"]]
    for run_id in ids:
        assert items[run_id]["verdict"].startswith("reproduced"), items[run_id]
        assert items[run_id]["certificate_sha256"], items[run_id]
    # in parallel: the five jobs overlapped (each alone takes a good part of the wall)
    seconds = [jobs[r]["seconds"] for r in ids]
    assert sum(seconds) > 1.5 * wall or wall < max(seconds) * 1.8, (seconds, wall)
    submitted = len(_ray_jobs(cluster)) - before
    certificates = {r: len(_certificates(world, r)) for r in ids}
    assert set(certificates.values()) == {1}, certificates
    # the same batch again: nothing is verified twice, nothing reaches Ray
    code, again, err = _verify(world, "--all", "--tag", "parallel", "--batch", batch)
    assert {j["run"] for j in again.get("jobs", [])} == {runs["t4"]}, again  # refused again
    assert set(ids) <= set(again["skipped"]), again
    assert {r: len(_certificates(world, r)) for r in ids} == certificates
    assert len(_ray_jobs(cluster)) - before == submitted  # nothing reached Ray


def _kill_when_rerunning(run_id: str, killed: list[int], stop: threading.Event) -> None:
    """Kill the worker's `audit verify RUN` (and its rerun) once the rerun is running."""
    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "verify" in cmd and run_id in cmd and "--batch" in cmd:
                tree = proc.children(recursive=True)
                if any("train.py" in " ".join(c.cmdline()) for c in tree
                       if c.is_running()):
                    for victim in [proc, *tree]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            victim.kill()
                    killed.append(proc.pid)
                    return
        time.sleep(0.2)


def test_a_worker_killed_mid_rerun_is_retried_once_and_certified_only_whole(
        world: dict[str, Any]) -> None:
    run_id = world["runs"]["slow"]
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_rerunning, args=(run_id, killed, stop))
    killer.start()
    try:
        code, shown, err = _verify(world, run_id, "--batch", "ray-kill-1")
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker was never seen rerunning"
    (job,) = shown["jobs"]
    assert job["attempts"] == 2, (job, err)
    assert "attempt 1 ended without a verdict" in err
    assert job["verdict"] == "reproduced" and code == 0, (job, err)
    # one certificate, from the whole rerun of the second attempt
    certified = _certificates(world, run_id)
    assert len(certified) == 1, certified
    item = _batch(world, "ray-kill-1")[run_id]
    assert item["rerun_id"] == certified[0] and item["state"] == "done"


def test_no_node_with_the_gpu_is_exit_3_naming_it_unless_the_policy_allows(
        world: dict[str, Any]) -> None:
    run_id = world["runs"]["t4"]
    code, shown, err = _verify(world, run_id, "--batch", "ray-t4-1")
    (job,) = shown["jobs"]
    assert code == 3 and job["attempts"] == 0
    assert "Tesla T4" in job["message"] and "accelerator_type:T4" in job["message"]
    code, shown, err = _verify(world, run_id, "--batch", "ray-t4-2", "--allow-gpu-mismatch")
    (job,) = shown["jobs"]
    assert code == 0 and job["verdict"] == "reproduced", (job, err)


def test_an_unreachable_cluster_is_one_line_exit_3(world: dict[str, Any]) -> None:
    fresh = _record(world["repo"], world["env"], "11")  # a run no batch verified yet
    res = audit("verify", fresh, "--executor", "ray://127.0.0.1:9",
                "--batch", "ray-down-1", cwd=world["repo"], env=world["env"], timeout=120)
    assert res.returncode == 3, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "127.0.0.1:9" in errors[0] and "Traceback" not in res.stderr


def test_a_hanging_job_is_stopped_at_our_limit_and_could_not_verify(
        world: dict[str, Any], tmp_path: Path) -> None:
    """The job's command is a stand-in `audit` that never ends: the executor stops the Ray
    job at the job's wall limit and answers could-not-verify."""
    from auditor.executors.base import Job, Submission
    from auditor.executors.rayjobs import RayExecutor

    hang = tmp_path / "audit-hangs"
    hang.write_text("#!/bin/sh\nsleep 600\n")
    hang.chmod(0o755)
    lines: list[str] = []
    executor = RayExecutor(world["cluster"].address, say=lines.append)
    job = Job(run_id="r-hang", name="t", gpu=None, gpu_count=0, timeout_s=5, wall_s=12)
    started = time.monotonic()
    (outcome,) = executor.run([job], Submission("b-hang", audit=str(hang)))
    assert outcome.exit_code == 3 and outcome.verdict == "could-not-verify"
    assert "no answer within 12 s" in outcome.message
    assert time.monotonic() - started < 60
    (ray_job,) = [j for j in _ray_jobs(world["cluster"])
                  if (j.metadata or {}).get("auditor_run") == "r-hang"]
    deadline = time.monotonic() + 30
    while str(ray_job.status.value) not in ("STOPPED", "FAILED") and time.monotonic() < deadline:
        time.sleep(1)
        (ray_job,) = [j for j in _ray_jobs(world["cluster"])
                      if (j.metadata or {}).get("auditor_run") == "r-hang"]
    assert str(ray_job.status.value) in ("STOPPED", "FAILED")


class CuttingProxy:
    """A TCP proxy to the job server that cuts each log-tail connection after ``cut_s``
    seconds (other requests pass whole): a flaky network between the submitter and Ray,
    under which Ray's log tail ends early."""

    def __init__(self, upstream_port: int, cut_s: float) -> None:
        self.upstream_port, self.cut_s, self.cuts = upstream_port, cut_s, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self.lock:
            self.open += [client, upstream]
        first = client.recv(65536)
        upstream.sendall(first)
        if b"/logs/tail" in first:
            threading.Timer(self.cut_s, self._cut, (client, upstream)).start()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _cut(self, *socks: socket.socket) -> None:
        self.cuts += 1
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")  # Ray's aiohttp
def test_logs_are_followed_through_dropped_connections_without_loss_or_repeats(
        world: dict[str, Any], tmp_path: Path) -> None:
    """A job printing 12 numbered lines over ~12 s, followed through a proxy that cuts
    each connection after 3 s: every line is shown once, in order."""
    from urllib.parse import urlsplit

    from auditor.executors.base import Job, Submission
    from auditor.executors.rayjobs import RayExecutor

    talker = tmp_path / "audit-talks"
    talker.write_text("#!/bin/sh\nfor i in $(seq 1 12); do echo \"line-$i\"; sleep 1; done\n")
    talker.chmod(0o755)
    proxy = CuttingProxy(int(urlsplit(world["cluster"].url).port or 0), cut_s=3.0)
    try:
        lines: list[str] = []
        executor = RayExecutor(f"ray://127.0.0.1:{proxy.port}", say=lines.append)
        job = Job(run_id="r-talks", name="t", gpu=None, gpu_count=0, timeout_s=60, wall_s=120)
        (outcome,) = executor.run([job], Submission("b-talks", audit=str(talker)))
    finally:
        proxy.close()
    assert outcome.exit_code == 0, outcome
    shown = [ln.split("] ", 1)[1] for ln in lines if ln.startswith("[r-talks")]
    numbered = [ln for ln in shown if ln.startswith("line-")]
    assert numbered == [f"line-{i}" for i in range(1, 13)], lines
    assert proxy.cuts >= 2  # the tail was cut, and followed again
