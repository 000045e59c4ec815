"""Real local engines for the executor tests and bench: a two-node Ray cluster and a
one-node Slurm (munge + slurmctld + slurmd), each started on 127.0.0.1 in a private folder
with free ports, and stopped (by process id) when the block ends.

The only stand-ins are for a GPU, which this machine cannot have:

- Ray: the second node carries the custom resource ``accelerator_type:A100`` (the
  resource Ray gives a node with an A100) and an ``nvidia-smi`` on its PATH that prints a
  real A100's report (``fixtures/nvidia-smi``), so a verification placed there finds the
  GPU the run was recorded on; the head node has neither.
- Slurm: the node declares one ``gpu:a100`` GRES backed by ``/dev/null``. A requeued
  task starts again after ``AuthInfo=cred_expire`` seconds (5 here; Slurm's default, 120 s,
  is why a requeued task seemed never to restart), plus the scheduler's next pass (about
  20 s here).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
A100_XML = REPO / "fixtures" / "nvidia-smi" / "a100-sxm4-80gb-535.54.03.xml"
GPU_RESOURCE = "accelerator_type:A100"


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker_port_range(span: int) -> int:
    """The first of ``span`` consecutive free ports below the kernel's ephemeral range
    (32768 and up on Linux), where ``free_ports`` never draws: Ray refuses to start when its
    worker-port range holds a port given to another of its components (seen in CI:
    ``worker_ports is trying to use a port number 52169``)."""
    rng = random.Random()
    for _ in range(100):
        start = rng.randrange(20000, 32000 - span)
        socks: list[socket.socket] = []
        try:
            for port in range(start, start + span):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {span} consecutive free ports between 20000 and 32000")


def fake_gpu_bin(folder: Path) -> Path:
    """A folder with an ``nvidia-smi`` that prints a real A100 report (the stand-in GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nexec cat {A100_XML}\n")
    smi.chmod(0o755)
    return folder


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop a process group we started (by its id), then kill what is left."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# -- Ray ------------------------------------------------------------------------------------
@dataclass
class RayCluster:
    address: str  # ray://127.0.0.1:<dashboard port>
    url: str  # http://127.0.0.1:<dashboard port>
    folder: Path
    procs: list[subprocess.Popen[bytes]]
    gpu_bin: Path


def _ray_node_args(ports: list[int]) -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port")
    return [f"{name}={port}" for name, port in zip(names, ports, strict=True)]


@contextlib.contextmanager
def ray_cluster(*, env: dict[str, str] | None = None, cpus: int = 1) -> Iterator[RayCluster]:
    """A head and a "GPU" node on 127.0.0.1 (``cpus`` CPUs each). ``env`` reaches every
    job (the nodes' environment); the GPU node's PATH starts with the fake nvidia-smi."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: socket paths
    gcs, dash, client, *rest = free_ports(3 + 6 + 6)
    head_ports, node_ports = rest[:6], rest[6:12]
    wmin = worker_port_range(501)  # below the kernel's ephemeral range the others come from
    base = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    gpu_bin = fake_gpu_bin(folder / "gpu-bin")
    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
              "--object-store-memory=80000000", "--disable-usage-stats"]
    head = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--ray-client-server-port={client}", f"--temp-dir={folder}/t",
            f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 200}",
            *_ray_node_args(head_ports), *common]
    worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}",
              f"--resources={json.dumps({GPU_RESOURCE: 1})}",
              f"--min-worker-port={wmin + 300}", f"--max-worker-port={wmin + 500}",
              *_ray_node_args(node_ports), *common]
    procs: list[subprocess.Popen[bytes]] = []
    log = (folder / "start.log").open("ab")
    try:
        procs.append(subprocess.Popen(head, env={**base, "AUDITOR_NODE": "head-node"},
                                      stdout=log, stderr=log, start_new_session=True))
        url = f"http://127.0.0.1:{dash}"
        _wait_ray(url, 1, folder, procs)
        gpu_env = {**base, "PATH": f"{gpu_bin}:{base['PATH']}", "AUDITOR_NODE": "gpu-node"}
        procs.append(subprocess.Popen(worker, env=gpu_env, stdout=log, stderr=log,
                                      start_new_session=True))
        _wait_ray(url, 2, folder, procs)
        yield RayCluster(f"ray://127.0.0.1:{dash}", url, folder, procs, gpu_bin)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ray(url: str, nodes: int, folder: Path, procs: list[subprocess.Popen[bytes]],
              timeout: float = 180) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            alive = list_nodes(address=url, filters=[("state", "=", "ALIVE")],
                               raise_on_missing_output=False)
            if len(alive) >= nodes:
                return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(1)
    log = (folder / "start.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"Ray did not start {nodes} node(s): {last}\n{log}")


# -- Slurm ----------------------------------------------------------------------------------
@dataclass
class Slurm:
    folder: Path
    env: dict[str, str]  # SLURM_CONF for sbatch, squeue, submitit
    procs: list[subprocess.Popen[bytes]]


SLURM_CONF = """\
ClusterName=auditortest
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.sock,cred_expire=5
KillWait=5
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 Gres=gpu:a100:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def slurm_missing() -> str | None:
    """Why a local Slurm cannot start here (None when it can)."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a local slurmd must run as root"
    return None


@contextlib.contextmanager
def slurm_cluster(cpus: int = 2) -> Iterator[Slurm]:
    """munged, slurmctld and slurmd in a private folder, the node ``localhost``."""
    folder = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    folder.chmod(0o755)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir()
    (folder / "munge").chmod(0o711)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld, slurmd = free_ports(2)
    (folder / "slurm.conf").write_text(SLURM_CONF.format(ctld=ctld, slurmd=slurmd,
                                                         folder=folder, cpus=cpus))
    (folder / "gres.conf").write_text("NodeName=localhost Name=gpu Type=a100 File=/dev/null\n")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    procs: list[subprocess.Popen[bytes]] = []
    log = (folder / "daemons.log").open("ab")
    try:
        procs.append(subprocess.Popen(
            ["/usr/sbin/munged", "-F", "-f", f"--socket={folder}/munge/munge.sock",
             f"--key-file={key}", f"--log-file={folder}/munged.log",
             f"--pid-file={folder}/munge/munged.pid", f"--seed-file={folder}/munge/seed"],
            stdout=log, stderr=log, start_new_session=True))
        _wait_for(lambda: (folder / "munge" / "munge.sock").exists(), "munged", folder)
        procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i"], env=env,
                                      stdout=log, stderr=log, start_new_session=True))
        time.sleep(0.5)
        procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-N", "localhost"], env=env,
                                      stdout=log, stderr=log, start_new_session=True))
        _wait_for(lambda: "idle" in subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
            check=False).stdout, "slurmd idle", folder)
        yield Slurm(folder, {"SLURM_CONF": str(folder / "slurm.conf")}, procs)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(ready: object, what: str, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        time.sleep(0.5)
    logs = "".join((folder / n).read_text(errors="replace")[-1500:]
                   for n in ("daemons.log", "slurmctld.log", "slurmd.log")
                   if (folder / n).exists())
    raise RuntimeError(f"{what} did not come up:\n{logs}")
