"""The lease a verify keeps on its rerun's scratch folder (issue 16, item 14), with real
processes, folders and a real SQLite store: a dead holder is reaped, a live one never, a
reused pid is not mistaken for the holder, and a lease of another store keeps its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.rerun import lease
from auditor.rerun.sandbox import cleanup, scratch_dir
from auditor.store import SqlStore, open_store
from tests.factories import make_record


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = open_store(str(tmp_path / "store"))
    yield opened
    opened.close()


@pytest.fixture
def folder() -> Iterator[Path]:
    tmp = scratch_dir()  # a real <tmp>/auditor-rerun-* folder, as a rerun makes it
    yield Path(tmp.name)
    cleanup(Path(tmp.name))
    tmp.cleanup()


def _lease_of(folder: Path, proc: subprocess.Popen[bytes], store: SqlStore, run: str) -> None:
    """The lease ``proc`` would have written (as ``lease.take`` does, for another pid)."""
    lease.take(folder, store.url, "venv")
    data = json.loads((folder / lease.LEASE).read_text())
    data.update(pid=proc.pid, start=getattr(proc, "start", None) or lease.start_time(proc.pid),
                run=run)
    (folder / lease.LEASE).write_text(json.dumps(data))


def _dead_holder() -> subprocess.Popen[bytes]:
    """A process that held a lease and is gone (its start time taken while it lived)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.start = lease.start_time(proc.pid)  # type: ignore[attr-defined]
    proc.kill()
    proc.wait()
    return proc


def _running_rerun(store: SqlStore) -> str:
    original = make_record()
    store.put_record(original.model_copy(update={"identity": original.identity.model_copy(
        update={"status": "finished"})}))
    rerun = make_record(reproduces=original.identity.id)
    store.put_record(rerun)
    return rerun.identity.id


def test_a_dead_verify_is_reaped_and_a_live_one_is_not(store: SqlStore, folder: Path) -> None:
    run = _running_rerun(store)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lease_of(folder, proc, store, run)
        assert lease.alive(lease.read(folder) or {})
        assert lease.reap_dead(store) == []  # alive: untouched
        assert folder.exists() and store.get_record(run).identity.status == "running"
    finally:
        proc.kill()
        proc.wait()
    said = lease.reap_dead(store)
    assert said and f"rerun {run} marked crashed" in said[0], said
    assert not folder.exists()
    record = store.get_record(run)
    assert record.identity.status == "crashed"
    assert "died during the rerun" in record.not_captured["end"]


def test_a_reused_pid_is_not_the_holder(store: SqlStore, folder: Path) -> None:
    lease.take(folder, store.url, "venv")
    data = json.loads((folder / lease.LEASE).read_text())
    assert lease.alive(data)  # this very process
    data["start"] = str(int(data["start"]) - 1)  # same pid, started at another time
    assert not lease.alive(data)


def test_a_lease_of_another_store_keeps_its_folder(
    store: SqlStore, folder: Path, tmp_path: Path
) -> None:
    other = open_store(str(tmp_path / "other"))
    try:
        run = _running_rerun(other)
        _lease_of(folder, _dead_holder(), other, run)
        assert lease.reap_dead(store) == []  # not this store's rerun
        assert folder.exists() and other.get_record(run).identity.status == "running"
        assert lease.reap_dead(other)  # its own store reaps it
        assert not folder.exists() and other.get_record(run).identity.status == "crashed"
    finally:
        other.close()


def test_a_lease_that_is_not_ours_is_ignored(store: SqlStore, folder: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file of another user")
    _lease_of(folder, _dead_holder(), store, _running_rerun(store))
    os.chown(folder / lease.LEASE, 1000, 1000)  # planted by another user
    assert lease.read(folder) is None and lease.reap_dead(store) == []
    assert folder.exists()
    (folder / lease.LEASE).unlink()
    (folder / lease.LEASE).symlink_to("/etc/hostname")  # a link is never followed
    assert lease.read(folder) is None
