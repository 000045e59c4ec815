"""``BlobStore.put_many``: a checkpoint's small objects stored behind one durability
barrier, with ``put_stream``'s guarantees object by object."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from auditor.core.errors import IntegrityError, StoreError
from auditor.store import blobs as blobs_mod
from auditor.store.blobs import BlobStore


def test_objects_are_stored_verified_private_and_no_temp_is_left(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s")
    items = [b"model" * 100, b"state", b"", b"model" * 100]  # a duplicate and an empty one
    out = store.put_many(items)
    assert out == [(hashlib.sha256(d).hexdigest(), len(d)) for d in items]
    for (sha, _), data in zip(out, items, strict=True):
        assert store.read_bytes(sha) == data
        assert stat.S_IMODE(store.path_for(sha).stat().st_mode) == 0o400
        assert stat.S_IMODE(store.path_for(sha).parent.stat().st_mode) == 0o700
    assert store.stray_temp_files() == []
    assert store.put_bytes(b"state") == out[1]  # put_bytes is put_many of one


def test_an_object_already_there_is_not_rewritten(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s")
    (sha, _), = store.put_many([b"weights"])
    before = store.path_for(sha).stat()
    store.put_many([b"weights", b"other"])
    after = store.path_for(sha).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_stray_temp_name_of_an_earlier_process_is_stepped_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "s")
    store.make_private()
    counter = iter(range(10))
    monkeypatch.setattr(blobs_mod, "_SERIAL", counter)
    stray = store.tmp / f"obj-{os.getpid()}-0"
    stray.write_bytes(b"half of an old write")
    (sha, _), = store.put_many([b"new"])
    assert store.read_bytes(sha) == b"new"
    assert stray.read_bytes() == b"half of an old write"  # left for `audit fsck --repair`
    assert store.stray_temp_files() == [stray]


def test_a_store_that_cannot_be_written_is_one_store_error_and_nothing_half_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "s")
    store.put_many([b"first"])

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs_mod.os, "write", full)  # a full disk mid-batch
    with pytest.raises(StoreError, match=r"cannot write to the store: .*No space left"):
        store.put_many([b"second", b"third"])
    monkeypatch.undo()
    assert not store.has(hashlib.sha256(b"second").hexdigest())
    assert store.stray_temp_files() == []  # the batch's temp files are removed
    assert store.read_bytes(hashlib.sha256(b"first").hexdigest()) == b"first"


def test_a_bad_digest_never_names_a_path(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError):
        BlobStore(tmp_path)._object_name("../../etc/passwd")


def _writer(root: str, seed: int) -> None:
    store = BlobStore(Path(root))
    for i in range(30):
        store.put_many([f"shared {i}".encode(), f"own {seed} {i}".encode()])


def test_two_processes_writing_the_same_objects_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "s"), n)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = BlobStore(tmp_path / "s")
    assert sum(1 for _ in store.iter_objects()) == 30 + 60
    assert all(claimed == actual for claimed, actual in store.object_digests())
    assert store.stray_temp_files() == []
