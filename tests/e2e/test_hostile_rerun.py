"""A training script that attacks its own rerun (issue 8, findings 1 and 2), end to end.

The script behaves in the recorded run (64 random bytes into ``outputs/weights.dat``: it can
never reproduce) and, in the rerun, tries to make the host hand it a passing verdict:

- docker: it writes ``$AUDITOR_PROBE_DIR/artifacts.jsonl`` lines naming a root-only 0600
  host file, the original run's output on the host, a path through a symlink it planted
  in its tree, ``..`` climbs and garbage; it plants symlinks to host files as probe files
  and as an output, and a FIFO as a probe file (which would hang a naive reader).
- venv: it walks the store (and another store on the same host) and the original
  repository, looking for the original's 64 bytes to copy into its own ``weights.dat``.

Each time: the host never reads a file outside the rerun's own tree, no byte of the host
secret reaches the store, the rerun's ``weights.dat`` is never the original's bytes, and the
verdict is ``not-reproduced``. The stored rerun record and the certificate name the
sandbox the rerun had.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.store import open_store
from tests.conftest import FIXTURES, audit, git

pytestmark = [pytest.mark.slow]
PY = sys.executable
SIX_LOCK = (
    "six==1.17.0 \\\n"
    "    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274\n"
)

HOSTILE = '''\
import json, os, sys
secret, original, stores = sys.argv[1], sys.argv[2], sys.argv[3:]
here = os.getcwd()
rerun = here == "/work" or "auditor-rerun-" in here
os.makedirs("outputs", exist_ok=True)
weights = os.urandom(64)
found = {}
if rerun and "auditor-rerun-" in here:  # venv: hunt for the original's 64 bytes
    for top in [os.path.dirname(os.path.dirname(original)), *stores]:
        try:
            for dirpath, _dirs, files in os.walk(top, onerror=lambda e: found.setdefault(
                    "walk_errors", []).append(type(e).__name__)):
                for name in files:
                    path = os.path.join(dirpath, name)
                    try:
                        data = open(path, "rb").read()
                    except OSError as exc:
                        found.setdefault("read_errors", []).append(type(exc).__name__)
                        continue
                    found.setdefault("read", []).append(path)
                    if len(data) == 64:
                        weights = data
        except OSError as exc:
            found["top"] = type(exc).__name__
with open("outputs/weights.dat", "wb") as fh:
    fh.write(weights)
print(json.dumps({"step": 0, "loss": 1.0}))
print("HUNT " + json.dumps(found))
if rerun:
    probe = os.environ["AUDITOR_PROBE_DIR"]
    os.symlink(os.path.dirname(secret), "escape")
    os.symlink(original, os.path.join("outputs", "link.bin"))
    lines = [
        {"path": secret, "name": "loot.txt"},
        {"path": original, "name": "outputs/weights.dat"},
        {"path": original, "name": "original.bin"},
        {"path": os.path.join(here, "escape", os.path.basename(secret)), "name": "loot2.txt"},
        {"path": os.path.join(here, "outputs", "link.bin"), "name": "loot3.txt"},
        {"path": here + "/../../../.." + secret, "name": "loot4.txt"},
        {"path": os.path.join(here, "outputs", "weights.dat"), "name": "../../etc/x"},
        "not an object", {"path": 7}, [1, 2],
    ]
    with open(os.path.join(probe, "artifacts.jsonl"), "a") as fh:
        fh.write("".join(json.dumps(line) + "\\n" for line in lines) + "{broken\\n")
    os.symlink(secret, os.path.join(probe, "api-1.json"))
    os.symlink(secret, os.path.join(probe, "determinism-1.json"))
    os.mkfifo(os.path.join(probe, "metrics-1.jsonl"))
    with open(os.path.join(probe, "api-2.json"), "w") as fh:
        fh.write('{"params": [1], "seed": "x", "seeded": 5}')
'''


@pytest.fixture
def host_secret() -> Iterator[tuple[Path, bytes]]:
    """A root-only 0600 file on the host, which the rerun must never get into the store."""
    value = f"host-only-{uuid.uuid4().hex}".encode()
    fd, name = tempfile.mkstemp(prefix="host_only_secret-", suffix=".txt", dir="/tmp")
    os.write(fd, value)
    os.close(fd)
    os.chmod(name, 0o600)
    yield Path(name), value
    os.unlink(name)


def hostile_repo(root: Path, lock: str) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "hostile.py").write_text(HOSTILE)
    (root / "requirements.lock").write_text(lock)
    (root / ".gitignore").write_text("outputs/\n.auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "hostile")
    return root


def record_hostile(repo: Path, env: dict[str, str], secret: Path, *stores: Path) -> str:
    original_output = repo / "outputs" / "weights.dat"
    res = audit("--json", "record", "--name", "hostile", "--", PY, "hostile.py", str(secret),
                str(original_output), *map(str, stores), cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def show(repo: Path, env: dict[str, str], run_id: str) -> dict[str, Any]:
    res = audit("--json", "show", run_id, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def output_sha(record: dict[str, Any], name: str = "outputs/outputs/weights.dat") -> str:
    return str(next(a["sha256"] for a in record["artifacts"] if a["name"] == name))


def assert_nothing_leaked(store_dir: Path, secret: bytes, rerun: dict[str, Any],
                          original: dict[str, Any]) -> None:
    names = {a["name"] for a in rerun["artifacts"]}
    assert not {n for n in names if "loot" in n or "original.bin" in n or "etc" in n}, names
    assert output_sha(rerun) != output_sha(original)  # never the original's bytes
    for path in store_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), path


def certificate_notes(cert: Path, field: str = "notes") -> list[str]:
    statement = json.loads(base64.b64decode(json.loads(cert.read_text())["payload"]))
    return list(statement["predicate"][field])


@pytest.mark.docker
def test_hostile_rerun_in_a_container_gets_no_host_file(
    tmp_path: Path, host_secret: tuple[Path, bytes], base_image: tuple[str, str],
    ca_bundle: Path, torch_wheelhouse: Path,
) -> None:
    secret, value = host_secret
    # the fixture lockfile: the image is the one the other docker e2e tests build
    repo = hostile_repo(tmp_path / "proj", (FIXTURES / "train" / "requirements.lock").read_text())
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_BASE_IMAGE": base_image[0],
           "AUDITOR_WHEELHOUSE": str(torch_wheelhouse), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    run_id = record_hostile(repo, env, secret)
    cert = tmp_path / "cert.json"
    res = audit("--json", "verify", run_id, "--backend", "docker", "--certificate", str(cert),
                cwd=repo, env=env, timeout=900)
    assert res.returncode == 1, res.stderr  # 64 random bytes: not reproduced, nothing else
    result = json.loads(res.stdout)["results"][0]
    assert result["verdict"]["level"] == "not-reproduced"
    rerun = show(repo, env, result["rerun_run"])
    assert_nothing_leaked(tmp_path / "store", value, rerun, show(repo, env, run_id))
    warnings = " ".join(rerun["metrics"]["warnings"])
    assert "outside the rerun's tree" in warnings and "symbolic link" in warnings, warnings
    # the sandbox it had is stored with the rerun and signed into the certificate
    assert "network_mode none" in rerun["not_captured"]["sandbox"]
    assert any("network_mode none" in n for n in certificate_notes(cert))
    assert any("network_mode none" in n for n in certificate_notes(cert, "isolation_notes"))


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder everyone may enter (unlike pytest's 0700 tmp): only the store's own modes
    and the rerun's mount namespace keep uid 1000 out of what is inside."""
    folder = Path(tempfile.mkdtemp(prefix="auditor-test-open-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("bwrap", ["on", "off"])
def test_hostile_venv_rerun_cannot_read_the_store_or_the_repository(
    open_folder: Path, host_secret: tuple[Path, bytes], ca_bundle: Path, bwrap: str,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the venv backend drops to uid 1000 only as root")
    secret, value = host_secret
    repo = hostile_repo(open_folder / "proj", SIX_LOCK)
    store_dir = open_folder / "store"
    other = open_store(str(open_folder / "other-store"))  # another store on this host
    env = {"AUDITOR_STORE": str(store_dir), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    if bwrap == "off":  # unisolated: unshare --net and a tmpfs over the store
        env["AUDITOR_BWRAP"] = "off"
    run_id = record_hostile(repo, env, secret, store_dir, other.blobs.root)
    original = show(repo, env, run_id)
    sha = output_sha(original)
    other.blobs.put_file(store_dir / "objects" / "sha256" / sha[:2] / sha[2:])
    other.close()
    assert (store_dir / "objects").stat().st_mode & 0o777 == 0o700
    cert = open_folder / "cert.json"
    res = audit("--json", "verify", run_id, "--backend", "venv", "--certificate", str(cert),
                cwd=repo, env=env, timeout=900)
    assert res.returncode == 1, res.stderr
    result = json.loads(res.stdout)["results"][0]
    assert result["verdict"]["level"] == "not-reproduced"
    rerun = show(repo, env, result["rerun_run"])
    assert_nothing_leaked(store_dir, value, rerun, original)
    stdout_ref = next(a for a in rerun["artifacts"] if a["name"] == "logs/stdout.txt")
    log = (store_dir / "objects" / "sha256" / stdout_ref["sha256"][:2]
           / stdout_ref["sha256"][2:]).read_text()
    hunt = json.loads(log.split("HUNT ", 1)[1].splitlines()[0])
    assert "read" not in hunt, hunt  # not one file of the stores or the repository
    # the weaker isolation, as it was, is in the stored record and the certificate
    sandbox = rerun["not_captured"]["sandbox"]
    notes = certificate_notes(cert)
    isolation = certificate_notes(cert, "isolation_notes")
    if bwrap == "on":
        assert "venv backend: bubblewrap" in sandbox, sandbox
        assert f"the store {store_dir} is not mounted" in sandbox, sandbox
        assert any("bubblewrap" in n for n in isolation), isolation
        return
    assert "venv backend: unisolated" in sandbox, sandbox
    assert "network removed with unshare --net" in sandbox, sandbox
    assert f"the store {store_dir} is hidden and not readable" in sandbox, sandbox
    assert any("unshare --net" in n for n in notes), notes
    assert any("hidden and not readable" in n for n in notes), notes
    assert any("unshare --net" in n for n in isolation), isolation


def test_venv_rerun_that_cannot_import_its_framework_is_could_not_verify(
    make_repo: Any, tmp_path: Path, ca_bundle: Path,
) -> None:
    # the lockfile leaves out a package the script imports: the rebuilt venv lacks it
    repo = make_repo({"t.py": "import json, pydantic\nprint(json.dumps({'loss': 1.0}))\n",
                      "requirements.lock": SIX_LOCK})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    res = audit("--json", "record", "--", PY, "t.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    res = audit("verify", run_id, "--backend", "venv", cwd=repo, env=env, timeout=600)
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert "failed before the training started" in res.stderr, res.stderr
    assert "ModuleNotFoundError: No module named 'pydantic'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr.split("error:", 1)[0]


def test_venv_verify_from_a_0700_clone_as_root(ca_bundle: Path, tmp_path: Path) -> None:
    """Issue 10's first hour: a clone made with mktemp -d (0700), store inside it. The
    script needs a package only its venv has: a rerun whose Python cannot read its venv
    falls back to the system prefix and fails to import it (before: not-reproduced)."""
    if os.geteuid() != 0:
        pytest.skip("only root's venv rerun switches to uid 1000")
    trainenv = tmp_path / "trainenv"
    subprocess.run([sys.executable, "-m", "venv", str(trainenv)], check=True)
    subprocess.run([str(trainenv / "bin" / "pip"), "install", "-q", "six==1.17.0"], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    folder = Path(tempfile.mkdtemp())
    try:
        assert folder.stat().st_mode & 0o777 == 0o700
        repo = folder / "p"
        script = ("import json, random, six\nrandom.seed(7)\nfor step in range(3):\n"
                  "    print(json.dumps({'step': step, 'x': random.random()}))\n"
                  "open('weights.dat', 'w').write(str(random.random()))\n")
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "t.py").write_text(script)
        (repo / "requirements.lock").write_text(SIX_LOCK)
        (repo / "weights.dat").write_text("last week's model\n")  # an earlier run's output
        git(repo, "add", "t.py", "requirements.lock")
        git(repo, "commit", "-q", "-m", "init")
        env = {"AUDITOR_CA_BUNDLE": str(ca_bundle)}  # the default store: .auditor in the clone
        res = audit("--json", "record", "--", str(trainenv / "bin" / "python"), "t.py",
                    cwd=repo, env=env)
        assert res.returncode == 0, res.stderr
        run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
        res = audit("--json", "verify", run_id, "--backend", "venv", cwd=repo, env=env,
                    timeout=600)
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)["results"][0]
        assert result["verdict"]["level"] == "reproduced-bitwise", result["verdict"]
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


SLEEPER = '''\
import json, os, sys, time
print(json.dumps({"step": 0, "loss": 1.0}), flush=True)
if os.getcwd() == "/work" or "auditor-rerun-" in os.getcwd():
    if os.getcwd() != "/work":
        open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
'''


def _wait_for(predicate: Any, seconds: float) -> Any:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return stat_line.split(") ", 1)[1][0] != "Z"


def _pid_running(script: str) -> int | None:
    """The host pid of the python process running ``script`` (in bubblewrap the rerun's
    own pid is another, and the host's /tmp, where SLEEPER writes it, is not the rerun's)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if script.encode() in argv and any(b"python" in a for a in argv[:1]):
            return int(entry.name)
    return None


@pytest.mark.parametrize("bwrap", ["on", "off"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_to_verify_removes_the_venv_rerun_and_its_scratch_folder(
    make_repo: Any, tmp_path: Path, ca_bundle: Path, sig: str, bwrap: str
) -> None:
    import glob
    import signal

    token = uuid.uuid4().hex[:12]
    script = f"sleeper_{token}.py"
    repo = make_repo({script: SLEEPER, "requirements.lock": SIX_LOCK})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    if bwrap == "off":
        env["AUDITOR_BWRAP"] = "off"
    pid_file = Path(tempfile.gettempdir()) / f"auditor-test-{token}.pid"
    res = audit("--json", "record", "--", PY, script, str(pid_file), cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    from tests.conftest import AUDIT, GIT_ENV, default_sigint

    proc = subprocess.Popen([AUDIT, "verify", run_id, "--backend", "venv"], cwd=repo,
                            env={**os.environ, **GIT_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        pattern = f"{tempfile.gettempdir()}/auditor-rerun-*/tree/{script}"
        scratch = Path(_wait_for(lambda: glob.glob(pattern), 300)[0]).parent.parent
        pid = int(_wait_for(lambda: _pid_running(script), 60))
        assert _alive(pid)
        proc.send_signal(getattr(signal, sig))
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pid_file.unlink(missing_ok=True)
    assert proc.returncode == 130, err
    assert "error: aborted" in err or "error: interrupted" in err, err
    assert not scratch.exists(), scratch
    assert not _alive(pid)
    opened = open_store(str(tmp_path / "store"))
    reruns = [opened.get_record(i) for i in opened.run_ids_reproducing(run_id)]
    opened.close()
    assert [r.identity.status for r in reruns] == ["failed"]  # a trace, never "running"


@pytest.mark.docker
def test_sigterm_to_verify_removes_the_container_and_its_scratch_folder(
    tmp_path: Path, base_image: tuple[str, str], ca_bundle: Path, torch_wheelhouse: Path,
    docker_client: Any,
) -> None:
    import glob
    import signal

    token = uuid.uuid4().hex[:12]
    script = f"sleeper_{token}.py"
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / script).write_text(SLEEPER)
    shutil.copy(FIXTURES / "train" / "requirements.lock", repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "sleeper")
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_BASE_IMAGE": base_image[0],
           "AUDITOR_WHEELHOUSE": str(torch_wheelhouse), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    res = audit("--json", "record", "--", PY, script, "unused", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    from tests.conftest import AUDIT, GIT_ENV

    def containers() -> list[Any]:
        return list(docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"auditor.run={run_id}"}))

    proc = subprocess.Popen([AUDIT, "verify", run_id, "--backend", "docker"], cwd=repo,
                            env={**os.environ, **GIT_ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pattern = f"{tempfile.gettempdir()}/auditor-rerun-*/tree/{script}"
        scratch = Path(_wait_for(lambda: glob.glob(pattern), 600)[0]).parent.parent
        _wait_for(lambda: [c for c in containers() if c.status == "running"], 120)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert containers() == []
    assert not scratch.exists(), scratch
