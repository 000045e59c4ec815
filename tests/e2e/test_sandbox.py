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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from auditor.core.errors import CouldNotVerify
from auditor.core.schema import Environment, RunRecord
from auditor.env.venv import host_python
from auditor.record.childio import rerun_logs
from auditor.record.outputs import Snapshot
from auditor.rerun.in_docker import execute_docker
from auditor.rerun.in_venv import execute_venv
from auditor.rerun.sandbox import (
    Executed,
    Limits,
    Prepared,
    cleanup,
    hand_over,
    replay_env,
    scratch_dir,
)
from auditor.store import SqlStore, open_store
from tests.conftest import default_sigint
from tests.factories import make_record

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
    return make_record(name="sandbox-probe", user="tester", host="here",
                       argv=("python", "probe.py"),
                       environment=Environment(env_vars=env_vars or {}))


def make_prep(
    scratch: Path, script: str, *, env_vars: dict[str, str] | None = None,
    pass_env: tuple[str, ...] = (),
) -> Prepared:
    """A tree handed over as ``prepare`` does: ``probe.py``, recorded code files, a model
    and a ``checkpoints/`` folder left by an earlier run, and a declared data folder."""
    workdir = scratch / "w"
    tree = workdir / "tree"
    (tree / "data").mkdir(parents=True)
    (tree / "checkpoints").mkdir()
    (tree / "probe.py").write_text(textwrap.dedent(script))
    (tree / "existing.txt").write_text(RECORDED)
    (tree / "config.txt").write_text(RECORDED)
    (tree / "old.log").write_text(RECORDED)
    (tree / "model.pt").write_text("last week's model\n")
    (tree / "checkpoints" / "epoch0.pt").write_text("last week's checkpoint\n")
    (tree / "data" / "input.csv").write_text("x,y\n1,2\n")
    (workdir / "probe").mkdir()
    os.chmod(workdir / "probe", 0o777)
    hand_over(tree, [tree / "data"])
    record = _record(env_vars)
    return Prepared(
        record=record, workdir=workdir, tree=tree, cwd=tree, argv=("python", "probe.py"),
        env=replay_env(record, frozenset(), pass_env),
        snapshot=Snapshot.take(tree, []),
    )


def last_json(executed: Executed) -> dict[str, Any]:
    lines = [line for line in executed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from the probe; stdout={executed.stdout!r} stderr={executed.stderr!r}"
    return dict(json.loads(lines[-1]))


def containers_of(client: Any, run_id: str) -> list[Any]:
    """`docker ps -a --filter label=auditor.run=<id>`."""
    return list(client.containers.list(
        all=True, sparse=True, filters={"label": f"auditor.run={run_id}"}))


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
data = os.path.join(work, "data")

def write(path, mode="w"):
    with open(path, mode) as f:
        f.write("changed\\n")

def replace_over(target):
    write(os.path.join(os.path.dirname(target), "replacement.tmp"))
    os.replace(os.path.join(os.path.dirname(target), "replacement.tmp"), target)

def new_output():
    os.makedirs(os.path.join(work, "outputs"), exist_ok=True)
    write(os.path.join(work, "outputs", "model.bin"))
    write(os.path.join(work, "new.txt"))

def tmp_roundtrip():
    write("/tmp/scratch.txt")
    assert open("/tmp/scratch.txt").read() == "changed\\n"

def read(path):
    with open(path, "rb") as f:
        f.read(1)

result = {
    "root": attempt(lambda: write("/evil.txt")),
    "etc": attempt(lambda: write("/etc/evil.txt")),
    "venv": attempt(lambda: write(os.path.join(os.path.dirname(sys.executable), "evil"))),
    # the rerun's own copy of the tree: code and earlier outputs are its to change
    "append_code": attempt(lambda: write(os.path.join(work, "existing.txt"), "a")),
    "overwrite_model": attempt(lambda: write(os.path.join(work, "model.pt"))),
    "into_checkpoints": attempt(lambda: write(os.path.join(work, "checkpoints", "epoch1.pt"))),
    "overwrite_checkpoint": attempt(
        lambda: write(os.path.join(work, "checkpoints", "epoch0.pt"))),
    "replace_code": attempt(lambda: replace_over(os.path.join(work, "config.txt"))),
    "unlink_code": attempt(lambda: os.unlink(os.path.join(work, "old.log"))),
    # declared inputs stay read-only
    "write_data": attempt(lambda: write(os.path.join(data, "input.csv"), "a")),
    "truncate_data": attempt(lambda: write(os.path.join(data, "input.csv"))),
    "chmod_data": attempt(lambda: os.chmod(os.path.join(data, "input.csv"), 0o666)),
    "replace_data": attempt(lambda: replace_over(os.path.join(data, "input.csv"))),
    "rename_data_away": attempt(
        lambda: os.rename(os.path.join(data, "input.csv"), os.path.join(work, "moved.csv"))),
    "unlink_data": attempt(lambda: os.unlink(os.path.join(data, "input.csv"))),
    "rename_data_folder": attempt(lambda: os.rename(data, os.path.join(work, "data2"))),
    "chmod_data_folder": attempt(lambda: os.chmod(data, 0o777)),
    "new_in_data": attempt(lambda: write(os.path.join(data, "extra.csv"))),
    "tmp": attempt(tmp_roundtrip),
    "new_output": attempt(new_output),
    "host_file": attempt(lambda: read(HOST_FILE)),
    "data_after": open(os.path.join(data, "input.csv")).read(),
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
CODE_WRITES = ("append_code", "overwrite_model", "into_checkpoints", "overwrite_checkpoint",
               "replace_code", "unlink_code")
DATA_WRITES = ("write_data", "truncate_data", "chmod_data", "replace_data", "rename_data_away",
               "unlink_data", "rename_data_folder", "chmod_data_folder")


def filesystem_probe(host_file: Path) -> str:
    return FILESYSTEM_PROBE.replace("HOST_FILE", repr(str(host_file)))


def stored_object(store: SqlStore) -> Path:
    """A real object in a real store (0700 folders, 0400 object): what the original run's
    outputs are, on the host."""
    sha, _size = store.blobs.put_bytes(b"the original run's weights")
    return store.blobs.path_for(sha)


def assert_tree_after(prep: Prepared, result: dict[str, Any]) -> None:
    for key in CODE_WRITES:
        assert result[key] == "ok", (key, result)
    for key in DATA_WRITES:
        assert result[key] in DENIED, (key, result)
    assert result["new_in_data"] == "ok", result  # outputs may land anywhere new
    assert result["tmp"] == "ok", result
    assert result["new_output"] == "ok", result
    assert result["data_after"] == "x,y\n1,2\n"
    # on the host: inputs untouched, the copy changed as the script wanted, all collected
    tree = prep.tree
    assert (tree / "data" / "input.csv").read_text() == "x,y\n1,2\n"
    assert not (tree / "moved.csv").exists() and not (tree / "data2").exists()
    assert (tree / "existing.txt").read_text() == RECORDED + "changed\n"
    assert (tree / "model.pt").read_text() == "changed\n"
    assert (tree / "config.txt").read_text() == "changed\n"
    assert not (tree / "old.log").exists()
    changed = set(prep.snapshot.changed())
    assert {"outputs/model.bin", "model.pt", "checkpoints/epoch1.pt", "checkpoints/epoch0.pt",
            "existing.txt", "config.txt", "data/extra.csv"} <= changed, changed
    assert "data/input.csv" not in changed


def test_t38_rerun_writes_its_own_copy_inputs_image_and_host_stay_out_of_reach(
    sandbox_image: str, scratch: Path, store: SqlStore
) -> None:
    obj = stored_object(store)
    prep = make_prep(scratch, filesystem_probe(obj))
    executed = run_probe(sandbox_image, prep)
    result = last_json(executed)
    assert executed.exit_code == 0, executed.stderr
    for key in ("root", "etc", "venv"):
        assert result[key] == "EROFS", (key, result)  # read_only=True root filesystem
    assert result["host_file"] == "ENOENT", result  # neither store nor host is mounted
    assert_tree_after(prep, result)
    assert executed.seen_as == "/work"
    assert any("no network" in n for n in executed.notes), executed.notes


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
    prep = replace(prep, argv=("no-such-program-in-the-image",))  # created, refused at start
    with pytest.raises(CouldNotVerify, match="could not start"):
        run_probe(sandbox_image, prep)
    assert containers_of(docker_client, prep.record.identity.id) == []


RUNNER = """
import pickle, sys
from auditor.rerun.in_docker import execute_docker
from auditor.rerun.sandbox import Limits

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
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
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

    refs = rerun_logs(store, executed.stdout, executed.stderr)
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
    python = host_python(f"{sys.version_info.major}.{sys.version_info.minor}")
    subprocess.run(
        [python, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
        check=True, capture_output=True,
    )
    return env_dir


@pytest.mark.parametrize("bwrap", ["bwrap", "unisolated"])
@pytest.mark.parametrize("hide", [True, False], ids=["store-hidden", "store-modes-only"])
def test_venv_backend_network_off_inputs_read_only_store_unreadable(
    venv_env: Path, scratch: Path, hide: bool, bwrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the store sits in a folder everyone may enter: not mounted in bubblewrap; unisolated,
    # covered by a tmpfs in the rerun's mount namespace, and (modes only) kept out by its
    # own 0700/0400 modes alone
    if bwrap == "unisolated":
        monkeypatch.setenv("AUDITOR_BWRAP", "off")
    store = open_store(str(scratch / "store"))
    obj = stored_object(store)
    prep = make_prep(scratch, NETWORK_PROBE.replace("print(json.dumps(result))", "net = result")
                     + filesystem_probe(obj) + "print(json.dumps({**net, **result}))\n")
    executed = execute_venv(prep, venv_env, Limits(timeout_s=60), lambda _n, _l: None,
                            hidden=(store.blobs.root,) if hide else ())
    result = last_json(executed)
    assert executed.exit_code == 0, executed.stderr
    if bwrap == "bwrap":
        assert executed.notes[0].startswith("venv backend: bubblewrap"), executed.notes
        if hide:
            assert f"venv backend: the store {store.blobs.root} is not mounted" in \
                executed.notes, executed.notes
        assert result["host_file"] == "ENOENT", result  # not there at all
    else:
        assert executed.notes[0].startswith("venv backend: unisolated"), executed.notes
        assert any("unshare --net" in note for note in executed.notes), executed.notes
        if hide:
            assert any(f"the store {store.blobs.root} is hidden and not readable" in note
                       for note in executed.notes), executed.notes
        assert result["host_file"] == "EACCES", result  # the store is private to its owner
    assert result["connect"] != "ok", result
    assert result["dns"] != "ok", result
    assert result["interfaces"] == ["lo"], result
    assert result["root"] in DENIED, result
    assert_tree_after(prep, result)
    assert (prep.tree / "outputs" / "model.bin").stat().st_uid == 1000
    store.close()


@pytest.mark.parametrize("bwrap", ["bwrap", "unisolated"])
def test_venv_backend_timeout(
    venv_env: Path, scratch: Path, bwrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bwrap == "unisolated":
        monkeypatch.setenv("AUDITOR_BWRAP", "off")
    prep = make_prep(scratch, SLEEP_PROBE)
    started = time.monotonic()
    with pytest.raises(CouldNotVerify, match="timeout"):
        execute_venv(prep, venv_env, Limits(timeout_s=2), lambda _n, _l: None)
    assert time.monotonic() - started < 10

