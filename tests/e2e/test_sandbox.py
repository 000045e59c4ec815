"""The rerun sandbox (section H of TEST-SCENARIOS, T36-T40), probed from inside.

Each check runs a tiny probe script through the real ``execute_docker`` path (the same
``containers.run`` call ``audit verify`` makes) in a small image built once from
``auditor-base:bookworm``: uid 1000, a ``/opt/auditor/venv/bin/python`` like the real
image. The probe prints one JSON line and the test asserts on it. The venv backend is
probed too where it applies (as root: ``unshare --net`` and uid 1000).

Network probes only ever try 1.1.1.1:53 and resolve pypi.org; with the network off they
fail before a packet leaves.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from auditor.errors import CouldNotVerify
from auditor.record.outputs import Snapshot
from auditor.record.wrap import _logs
from auditor.rerun import (
    Executed,
    Limits,
    Prepared,
    _lock_down,
    cleanup,
    execute_docker,
    execute_venv,
    replay_env,
    scratch_dir,
)
from auditor.schema import Command, Environment, Identity, RunRecord, new_run_id
from auditor.store import SqlStore

pytestmark = [pytest.mark.docker]

BASE_TAG = "auditor-base:bookworm"
DOCKERFILE = f"""\
FROM {BASE_TAG}
RUN useradd --uid 1000 --user-group --create-home auditor
RUN mkdir -p /opt/auditor/venv/bin && ln -s /usr/bin/python3 /opt/auditor/venv/bin/python
ENV PATH=/opt/auditor/venv/bin:$PATH
"""
RECORDED = "recorded\n"
SECRET_TOKEN = "ghp_" + "Zq7Xk2Lm9Vb4Np6Rt1Ws8Yd3Hf5Jc0Ga2Eu4" # 36 chars after the prefix
LIMITS = Limits(timeout_s=60, mem_limit="256m", pids_limit=64)


# -- fixtures (docker_client and base_image come from tests/integration/conftest.py) ------


@pytest.fixture(scope="module")
def sandbox_image(docker_client: Any, base_image: tuple[str, str]) -> str:
    """The probe image, tagged by its Dockerfile and base image, built once and reused."""
    import docker.errors

    digest = hashlib.sha256((DOCKERFILE + base_image[1]).encode()).hexdigest()[:12]
    tag = f"auditor-test-sandbox:{digest}"
    try:
        return str(docker_client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    image, _log = docker_client.images.build(
        fileobj=io.BytesIO(DOCKERFILE.encode()), tag=tag, network_mode="none", rm=True,
        forcerm=True, pull=False,
    )
    return str(image.id)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A work directory uid 1000 can traverse, removed even though its files are 0444."""
    tmp = scratch_dir()
    try:
        yield Path(tmp.name)
    finally:
        cleanup(Path(tmp.name))
        tmp.cleanup()


def _record(env_vars: dict[str, str] | None = None) -> RunRecord:
    return RunRecord(
        identity=Identity(
            id=new_run_id(), name="sandbox-probe", user="tester", host="here",
            started_at=datetime.now(UTC),
        ),
        command=Command(argv=("python", "probe.py"), cwd="."),
        environment=Environment(env_vars=env_vars or {}),
    )


def make_prep(
    scratch: Path, script: str, *, env_vars: dict[str, str] | None = None,
    pass_env: tuple[str, ...] = (),
) -> Prepared:
    """A locked-down tree holding ``probe.py``, a recorded file and a data folder."""
    workdir = scratch / "w"
    tree = workdir / "tree"
    (tree / "data").mkdir(parents=True)
    (tree / "probe.py").write_text(textwrap.dedent(script))
    (tree / "existing.txt").write_text(RECORDED)
    (tree / "data" / "input.csv").write_text("x,y\n1,2\n")
    (workdir / "probe").mkdir()
    os.chmod(workdir / "probe", 0o777)
    _lock_down(tree)
    record = _record(env_vars)
    return Prepared(
        record=record, workdir=workdir, tree=tree, cwd=tree, argv=["python", "probe.py"],
        env=replay_env(record, frozenset(), pass_env),
        snapshot=Snapshot.take(tree, []),
    )


def last_json(executed: Executed) -> dict[str, Any]:
    lines = [line for line in executed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from the probe; stdout={executed.stdout!r} stderr={executed.stderr!r}"
    return dict(json.loads(lines[-1]))


def containers_of(client: Any, run_id: str) -> list[Any]:
    """`docker ps -a --filter label=auditor.run=<id>`."""
    return list(client.containers.list(all=True, filters={"label": f"auditor.run={run_id}"}))


def run_probe(
    image: str, prep: Prepared, limits: Limits = LIMITS,
    on_line: Callable[[int, str], None] = lambda _n, _l: None,
) -> Executed:
    return execute_docker(prep, image, limits, on_line)


# -- probes ---------------------------------------------------------------------------------

ATTEMPT = """
import errno, json, os, socket

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else type(exc).__name__
"""

NETWORK_PROBE = ATTEMPT + """
def connect():
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()

result = {
    "connect": attempt(connect),
    "dns": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
    "interfaces": sorted(name for _i, name in socket.if_nameindex()),
}
if os.path.isdir("/sys/class/net"):
    result["sys_class_net"] = sorted(os.listdir("/sys/class/net"))
print(json.dumps(result))
"""

FILESYSTEM_PROBE = ATTEMPT + """
import sys
work = os.getcwd()

def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("changed\\n")

def replace_existing():
    write(os.path.join(work, "replacement.tmp"))
    os.replace(os.path.join(work, "replacement.tmp"), os.path.join(work, "existing.txt"))

def new_output():
    os.makedirs(os.path.join(work, "outputs"), exist_ok=True)
    write(os.path.join(work, "outputs", "model.bin"))
    write(os.path.join(work, "new.txt"))

def tmp_roundtrip():
    write("/tmp/scratch.txt")
    assert open("/tmp/scratch.txt").read() == "changed\\n"

result = {
    "root": attempt(lambda: write("/evil.txt")),
    "etc": attempt(lambda: write("/etc/evil.txt")),
    "venv": attempt(lambda: write(os.path.join(os.path.dirname(sys.executable), "evil"))),
    "append_existing": attempt(lambda: write(os.path.join(work, "existing.txt"), "a")),
    "truncate_existing": attempt(lambda: write(os.path.join(work, "existing.txt"))),
    "write_data": attempt(lambda: write(os.path.join(work, "data", "input.csv"))),
    "new_in_data": attempt(lambda: write(os.path.join(work, "data", "extra.csv"))),
    "chmod_existing": attempt(lambda: os.chmod(os.path.join(work, "existing.txt"), 0o666)),
    "rename_over_existing": attempt(replace_existing),
    "rename_existing_away": attempt(
        lambda: os.rename(os.path.join(work, "existing.txt"), os.path.join(work, "moved.txt"))),
    "unlink_existing": attempt(lambda: os.unlink(os.path.join(work, "existing.txt"))),
    "unlink_data": attempt(lambda: os.unlink(os.path.join(work, "data", "input.csv"))),
    "tmp": attempt(tmp_roundtrip),
    "new_output": attempt(new_output),
    "existing_after": open(os.path.join(work, "existing.txt")).read(),
}
print(json.dumps(result))
"""

PRIVILEGE_PROBE = ATTEMPT + """
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print(json.dumps({
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "setuid0": attempt(lambda: os.setuid(0)),
}))
"""

FORK_BOMB_PROBE = """
import errno, json, os, time

root = os.getpid()
forked = 0
error = None
try:
    while True:  # every process keeps forking: the classic bomb
        os.fork()
        if os.getpid() == root:
            forked += 1
except OSError as exc:  # BlockingIOError (EAGAIN) once pids_limit is reached
    error = errno.errorcode.get(exc.errno, str(exc))
if os.getpid() != root:
    time.sleep(60)  # hold the slot; the container's end kills every process in it
    os._exit(0)

def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None

print(json.dumps({
    "pid": root, "forked": forked, "error": error,
    "pids_max": read("/sys/fs/cgroup/pids/pids.max") or read("/sys/fs/cgroup/pids.max"),
}), flush=True)
os._exit(0)  # pid 1 leaves: the kernel kills the rest of the bomb
"""

OOM_PROBE = """
print("allocating", flush=True)
block = b"\\x01" * (256 * 1024 * 1024)  # written, so really resident: 2 x mem_limit
print("survived", len(block), flush=True)
"""

SLEEP_PROBE = """
import time
print("ready", flush=True)
time.sleep(60)
print("woke", flush=True)
"""

ENV_PROBE = """
import json, os
environ = dict(os.environ)
print(json.dumps({"names": sorted(environ), "values": sorted(environ.values())}))
print("leaked token: TOKEN")
import sys
print("stderr token: TOKEN", file=sys.stderr)
"""


# -- T37 network ----------------------------------------------------------------------------


def test_t37_network_is_off(sandbox_image: str, scratch: Path) -> None:
    started = time.monotonic()
    result = last_json(run_probe(sandbox_image, make_prep(scratch, NETWORK_PROBE)))
    assert result["connect"] != "ok", result
    assert result["dns"] != "ok", result
    assert result["interfaces"] == ["lo"], result
    assert result["sys_class_net"] == ["lo"], result
    assert time.monotonic() - started < 30  # refused at once, not timed out packet by packet


# -- T38 filesystem -------------------------------------------------------------------------

DENIED = {"EROFS", "EACCES", "EPERM"}


def test_t38_filesystem_read_only_except_outputs_and_tmp(
    sandbox_image: str, scratch: Path
) -> None:
    prep = make_prep(scratch, FILESYSTEM_PROBE)
    executed = run_probe(sandbox_image, prep)
    result = last_json(executed)
    assert executed.exit_code == 0, executed.stderr
    for key in ("root", "etc", "venv"):
        assert result[key] == "EROFS", (key, result)  # read_only=True root filesystem
    for key in (
        "append_existing", "truncate_existing", "write_data", "chmod_existing",
        "rename_over_existing", "rename_existing_away", "unlink_existing", "unlink_data",
    ):
        assert result[key] in DENIED, (key, result)
    assert result["tmp"] == "ok", result
    assert result["new_output"] == "ok", result
    assert result["new_in_data"] == "ok", result  # outputs may land anywhere new
    assert result["existing_after"] == RECORDED
    # and on the host: recorded files untouched, outputs present
    assert (prep.tree / "existing.txt").read_text() == RECORDED
    assert (prep.tree / "data" / "input.csv").read_text() == "x,y\n1,2\n"
    assert (prep.tree / "outputs" / "model.bin").read_text() == "changed\n"
    assert not (prep.tree / "moved.txt").exists()
    assert "outputs/model.bin" in prep.snapshot.changed()


# -- T39 privileges -------------------------------------------------------------------------


def test_t39_privileges_dropped(sandbox_image: str, scratch: Path) -> None:
    result = last_json(run_probe(sandbox_image, make_prep(scratch, PRIVILEGE_PROBE)))
    assert result["cap_eff"] == "0000000000000000", result
    assert result["cap_prm"] == "0000000000000000", result
    assert result["no_new_privs"] == "1", result
    assert result["uid"] == result["euid"] == 1000, result
    assert result["gid"] == 1000, result
    assert 0 not in result["groups"], result
    assert result["setuid0"] == "EPERM", result


# -- T40 resource limits --------------------------------------------------------------------


def test_t40_fork_bomb_stopped_by_pids_limit(
    docker_client: Any, sandbox_image: str, scratch: Path
) -> None:
    prep = make_prep(scratch, FORK_BOMB_PROBE)
    started = time.monotonic()
    executed = run_probe(sandbox_image, prep, Limits(timeout_s=60, mem_limit="512m",
                                                     pids_limit=64))
    took = time.monotonic() - started
    result = last_json(executed)
    assert result["error"] == "EAGAIN", result
    assert result["pid"] == 1
    assert 0 < result["forked"] < 64, result
    if result["pids_max"] is not None:
        assert result["pids_max"] == "64", result
    assert executed.exit_code == 0
    assert took < 30, took
    assert containers_of(docker_client, prep.record.identity.id) == []
    # the host still forks
    assert subprocess.run(["true"], check=False).returncode == 0


def test_t40_out_of_memory(docker_client: Any, sandbox_image: str, scratch: Path) -> None:
    prep = make_prep(scratch, OOM_PROBE)
    started = time.monotonic()
    with pytest.raises(CouldNotVerify, match="out of memory") as caught:
        run_probe(sandbox_image, prep, Limits(timeout_s=60, mem_limit="128m", pids_limit=64))
    took = time.monotonic() - started
    print(f"out of memory reported after {took:.1f} s")
    assert took < 20, took
    assert "128m" in str(caught.value)
    assert not str(caught.value).startswith("error:")  # the CLI adds the prefix once
    assert containers_of(docker_client, prep.record.identity.id) == []


def test_t40_timeout(docker_client: Any, sandbox_image: str, scratch: Path) -> None:
    prep = make_prep(scratch, SLEEP_PROBE)
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(CouldNotVerify, match="timeout") as caught:
        run_probe(sandbox_image, prep, Limits(timeout_s=3, mem_limit="128m", pids_limit=64),
                  on_line=lambda _n, line: lines.append(line))
    took = time.monotonic() - started
    print(f"timeout reported after {took:.1f} s")
    assert 3 <= took < 15, took
    assert "3 s" in str(caught.value)
    assert lines == ["ready\n"]  # streamed live, before the kill
    assert containers_of(docker_client, prep.record.identity.id) == []


def test_start_failure_is_could_not_verify_and_leaves_no_container(
    docker_client: Any, sandbox_image: str, scratch: Path
) -> None:
    prep = make_prep(scratch, SLEEP_PROBE)
    prep.argv = ["no-such-program-in-the-image"]  # created, then refused at start
    with pytest.raises(CouldNotVerify, match="could not start"):
        run_probe(sandbox_image, prep)
    assert containers_of(docker_client, prep.record.identity.id) == []


RUNNER = """
import pickle, sys
from auditor.rerun import Limits, execute_docker

prep = pickle.loads(open(sys.argv[1], "rb").read())

def on_line(_n, line):
    print("LINE", line.strip(), flush=True)

execute_docker(prep, sys.argv[2], Limits(timeout_s=120, mem_limit="128m", pids_limit=64), on_line)
print("FINISHED", flush=True)
"""


def test_t40_sigint_removes_container(
    docker_client: Any, sandbox_image: str, scratch: Path
) -> None:
    prep = make_prep(scratch, SLEEP_PROBE)
    (scratch / "prep.pickle").write_bytes(pickle.dumps(prep))
    (scratch / "runner.py").write_text(RUNNER)
    run_id = prep.record.identity.id
    proc = subprocess.Popen(
        [sys.executable, str(scratch / "runner.py"), str(scratch / "prep.pickle"), sandbox_image],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the container is running once it has spoken
        assert first == "LINE ready\n", (first, proc.stderr.read() if proc.stderr else "")
        assert len(containers_of(docker_client, run_id)) == 1
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert containers_of(docker_client, run_id) == []


# -- T36 secrets ----------------------------------------------------------------------------


def test_t36_host_secrets_stay_out_and_logs_are_scrubbed(
    docker_client: Any, sandbox_image: str, scratch: Path, store: SqlStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host_secret = "s3cr3t-value-from-the-host-" + "x9" * 8
    monkeypatch.setenv("AUDITOR_TEST_SECRET", host_secret)
    monkeypatch.setenv("TEST_DECLARED_PASS", "declared-value")
    prep = make_prep(
        scratch, ENV_PROBE.replace("TOKEN", SECRET_TOKEN),
        env_vars={"OMP_NUM_THREADS": "1", "AWS_SECRET_ACCESS_KEY": "[REDACTED]"},
        pass_env=("TEST_DECLARED_PASS",),
    )
    executed = run_probe(sandbox_image, prep)
    result = last_json(executed)
    image_env = {
        item.split("=", 1)[0]
        for item in docker_client.images.get(sandbox_image).attrs["Config"]["Env"] or []
    }
    added = {"PYTHONPATH", "AUDITOR_PROBE_DIR", "AUDITOR_RUN_ID", "HOME", "HOSTNAME"}
    allowed = set(prep.env) | image_env | added
    assert "AUDITOR_TEST_SECRET" not in result["names"]
    assert host_secret not in result["values"]
    assert "AWS_SECRET_ACCESS_KEY" not in result["names"]
    assert set(result["names"]) <= allowed, set(result["names"]) - allowed
    assert "TEST_DECLARED_PASS" in result["names"]  # declared in pass_env: passed
    assert result["names"].count("OMP_NUM_THREADS") == 1
    assert SECRET_TOKEN in executed.stdout and SECRET_TOKEN in executed.stderr

    refs = _logs(store, executed.stdout, executed.stderr)
    for ref in refs:
        stored = store.blobs.read_bytes(ref.sha256)
        assert SECRET_TOKEN.encode() not in stored, ref.name
        assert b"[REDACTED]" in stored, ref.name
    objects = b"".join(p.read_bytes() for p in Path(store.blobs.root).rglob("*") if p.is_file())
    assert SECRET_TOKEN.encode() not in objects


# -- venv backend ---------------------------------------------------------------------------


@pytest.fixture
def venv_env(scratch: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the venv backend sandboxes (unshare --net, uid 1000) only as root")
    env_dir = scratch / "venv"
    subprocess.run(
        ["python3", "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
        check=True, capture_output=True,
    )
    return env_dir


def test_venv_backend_network_off_and_code_read_only(venv_env: Path, scratch: Path) -> None:
    prep = make_prep(scratch, NETWORK_PROBE.replace("print(json.dumps(result))", "net = result")
                     + FILESYSTEM_PROBE + "print(json.dumps({**net, **result}))\n")
    executed = execute_venv(prep, venv_env, Limits(timeout_s=60), lambda _n, _l: None)
    result = last_json(executed)
    assert executed.exit_code == 0, executed.stderr
    assert any("unshare --net" in note for note in prep.notes), prep.notes
    assert result["connect"] != "ok", result
    assert result["dns"] != "ok", result
    assert result["interfaces"] == ["lo"], result
    assert result["root"] in DENIED, result
    for key in ("append_existing", "truncate_existing", "write_data", "chmod_existing",
                "rename_over_existing", "rename_existing_away", "unlink_existing"):
        assert result[key] in DENIED, (key, result)
    assert result["tmp"] == "ok", result
    assert result["new_output"] == "ok", result
    assert (prep.tree / "existing.txt").read_text() == RECORDED
    assert (prep.tree / "outputs" / "model.bin").stat().st_uid == 1000


def test_venv_backend_timeout(venv_env: Path, scratch: Path) -> None:
    prep = make_prep(scratch, SLEEP_PROBE)
    started = time.monotonic()
    with pytest.raises(CouldNotVerify, match="timeout"):
        execute_venv(prep, venv_env, Limits(timeout_s=2), lambda _n, _l: None)
    assert time.monotonic() - started < 10

