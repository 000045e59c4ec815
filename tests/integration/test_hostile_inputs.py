"""Hostile inputs to the real `audit` command (issue 8: findings 8, DoS and faults).

Each case is one clear ``error:`` line on stderr and a documented exit code, never a
traceback or an ``internal error``, and nothing outside the named file is touched. Special
files are made in the test's own folder (a FIFO, a symlink, a character device node with
/dev/full's numbers), never the system's.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from auditor.core.keys import generate_keypair
from auditor.store import open_store
from tests.conftest import FIXTURES, audit

RESULT = FIXTURES / "verify" / "bitwise.json"


def one_error(res: subprocess.CompletedProcess[str], code: int) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "internal error" not in lines[0] and "Traceback" not in res.stderr
    return lines[0]


def special(tmp: Path, kind: str) -> Path:
    path = tmp / f"target-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (tmp / "victim.txt").write_text("keep me\n")
        path.symlink_to(tmp / "victim.txt")
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    else:
        path.mkdir()
    return path


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    opened = open_store(str(tmp_path / "store"))
    opened.close()
    return tmp_path / "store"


# -- finding 8: report writers never replace special files ----------------------------------
@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
@pytest.mark.parametrize("flag", ["--html", "--markdown", "--junit"])
def test_report_writers_refuse_special_targets(tmp_path: Path, kind: str, flag: str) -> None:
    target = special(tmp_path, kind)
    before = os.lstat(target)
    res = audit("report", "--from-json", str(RESULT), flag, str(target), cwd=tmp_path)
    assert "refusing to replace a" in one_error(res, 2)
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # untouched
    if kind == "symlink":
        assert (tmp_path / "victim.txt").read_text() == "keep me\n"


def test_dash_writes_the_report_to_stdout(tmp_path: Path) -> None:
    res = audit("report", "--from-json", str(RESULT), "--junit", "-", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.lstrip().startswith("<?xml") and "<testsuites" in res.stdout
    assert not (tmp_path / "-").exists()


def test_verify_refuses_a_special_certificate_target_before_any_work(
    tmp_path: Path, store_dir: Path
) -> None:
    target = special(tmp_path, "fifo")
    res = audit("--store", str(store_dir), "verify", "0123456789abcdef", "--certificate",
                str(target), cwd=tmp_path)
    assert "FIFO" in one_error(res, 2)


# -- bounded reads of what we parse -----------------------------------------------------------
def test_a_gate_policy_key_at_dev_zero_is_refused_not_read(tmp_path: Path,
                                                          store_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    policy = tmp_path / "gate.toml"
    policy.write_text('trusted_keys = ["/dev/zero"]\n')
    res = audit("--store", str(store_dir), "gate", "model.bin", "--policy", str(policy),
                cwd=tmp_path, timeout=60)
    assert "/dev/zero: is a character device, not a public key file" in one_error(res, 2)


def test_a_key_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path,
                                                          store_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    fifo = special(tmp_path, "fifo")
    res = audit("--store", str(store_dir), "gate", "model.bin", "--key", str(fifo),
                cwd=tmp_path, timeout=60)
    assert "is a FIFO" in one_error(res, 2)


def test_a_huge_key_file_is_refused(tmp_path: Path, store_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    big = tmp_path / "big.pub"
    big.write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 200_000)
    res = audit("--store", str(store_dir), "gate", "model.bin", "--key", str(big), cwd=tmp_path)
    assert "larger than" in one_error(res, 2)


# -- internal errors that were (issue 8, "Internal errors") -----------------------------------
def test_a_policy_path_that_is_a_folder(tmp_path: Path, store_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    (tmp_path / "pol").mkdir()
    res = audit("--store", str(store_dir), "gate", "model.bin", "--policy", "pol", cwd=tmp_path)
    assert "pol" in one_error(res, 2)
    res = audit("--store", str(store_dir), "verify", "0123456789ab", "--policy", "pol",
                cwd=tmp_path)
    assert "pol" in one_error(res, 2)


@pytest.mark.parametrize(("text", "message"), [
    ("verify = 3\n", "'verify' must be a table"),
    ('[verify]\nbitwise = "yes"\n', "bitwise"),
    ('[verify]\ncompare_logs = 0\n', "compare_logs"),
    ('[verify]\nmetric_tolerance = {rtol = "1e-3", atol = 0}\n', "rtol"),
])
def test_policy_values_of_the_wrong_type_are_refused(tmp_path: Path, store_dir: Path,
                                                     text: str, message: str) -> None:
    (tmp_path / "auditor.toml").write_text(text)
    res = audit("--store", str(store_dir), "verify", "0123456789ab", cwd=tmp_path)
    assert message in one_error(res, 2)


@pytest.mark.parametrize(("text", "message"), [
    ('require_signature = "no"\n', "require_signature"),
    ('max_age_days = "90"\n', "max_age_days"),
])
def test_gate_policy_values_of_the_wrong_type_are_refused(tmp_path: Path, store_dir: Path,
                                                          text: str, message: str) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    (tmp_path / "gate.toml").write_text(text)
    res = audit("--store", str(store_dir), "gate", "model.bin", "--policy", "gate.toml",
                cwd=tmp_path)
    assert message in one_error(res, 2)


def test_checkout_to_a_file(tmp_path: Path, store_dir: Path) -> None:
    (tmp_path / "dest").write_text("x")
    res = audit("--store", str(store_dir), "checkout", "0123456789ab", "dest", cwd=tmp_path)
    one_error(res, 2)


def test_an_unsupported_store_url(tmp_path: Path) -> None:
    res = audit("--store", "mysql://u:p@127.0.0.1/db", "list", cwd=tmp_path)
    assert "unsupported store URL mysql://" in one_error(res, 2)
    assert "u:p" not in res.stderr  # no credentials echoed


def test_report_with_a_10k_character_id(tmp_path: Path, store_dir: Path) -> None:
    res = audit("--store", str(store_dir), "report", "a" * 10_000, "--html", "r.html",
                cwd=tmp_path)
    assert "invalid run id" in one_error(res, 2)
    assert len(res.stderr) < 400


def test_report_of_a_missing_certificate_file_says_so(tmp_path: Path, store_dir: Path) -> None:
    res = audit("--store", str(store_dir), "report", "missing.cert.json", "--html", "r.html",
                cwd=tmp_path)
    line = one_error(res, 2)
    assert "missing.cert.json: certificate not found" in line and "invalid run id" not in line


def test_the_key_hint_names_a_command_that_exists(tmp_path: Path, store_dir: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"w")
    res = audit("--store", str(store_dir), "gate", "model.bin", "--key", "nope.pub",
                cwd=tmp_path)
    line = one_error(res, 2)
    assert "audit keys generate" in line and "keygen" not in line
    _, pub = generate_keypair(tmp_path / "k")
    assert audit("keys", "generate", "--help", cwd=tmp_path).returncode == 0
    assert pub.exists()


def test_an_unchecked_certificate_is_never_rendered_silently(tmp_path: Path,
                                                             store_dir: Path) -> None:
    from tests.unit.test_gate import World

    store = open_store(str(store_dir))
    key, pub = generate_keypair(tmp_path / "k", "signer")
    _, other = generate_keypair(tmp_path / "k", "other")
    world = World(tmp_path, store, key, pub, other)
    _, sha = world.artifact("model.bin", b"w")
    cert = tmp_path / "model.cert.json"
    cert.write_bytes(world.envelope([sha]))
    store.close()
    res = audit("--store", str(store_dir), "report", str(cert), "--html", "r.html", cwd=tmp_path)
    assert "warning: " in res.stderr and "signature NOT checked (no --key)" in res.stderr
    assert res.returncode == 2 and "has not been verified yet" in res.stderr  # nothing rendered
    res = audit("--store", str(store_dir), "report", str(cert), "--key", str(other), "--html",
                "r.html", cwd=tmp_path)
    assert "does not verify" in one_error(res, 3)
    assert not (tmp_path / "r.html").exists()
