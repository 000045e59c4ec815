"""Checkpoints under ``audit record`` (issue 19 items 1-2): the attached API spools into the
probe folder and the recorder stores it; a resumed segment under ``audit record``; a step
without a checkpoint, a run without any, a resume with nothing to resume from (one line,
exit 2 through the wrapper) and a stored checkpoint altered behind our back (exit 3).
Real torch, real `audit`, a real SQLite store."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from auditor.core.errors import IntegrityError
from auditor.record import checkpoints as ck
from auditor.store import open_store
from tests.conftest import audit
from tests.integration.test_checkpoints import newest, repo, state_of

PY = sys.executable
pytestmark = pytest.mark.slow
__all__ = ["repo"]  # the fixture


def test_attached_checkpoints_resume_and_bad_input(repo: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    env = {"AUDITOR_STORE": str(store_dir)}
    res = audit("record", "--name", "ck", "--", PY, "train_ckpt.py", "--epochs", "4",
                cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    store = open_store(str(store_dir), create=False)
    rec = newest(store)
    refs = ck.list_checkpoints(rec)
    assert [c.step for c in refs] == [5, 10, 15, 20]

    # under audit record too, a resumed segment: restore at 10, stop at 15
    folder = ck.materialise(store.blobs, refs[1], tmp_path / "at10")
    seg = audit("record", "--name", "seg", "--", PY, "train_ckpt.py", "--epochs", "4",
                cwd=repo, env={**env, "AUDITOR_RESUME_FROM": str(folder),
                               "AUDITOR_STOP_AT": "15"})
    assert seg.returncode == 0, seg.stderr
    part = newest(store)
    snap = ck.resumed_snapshot(part)
    assert snap is not None and [c.step for c in ck.list_checkpoints(part)] == [15]
    assert ck.diff_states(state_of(store, refs[1]), ck.load_manifest(store.blobs, snap).state) == []
    assert ck.diff_states(state_of(store, refs[2]),
                          state_of(store, ck.list_checkpoints(part)[0])) == []

    # a step without a checkpoint names the nearest; a run without any says how to add them
    with pytest.raises(ck.NoCheckpointAt, match="nearest: step 5 and 10") as exc:
        ck.checkpoint_at(rec, 7)
    assert exc.value.exit_code == 2

    # resume requested, nothing there: one line, exit 2 (passed through by audit record)
    bad = audit("record", "--", PY, "train_ckpt.py", "--epochs", "4", cwd=repo,
                env={**env, "AUDITOR_RESUME_FROM": str(tmp_path / "nowhere")})
    assert bad.returncode == 2, bad.stderr
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("auditor: error:")]
    assert len(lines) == 1 and "resume requested but no checkpoint" in lines[0]
    assert "Traceback" not in bad.stderr
    assert ck.list_checkpoints(newest(store)) == []
    with pytest.raises(ck.NoCheckpoints, match="has no checkpoints") as none:
        ck.checkpoint_at(newest(store), 5)
    assert none.value.exit_code == 2

    # a stored checkpoint file altered behind our back: exit 3, named, before any use
    name = "checkpoints/step-00000020/model.safetensors"
    model = next(a for a in rec.artifacts if a.name == name)
    path = store.blobs.path_for(model.sha256)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checkpoint step 20 file model\.safetensors") as err:
        ck.verify_checkpoint(store.blobs, refs[3])
    assert err.value.exit_code == 3
    with pytest.raises(IntegrityError):
        ck.materialise(store.blobs, refs[3], tmp_path / "bad")
    shutil.rmtree(tmp_path / "bad", ignore_errors=True)
