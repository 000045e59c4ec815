"""What `audit record` takes as code, data and output in real repositories, the way people
work: logs redirected into the repo (`> o1.txt 2>&1`, `| tee`), a second run in a repo
dirty with the first run's outputs, weights left untracked, hostile `--input`/`--output`
paths, FIFOs, an objects folder that turns read-only mid-run, and real signals.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from auditor.core.schema import RunRecord
from auditor.record.capture.git import rebuild_tree
from auditor.store import open_store
from tests.conftest import AUDIT, GIT_ENV, audit

PY = sys.executable
# Writes model.pt (binary, rewritten every run) and prints metrics lines.
TRAIN = (
    "import json, random, sys\n"
    "random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else 1)\n"
    "for step in range(3):\n"
    "    print(json.dumps({'step': step, 'loss': random.random()}), flush=True)\n"
    "open('model.pt', 'wb').write(bytes([0]) + random.randbytes(64))\n"
)


def shell(cmd: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command line the way a user types it (redirects, pipes) in bash."""
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env={**os.environ, **GIT_ENV, **env},
                          capture_output=True, text=True, timeout=300, check=False)


def records(store_dir: Path) -> list[RunRecord]:
    opened = open_store(str(store_dir), create=False)
    try:
        return [opened.get_record(r.id) for r in reversed(opened.list_runs())]
    finally:
        opened.close()


def names(rec: RunRecord, kind: str) -> set[str]:
    return {a.name for a in rec.artifacts if a.kind == kind}


@pytest.fixture
def proj(make_repo: Callable[..., Path], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = make_repo({"train.py": TRAIN, ".gitignore": ".auditor/\n"})
    return repo, {"AUDITOR_STORE": str(tmp_path / "store")}


def test_redirected_log_is_neither_source_nor_output(proj: tuple[Path, dict[str, str]]) -> None:
    repo, env = proj
    res = shell(f"{AUDIT} record -- {PY} train.py > o1.txt 2>&1", repo, env)
    assert res.returncode == 0, (repo / "o1.txt").read_text()
    assert "recorded" in (repo / "o1.txt").read_text()  # auditor's own lines are in it
    rec = records(Path(env["AUDITOR_STORE"]))[0]
    assert rec.code is not None
    assert "code/untracked/o1.txt" not in rec.code.untracked_artifacts
    assert "outputs/o1.txt" not in names(rec, "output")
    assert "outputs/model.pt" in names(rec, "output")
    assert "o1.txt" in rec.code.excluded
    assert "redirected here" in rec.not_captured["code.skipped.o1.txt"]
    shown = audit("show", rec.identity.id, cwd=repo, env=env)
    assert "o1.txt" in shown.stdout and "neither source nor output" in shown.stdout


def test_tee_log_is_neither_source_nor_output(proj: tuple[Path, dict[str, str]]) -> None:
    repo, env = proj
    res = shell(f"{AUDIT} record -- {PY} train.py 2>&1 | grep -v zzz | tee o2.txt", repo, env)
    assert res.returncode == 0, res.stderr
    rec = records(Path(env["AUDITOR_STORE"]))[0]
    assert rec.code is not None
    assert not any("o2.txt" in n for n in names(rec, "code") | names(rec, "output"))
    assert "piped into tee" in rec.not_captured["code.skipped.o2.txt"]


def test_second_run_in_dirty_repo_takes_old_outputs_as_outputs(
    proj: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, env = proj
    (repo / "notes.txt").write_text("an untracked note that is source\n")
    for seed in ("1", "2"):
        res = shell(f"{AUDIT} record -- {PY} train.py {seed} > log-{seed}.txt 2>&1", repo, env)
        assert res.returncode == 0, (repo / f"log-{seed}.txt").read_text()
    first, second = records(Path(env["AUDITOR_STORE"]))
    for rec in (first, second):
        assert rec.code is not None
        assert "outputs/model.pt" in names(rec, "output")
        assert "code/untracked/model.pt" not in rec.code.untracked_artifacts
        assert "code/untracked/notes.txt" in rec.code.untracked_artifacts
    assert second.code is not None
    # the first run's log is an ordinary untracked file now; the second run's own is not
    assert "code/untracked/log-1.txt" in second.code.untracked_artifacts
    assert "code/untracked/log-2.txt" not in second.code.untracked_artifacts
    assert "changed by it" in second.not_captured["code.skipped.model.pt"]
    # the tree the rerun gets holds no model.pt, and still matches the recorded root
    opened = open_store(env["AUDITOR_STORE"], create=False)
    try:
        dest = rebuild_tree(second.code, {a.name: a for a in second.artifacts}, opened.blobs,
                            tmp_path / "rebuilt")
    finally:
        opened.close()
    assert (dest / "notes.txt").is_file() and not (dest / "model.pt").exists()
    shown = audit("show", second.identity.id, cwd=repo, env=env).stdout
    assert "untracked files (stored as code)" in shown and "notes.txt" in shown


def test_large_binary_untracked_file_is_data_not_source(
    proj: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, env = proj
    (repo / "weights").mkdir()
    (repo / "weights" / "pretrained.bin").write_bytes(b"\0" + os.urandom(2 << 20))
    (repo / "big.txt").write_text("a" * (2 << 20))  # large but text: still source
    script = "print(len(open('weights/pretrained.bin', 'rb').read()))\n"
    (repo / "use.py").write_text(script)
    res = audit("--json", "record", "--", PY, "use.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    rec = records(Path(env["AUDITOR_STORE"]))[0]
    assert rec.code is not None
    assert "code/untracked/weights/pretrained.bin" not in rec.code.untracked_artifacts
    assert "code/untracked/big.txt" in rec.code.untracked_artifacts
    data = {d.path: d for d in rec.data}
    assert data["weights/pretrained.bin"].origin == "untracked"
    assert data["weights/pretrained.bin"].size == (2 << 20) + 1
    opened = open_store(env["AUDITOR_STORE"], create=False)
    try:  # no object holds the weights' bytes: they are fingerprinted, not stored
        assert not opened.blobs.has(data["weights/pretrained.bin"].sha256)
    finally:
        opened.close()
    shown = audit("show", rec.identity.id, cwd=repo, env=env).stdout
    assert "weights/pretrained.bin" in shown and "fingerprinted as data" in shown
    assert f"big.txt{' ' * 16}{2 << 20} B" in shown


@pytest.mark.parametrize("flag", ["--output", "--input"])
@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../../etc/shadow", "link"])
def test_paths_outside_the_tree_are_refused(
    proj: tuple[Path, dict[str, str]], flag: str, target: str
) -> None:
    repo, env = proj
    (repo / "link").symlink_to("/etc/shadow")
    res = audit("record", flag, target, "--", PY, "train.py", cwd=repo, env=env)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {flag} {target}: /etc/shadow is outside the project")
    assert res.stderr.count("\n") == 1 and "--allow-outside-tree" in res.stderr
    assert not (repo / "model.pt").exists()  # refused before running anything
    store = Path(env["AUDITOR_STORE"])
    assert not store.exists() or not records(store)


def test_outside_tree_allowed_by_flag_is_recorded(
    proj: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, env = proj
    outside = tmp_path / "shared-data.csv"
    outside.write_text("x,y\n1,2\n")
    res = audit("record", "--allow-outside-tree", "--input", str(outside), "--", PY, "train.py",
                cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    rec = records(Path(env["AUDITOR_STORE"]))[0]
    assert rec.command.outside_tree == (f"--input {outside}",)
    assert "outside the tree" in audit("show", rec.identity.id, cwd=repo, env=env).stdout


def test_fifo_and_device_inputs_are_refused_by_kind(proj: tuple[Path, dict[str, str]]) -> None:
    repo, env = proj
    (repo / "data").mkdir()
    (repo / "data" / "a.csv").write_text("1\n")
    os.mkfifo(repo / "data" / "pipe")
    started = time.monotonic()
    res = audit("record", "--input", "data", "--", PY, "train.py", cwd=repo, env=env, timeout=60)
    assert time.monotonic() - started < 60
    assert res.returncode == 2, res.stderr
    assert res.stderr == "error: input data: pipe is not a regular file: FIFO\n"
    os.mkfifo(repo / "fifo")
    res = audit("record", "--input", "fifo", "--", PY, "train.py", cwd=repo, env=env, timeout=60)
    assert res.stderr == "error: input fifo: not a regular file: FIFO\n"
    res = audit("record", "--allow-outside-tree", "--input", "/dev/zero", "--", PY, "train.py",
                cwd=repo, env=env, timeout=60)
    assert res.stderr == "error: input /dev/zero: not a regular file: character device\n"
    # an untracked FIFO in the tree (no --input) is skipped, never read
    (repo / "data" / "pipe").unlink()
    res = audit("record", "--", PY, "train.py", cwd=repo, env=env, timeout=120)
    assert res.returncode == 0, res.stderr


READ_ONLY_MID_RUN = (
    "import json, os, sys\n"
    "store = os.environ['RO_STORE']  # the store folder, to break it\n"
    "for d, _dirs, _files in os.walk(os.path.join(store, 'objects')):\n"
    "    os.chmod(d, 0o555)\n"
    "os.chmod(os.path.join(store, 'objects'), 0o555)\n"
    "print(json.dumps({'step': 0, 'loss': 0.25}), flush=True)\n"
    "print('to stderr', file=sys.stderr)\n"
    "open('model.pt', 'wb').write(b'weights')\n"
)


# Root ignores file modes; without CAP_DAC_OVERRIDE (dropped from the bounding set) it obeys
# them as any user does, so a 0555 folder really is read-only to the recorder.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_objects_folder_read_only_mid_run_keeps_what_it_can(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo({"train.py": READ_ONLY_MID_RUN, ".gitignore": ".auditor/\n"})
    store = tmp_path / "store"
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": str(store), "RO_STORE": str(store),
           "TMPDIR": str(tmp_path)}
    res = subprocess.run(
        [*(NO_DAC if os.geteuid() == 0 else []), AUDIT, "record", "--", PY, "train.py"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    for d, _dirs, _files in os.walk(store):
        os.chmod(d, 0o755)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: run ") and "stored without" in err
    assert "logs/stdout.txt" in err and "cannot write to the store" in err
    assert "Permission denied" in err and "the command exited 0" in err
    assert "recorder process died" not in res.stderr
    rec = records(store)[0]
    assert rec.identity.status == "finished" and rec.identity.exit_code == 0
    assert rec.metrics.final == {"loss": 0.25}
    assert "outputs/model.pt" in rec.not_captured["store"]
    kept = Path(err.split("its logs are kept in ")[1].split(" ")[0].rstrip(";)"))
    assert "to stderr" in (kept / "stderr.txt").read_text()
    assert '"loss": 0.25' in (kept / "stdout.txt").read_text()


SLEEPER = (
    "import os, pathlib, time\n"
    "pathlib.Path('probe.txt').write_text(os.environ['AUDITOR_PROBE_DIR'])\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_removes_probe_folder_and_marks_killed(
    make_repo: Callable[..., Path], tmp_path: Path, sig: signal.Signals
) -> None:
    repo = make_repo({"sleep.py": SLEEPER, ".gitignore": "probe.txt\n"})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": str(tmp_path / "store"), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([AUDIT, "record", "--", PY, "sleep.py"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (repo / "probe.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    probe = Path((repo / "probe.txt").read_text())
    assert probe.is_dir() and probe.parent == tmp
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert b"site-packages" not in err and b"auditor/" not in err  # only the script's own
    assert list(tmp.iterdir()) == []
    rec = records(tmp_path / "store")[0]
    assert rec.identity.status == "killed"


def test_signal_before_the_command_starts_removes_everything(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo({"sleep.py": SLEEPER})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": str(tmp_path / "store"), "TMPDIR": str(tmp)}
    # a slow interpreter: the recorder is inside its capture (`pip inspect`) when signalled
    slow = tmp_path / "slowpy"
    marker = tmp_path / "capturing"
    slow.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 30\nexec {shlex.quote(PY)} \"$@\"\n")
    slow.chmod(0o755)
    proc = subprocess.Popen([AUDIT, "record", "--", str(slow), "sleep.py"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    assert not (repo / "probe.txt").exists()
    assert list(tmp.iterdir()) == []
    found = records(tmp_path / "store") if (tmp_path / "store" / "store.db").exists() else []
    assert all(r.identity.status != "running" for r in found)


LINKER = (
    "import os\n"
    "os.makedirs('out', exist_ok=True)\n"
    "os.symlink('/etc/shadow', 'out/shadow')\n"
    "os.symlink('/etc', 'etc-link')\n"
    "open('out/model.bin', 'wb').write(b'w')\n"
)


@pytest.mark.parametrize("declared", [(), ("--output", "out")])
def test_links_made_by_the_run_are_never_followed_out(
    make_repo: Callable[..., Path], tmp_path: Path, declared: tuple[str, ...]
) -> None:
    repo = make_repo({"link.py": LINKER})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("record", *declared, "--", PY, "link.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    rec = records(tmp_path / "store")[0]
    assert {a.name for a in rec.outputs()} == {"outputs/out/model.bin"}
    opened = open_store(env["AUDITOR_STORE"], create=False)
    try:
        shadow = Path("/etc/shadow")
        if shadow.is_file() and os.access(shadow, os.R_OK):
            from auditor.store.blobs import sha256_file

            assert not opened.blobs.has(sha256_file(shadow))
    finally:
        opened.close()
