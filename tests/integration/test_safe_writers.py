"""Every path a command writes goes through one safe writer (issue 16 item 11).

The writing options are found by walking the real ``audit`` command tree for the type
``cli.options.Target``; each must have a case below, and every other path option must be
listed as read-only, so a new writing option without a case fails ``test_every_writing
option_is_covered``. Each case points the option at a character device (a node with
/dev/full's numbers, made in the test folder), a symlink to a file outside, a FIFO (the
command runs under a timeout: it must not block) and, for files, ``/proc/self/mem``: exit
2, one ``error:`` line naming the path, no traceback, nothing replaced or written through.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from auditor.cli.main import main
from auditor.cli.options import Target
from auditor.core.keys import generate_keypair
from auditor.store import open_store
from tests.conftest import FIXTURES, audit
from tests.uifactory import put_run

RESULT = FIXTURES / "verify" / "bitwise.json"
RUN_A, RUN_B = "safe-a", "safe-b"  # run names in the case store

# (command, parameter) -> the argv that makes the command write TARGET (a placeholder)
Argv = Callable[[str, dict[str, str]], list[str]]
CASES: dict[tuple[str, str], Argv] = {
    ("lock", "output"): lambda t, _: ["lock", "--from", "requirements.in", "-o", t],
    ("compare", "html_path"): lambda t, r: ["compare", r[RUN_A], r[RUN_B], "--html", t],
    ("verify", "html_path"): lambda t, r: ["verify", r[RUN_A], "--html", t],
    ("verify", "markdown_path"): lambda t, r: ["verify", r[RUN_A], "--markdown", t],
    ("verify", "junit_path"): lambda t, r: ["verify", r[RUN_A], "--junit", t],
    ("verify", "certificate"): lambda t, r: ["verify", r[RUN_A], "--certificate", t],
    ("verify", "report_dir"): lambda t, r: ["verify", r[RUN_A], "--report-dir", t],
    ("verify", "emit"): lambda t, r: ["verify", r[RUN_A], "--executor", "kubernetes",
                                      "--emit", t],
    ("report", "html_path"): lambda t, _: ["report", "--from-json", str(RESULT), "--html", t],
    ("report", "markdown_path"): lambda t, _: ["report", "--from-json", str(RESULT),
                                                "--markdown", t],
    ("report", "junit_path"): lambda t, _: ["report", "--from-json", str(RESULT), "--junit", t],
    ("keys generate", "directory"): lambda t, _: ["keys", "generate", "--dir", t],
    ("ci init", "output"): lambda t, _: ["ci", "init", "--output", t, "--force"],
    ("batch show", "junit"): lambda t, _: ["batch", "show", "nightly-1", "--junit", t],
    ("batch show", "markdown"): lambda t, _: ["batch", "show", "nightly-1", "--markdown", t],
    ("checkout", "dest"): lambda t, r: ["checkout", r[RUN_A], t],
    ("certificate export", "cert_out"): lambda t, r: ["certificate", "export", r[RUN_A],
                                                       "--certificate", t],
    ("certificate export", "vsa_out"): lambda t, r: ["certificate", "export", r[RUN_A],
                                                      "--vsa", t],
    ("certificate export", "model_out"): lambda t, r: ["certificate", "export", r[RUN_A],
                                                        "--model-signature", t],
}

# path options that are only read (a new path option must be classified here or above)
READS = {
    ("lock", "source"), ("lock", "find_links"), ("lock", "lint_file"),
    ("build", "wheelhouse"), ("build", "ca_bundle"),
    ("rerun", "wheelhouse"), ("rerun", "ca_bundle"), ("rerun", "policy_path"),
    ("compare", "policy_path"),
    ("verify", "wheelhouse"), ("verify", "ca_bundle"), ("verify", "policy_path"),
    ("verify", "sign_key"),
    ("report", "from_json"), ("report", "keys"),
    ("gate", "artifacts"), ("gate", "policy_path"), ("gate", "keys"), ("gate", "attestations"),
    ("certificate export", "key"), ("certificate export", "trust"),
    ("certificate verify", "cert"), ("certificate verify", "keys"),
    ("certificate verify", "artifacts"),
    ("record", "inputs"), ("record", "outputs"), ("record", "code_dir"),
    ("fsck", "keys"), ("push", "key"), ("pull", "key"), ("push", "trust"), ("pull", "trust"),
    ("preflight", "inputs"), ("init", "inputs"), ("init", "find_links"),
}

# folders auditor manages with a writer of their own (content-addressed entries written to a
# temporary name and renamed under a file lock, like the store's objects)
MANAGED = {("build", "wheel_cache"), ("rerun", "wheel_cache"), ("verify", "wheel_cache")}


def _commands(group: click.Group, ctx: click.Context,
              prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _commands(command, ctx, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def path_options() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(writing options, other path options) of every command of ``audit``."""
    writes, others = set(), set()
    for name, command in _commands(main, click.Context(main)):
        for param in command.params:
            if isinstance(param.type, Target):
                writes.add((name, str(param.name)))
            elif isinstance(param.type, click.Path):
                others.add((name, str(param.name)))
    return writes, others


def test_every_writing_option_is_covered() -> None:
    writes, others = path_options()
    assert writes == set(CASES), "a writing option without a case (or a stale case)"
    assert others == READS | MANAGED, (
        "a path option neither marked Target nor listed as read-only or managed")


# -- the targets --------------------------------------------------------------------------
def make_target(tmp: Path, kind: str) -> Path:
    if kind == "proc":
        return Path("/proc/self/mem")
    path = tmp / "targets" / f"t-{kind}"
    path.parent.mkdir(exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        victim = tmp / "outside" / "victim.txt"
        victim.parent.mkdir(exist_ok=True)
        victim.write_text("keep me\n")
        path.symlink_to(victim)
    elif kind == "device" and os.geteuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    else:
        return Path("/dev/full")  # not root: the system's own (we cannot replace it)
    return path


def fingerprint(path: Path) -> tuple[int, int, int, str]:
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return st.st_mode, st.st_ino, st.st_rdev, link


@pytest.fixture(scope="module")
def case_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("safe-store")
    store = open_store(str(root / "store"))
    runs = {RUN_A: put_run(store, name=RUN_A).identity.id,
            RUN_B: put_run(store, name=RUN_B, minute=1).identity.id}
    store.close()
    return {**runs, "_store": str(root / "store")}


def one_line(res: subprocess.CompletedProcess[str], code: int) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "internal error" not in lines[0] and "Traceback" not in res.stderr
    return lines[0]


KINDS = ("device", "symlink", "fifo", "proc")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", sorted(CASES), ids=lambda o: "-".join(o).replace(" ", "-"))
def test_a_writer_refuses_a_special_target(tmp_path: Path, case_store: dict[str, str],
                                           option: tuple[str, str], kind: str) -> None:
    (tmp_path / "requirements.in").write_text("six==1.17.0\n")
    target = make_target(tmp_path, kind)
    before = fingerprint(target)
    argv = CASES[option](str(target), case_store)
    res = audit("--store", case_store["_store"], *argv, cwd=tmp_path, timeout=60)  # FIFO: no
    line = one_line(res, 2)  # block
    assert str(target) in line, line
    assert fingerprint(target) == before  # not replaced, not written through
    if kind == "symlink":
        assert (tmp_path / "outside" / "victim.txt").read_text() == "keep me\n"
    left = [p.name for p in (tmp_path / "targets").glob(".*")] if kind != "proc" else []
    assert left == [], left  # no temporary file left beside the target


def test_report_junit_to_proc_self_mem_is_one_line(tmp_path: Path) -> None:
    res = audit("report", "--from-json", str(RESULT), "--junit", "/proc/self/mem", cwd=tmp_path)
    assert "/proc/self/mem: cannot write" in one_line(res, 2)


def test_keys_generate_into_dev_full_is_one_line(tmp_path: Path) -> None:
    res = audit("keys", "generate", "--dir", "/dev/full", cwd=tmp_path)
    assert "/dev/full: refusing to write into a character device" in one_line(res, 2)
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)


@pytest.mark.parametrize("command", ["build", "rerun", "verify"])
def test_a_wheel_cache_that_is_not_a_folder_is_one_line(tmp_path: Path, case_store: dict[str, str],
                                                        command: str) -> None:
    """The wheel cache is written (its own writer, under a lock): a device or a link there is
    refused before the store opens, in one line, and left as it was."""
    for kind in ("device", "symlink"):
        target = make_target(tmp_path, kind)
        before = fingerprint(target)
        res = audit("--store", case_store["_store"], command, case_store[RUN_A],
                    "--wheel-cache", str(target), cwd=tmp_path, timeout=60)
        assert str(target) in one_line(res, 2)
        assert fingerprint(target) == before


def test_a_writer_writes_regular_files_whole_and_replaces_them(tmp_path: Path) -> None:
    """The safe writer still writes: a new file, and an old regular file replaced."""
    old = tmp_path / "old.xml"
    old.write_text("old\n")
    res = audit("report", "--from-json", str(RESULT), "--junit", str(old), "--markdown",
                str(tmp_path / "new" / "sum.md"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert old.read_text().startswith("<?xml") and (tmp_path / "new" / "sum.md").stat().st_size
    keys = audit("keys", "generate", "--dir", str(tmp_path / "k"), cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    assert stat.S_IMODE((tmp_path / "k" / "auditor.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["auditor.key", "auditor.pub"]
    again = audit("keys", "generate", "--dir", str(tmp_path / "k"), cwd=tmp_path)
    assert "already exists" in one_line(again, 2)


# -- every input of a verify, before any build --------------------------------------------
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A recorded run whose lockfile (torch) needs a cold build of minutes."""
    from tests.conftest import commit_repo

    root = tmp_path_factory.mktemp("torch-run")
    repo = commit_repo(root / "repo", {
        "requirements.lock": (FIXTURES / "train" / "requirements.lock").read_text(),
        "t.py": 'print(\'{"step": 0, "loss": 1.0}\')\n'})
    env = {"AUDITOR_STORE": str(root / "store")}
    res = audit("--json", "record", "--", sys.executable, "t.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    return {"run": run_id, "store": str(root / "store"), "repo": str(repo)}


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    private, public = generate_keypair(tmp / "keys")
    (tmp / "garbage.key").write_text("not a key\n")
    os.mkfifo(tmp / "fifo.key")
    os.mkfifo(tmp / "fifo.pem")
    (tmp / "bad.toml").write_text("[verify\n")
    (tmp / "target").symlink_to(private)
    return {
        "missing key": (["--sign-key", str(tmp / "nope.key")], "private key file not found"),
        "public key": (["--sign-key", str(public)], "is a public key"),
        "garbage key": (["--sign-key", str(tmp / "garbage.key")], "not a PEM private key"),
        "fifo key": (["--sign-key", str(tmp / "fifo.key")], "FIFO"),
        "policy": (["--policy", str(tmp / "bad.toml")], "bad.toml"),
        "report target": (["--junit", str(tmp / "target")], "symbolic link"),
        "report folder": (["--report-dir", str(private)], "regular file"),
        "certificate": (["--certificate", "/proc/self/mem"], "cannot write"),
        "ca bundle": (["--ca-bundle", str(tmp / "fifo.pem")], "is a FIFO, not a CA bundle"),
        "wheelhouse": (["--wheelhouse", str(private)], "is not a folder"),
    }


@pytest.mark.slow
def test_every_verify_input_is_checked_before_any_build(tmp_path: Path,
                                                        torch_run: dict[str, str]) -> None:
    env = {"AUDITOR_STORE": torch_run["store"], "AUDITOR_VENV_ROOT": str(tmp_path / "envs")}
    listed = audit("--json", "list", "--limit", "0", cwd=tmp_path, env=env)
    for name, (flags, words) in _bad_inputs(tmp_path).items():
        start = time.monotonic()
        res = audit("verify", torch_run["run"], "--backend", "venv", "--no-cache", *flags,
                    cwd=Path(torch_run["repo"]), env=env, timeout=60)  # a build: minutes
        took = time.monotonic() - start
        assert words in one_line(res, 2), name
        assert took < 20, (name, took)  # the process start only, on a loaded 2-core machine
    after = audit("--json", "list", "--limit", "0", cwd=tmp_path, env=env)
    assert after.stdout == listed.stdout  # no rerun was recorded
    assert not (tmp_path / "envs").exists()  # no environment was built


def test_the_python_api_checks_the_signing_key_before_the_build(
        tmp_path: Path, torch_run: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.core.errors import InputError
    from auditor.core.policy import Policy
    from auditor.verify import VerifyOptions, verify

    (tmp_path / "bad.key").write_text("nope\n")
    monkeypatch.setenv("AUDITOR_VENV_ROOT", str(tmp_path / "envs"))
    store = open_store(torch_run["store"], create=False)
    try:
        record = store.get_record(torch_run["run"])
        with pytest.raises(InputError, match="not a PEM private key"):
            verify(store, record, Policy(), VerifyOptions(backend="venv",
                                                          sign_key=tmp_path / "bad.key"))
    finally:
        store.close()
    assert not (tmp_path / "envs").exists()
