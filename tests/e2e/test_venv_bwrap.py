"""A venv rerun (no docker engine needed) in bubblewrap, and without it (issue 16, item 8).

The hostile script behaves in the recorded run and, in the rerun, reads world-readable
host files (a marker under /var/tmp and the host's /tmp, mode 0644), lists /home and /root,
and connects to a TCP listener this test opens on the host's loopback, sending what it
read. In bubblewrap it finds none of them and the marker never reaches the store.

Without bubblewrap (``AUDITOR_BWRAP=off``: as if it were not installed) the rerun is a
host process: the certificate's isolation is ``none``, and ``audit gate`` refuses it
with the default policy and with ``min_isolation = "venv"``, which accepts a bubblewrap
rerun.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import audit, commit_repo
from tests.e2e.test_hostile_rerun import PY, SIX_LOCK

pytestmark = [pytest.mark.slow]

HOSTILE = '''\
import json, os, socket, sys
markers, port = sys.argv[1:-1], int(sys.argv[-1])
print(json.dumps({"step": 0, "loss": 0.5}))
if "auditor-rerun-" in os.getcwd():  # the rerun: take what the host shows
    found = {}
    for path in markers:
        try:
            found[path] = open(path).read()
        except OSError as exc:
            found[path] = "absent: " + type(exc).__name__
    for top in ("/home", "/root", "/var", "/opt", "/srv"):
        try:
            found[top] = sorted(os.listdir(top))
        except OSError as exc:
            found[top] = "absent: " + type(exc).__name__
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
            conn.sendall(json.dumps(found).encode())
        found["network"] = "connected"
    except OSError as exc:
        found["network"] = "refused: " + type(exc).__name__
    print("LOOT " + json.dumps(found))
'''

BENIGN = '''\
import json, os
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 4)
for step in range(3):
    print(json.dumps({"step": step, "loss": 1.0 / (step + 1)}))
'''


@pytest.fixture
def markers() -> Iterator[tuple[list[Path], str]]:
    """World-readable host files (0644) holding a marker, under /var/tmp and /tmp."""
    value = f"host-marker-{uuid.uuid4().hex}"
    paths = []
    for folder in ("/var/tmp", tempfile.gettempdir()):
        fd, name = tempfile.mkstemp(prefix="auditor-test-marker-", dir=folder)
        os.write(fd, value.encode())
        os.close(fd)
        os.chmod(name, 0o644)
        paths.append(Path(name))
    yield paths, value
    for path in paths:
        path.unlink(missing_ok=True)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on the host's loopback; what reaches it is collected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _addr = server.accept()
            except OSError:
                continue
            with conn:
                got.append(conn.recv(65536) or b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    stop.set()
    thread.join(timeout=5)
    server.close()


def _repo(root: Path, script: str) -> Path:
    return commit_repo(root, {"train.py": script, "requirements.lock": SIX_LOCK,
                              ".gitignore": "outputs/\n"})


def _record(repo: Path, env: dict[str, str], *args: str) -> str:
    res = audit("--json", "record", "--", PY, "train.py", *args, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def _predicate(cert: Path) -> dict[str, Any]:
    statement = json.loads(base64.b64decode(json.loads(cert.read_text())["payload"]))
    return dict(statement["predicate"])


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder uid 1000 may enter (pytest's tmp is 0700): the store is closed by its own
    modes, the rest by the sandbox."""
    folder = Path(tempfile.mkdtemp(prefix="auditor-test-bwrap-"))
    os.chmod(folder, 0o755)
    yield folder
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def test_venv_rerun_in_bubblewrap_reads_no_host_file_and_reaches_no_network(
    open_folder: Path, ca_bundle: Path, markers: tuple[list[Path], str],
    listener: tuple[int, list[bytes]],
) -> None:
    paths, value = markers
    port, got = listener
    repo = _repo(open_folder / "proj", HOSTILE)
    store = open_folder / "store"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    run_id = _record(repo, env, *map(str, paths), str(port))
    got.clear()  # the recorded run itself did not connect (not a rerun); start clean
    res = audit("--json", "verify", run_id, "--backend", "venv", cwd=repo, env=env,
                timeout=900)
    assert res.returncode in (0, 1), res.stderr  # a verdict, whatever it is
    result = json.loads(res.stdout)["results"][0]
    shown = json.loads(audit("--json", "show", result["rerun_run"], cwd=repo, env=env).stdout)
    stdout = next(a for a in shown["artifacts"] if a["name"] == "logs/stdout.txt")
    log = (store / "objects" / "sha256" / stdout["sha256"][:2] / stdout["sha256"][2:]).read_text()
    loot = json.loads(log.split("LOOT ", 1)[1].splitlines()[0])
    for path in paths:
        assert loot[str(path)].startswith("absent: "), loot
    for top in ("/home", "/root", "/opt", "/srv"):
        assert loot[top] == "absent: FileNotFoundError", loot
    # /var holds only the way down to the venv (/var/cache/auditor/envs, as root)
    assert loot["/var"] in ("absent: FileNotFoundError", ["cache"]), loot
    assert loot["network"].startswith("refused: "), loot
    assert got == []
    for path in store.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert value.encode() not in path.read_bytes(), path
    sandbox = shown["not_captured"]["sandbox"]
    assert "venv backend: bubblewrap" in sandbox and f"the store {store} is not mounted" in \
        sandbox, sandbox


def _keys(folder: Path) -> tuple[Path, Path]:
    res = audit("keys", "generate", "--dir", str(folder / "keys"), cwd=folder)
    assert res.returncode == 0, res.stderr
    return folder / "keys" / "auditor.key", folder / "keys" / "auditor.pub"


@pytest.mark.parametrize("bwrap", ["on", "off"])
def test_gate_accepts_a_bubblewrap_venv_rerun_only_by_policy_and_never_an_unisolated_one(
    open_folder: Path, ca_bundle: Path, bwrap: str,
) -> None:
    repo = _repo(open_folder / "proj", BENIGN)
    store = open_folder / "store"
    env = {"AUDITOR_STORE": str(store), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    if bwrap == "off":
        env["AUDITOR_BWRAP"] = "off"  # as on a host without bubblewrap
    key, pub = _keys(open_folder)
    run_id = _record(repo, env)
    cert = open_folder / "cert.json"
    res = audit("--json", "verify", run_id, "--backend", "venv", "--sign-key", str(key),
                "--certificate", str(cert), cwd=repo, env=env, timeout=900)
    assert res.returncode == 0, res.stderr
    predicate = _predicate(cert)
    venv_policy = open_folder / "gate-venv.toml"
    venv_policy.write_text('min_isolation = "venv"\n')
    default = audit("gate", "outputs/model.bin", "--key", str(pub), cwd=repo, env=env)
    by_policy = audit("gate", "outputs/model.bin", "--key", str(pub), "--policy",
                      str(venv_policy), cwd=repo, env=env)
    assert default.returncode == 1, default.stdout + default.stderr  # never the default
    assert "isolation" in default.stdout + default.stderr
    if bwrap == "on":
        assert predicate["isolation"] == "venv", predicate
        assert any(n.startswith("venv backend: bubblewrap") for n in
                   predicate["isolation_notes"]), predicate["isolation_notes"]
        assert by_policy.returncode == 0, by_policy.stdout + by_policy.stderr
    else:
        assert predicate["isolation"] == "none", predicate
        assert any(n.startswith("venv backend: unisolated (bubblewrap is turned off")
                   for n in predicate["isolation_notes"]), predicate["isolation_notes"]
        assert by_policy.returncode == 1, by_policy.stdout + by_policy.stderr
        assert "unisolated" in by_policy.stdout + by_policy.stderr
