"""A rerun's checkpoint spool is untrusted input (issue 19): the host stores a spooled
checkpoint only when every file is a regular file inside the probe folder that hashes to
what its manifest says; a link, a lying manifest, a file name that leaves the folder or a
folder killed before its manifest is left out with a warning, never followed or stored
under a wrong digest. Real files, the real blob store, the rerun's own ``open_inside``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from auditor.core.errors import IntegrityError
from auditor.record import checkpoint_io as cio
from auditor.record.checkpoints import diff_states, ingest_spool, materialise, verify_checkpoint
from auditor.rerun.ingest import open_inside
from auditor.store.blobs import BlobStore


def spool(root: Path, step: int) -> Path:
    model = torch.nn.Linear(3, 2)
    files = cio.spool_api(root / cio.step_dir(step), step, model=model, optimizer=None,
                          scheduler=None, generators=[], extra=None, metrics={},
                          loaders=None)
    cio.finish_spool(root / cio.step_dir(step), step, "api", files)
    return root / cio.step_dir(step)


def test_a_good_spool_is_stored_and_materialises_identically(tmp_path: Path) -> None:
    probe = tmp_path / "probe" / "checkpoints"
    folder = spool(probe, 5)
    blobs = BlobStore(tmp_path / "store")
    got = ingest_spool(blobs, probe, opener=open_inside)
    assert got.warnings == [] and [c.step for c in got.checkpoints] == [5]
    assert {a.name for a in got.artifacts} == {
        f"checkpoints/step-00000005/{n}" for n in
        ("model.safetensors", "state.json", "manifest.json")}
    manifest = verify_checkpoint(blobs, got.checkpoints[0])
    out = materialise(blobs, got.checkpoints[0], tmp_path / "out")
    for name in ("model.safetensors", "state.json", "manifest.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert diff_states(manifest.state, manifest.state) == []


def test_hostile_spools_are_refused_one_by_one(tmp_path: Path) -> None:
    probe = tmp_path / "probe" / "checkpoints"
    spool(probe, 5)
    # a manifest that lies about a file's digest
    lying = spool(probe, 10)
    data = json.loads((lying / "manifest.json").read_bytes())
    data["files"]["model.safetensors"]["sha256"] = "0" * 64
    (lying / "manifest.json").write_text(json.dumps(data))
    # a manifest naming a file outside its folder
    escaping = spool(probe, 15)
    data = json.loads((escaping / "manifest.json").read_bytes())
    data["files"]["../../../etc/passwd"] = {"sha256": "1" * 64, "size": 1}
    (escaping / "manifest.json").write_text(json.dumps(data))
    # a file swapped for a link to a host file, digest and all
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host secret\n")
    linked = spool(probe, 20)
    data = json.loads((linked / "manifest.json").read_bytes())
    (linked / "state.json").unlink()
    os.symlink(secret, linked / "state.json")
    import hashlib

    data["files"]["state.json"] = {"sha256": hashlib.sha256(secret.read_bytes()).hexdigest(),
                                   "size": secret.stat().st_size}
    (linked / "manifest.json").write_text(json.dumps(data))
    # a whole folder that is a link, and one killed before its manifest
    os.symlink(tmp_path, probe / "step-00000025")
    (probe / "step-00000030").mkdir()
    (probe / "step-00000030" / "model.safetensors").write_bytes(b"half")

    blobs = BlobStore(tmp_path / "store")
    got = ingest_spool(blobs, probe, opener=open_inside)
    assert [c.step for c in got.checkpoints] == [5]
    text = "\n".join(got.warnings)
    assert "step-00000010 not stored: model.safetensors does not match its manifest" in text
    assert "step-00000015 not stored" in text and "malformed file" in text
    assert "step-00000020 not stored" in text and "symbolic link" in text
    assert "step-00000025 not stored" in text
    assert "step-00000030 not stored: no manifest" in text
    stored = {h for h, _ in blobs.object_digests()}
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in stored


def test_an_altered_stored_checkpoint_is_exit_3_before_use(tmp_path: Path) -> None:
    probe = tmp_path / "probe" / "checkpoints"
    spool(probe, 5)
    blobs = BlobStore(tmp_path / "store")
    ref = ingest_spool(blobs, probe).checkpoints[0]
    manifest = verify_checkpoint(blobs, ref)
    sha = manifest.files["state.json"][0]
    path = blobs.path_for(sha)
    path.chmod(0o600)
    path.write_bytes(path.read_bytes()[:-4])  # truncated
    with pytest.raises(IntegrityError, match=r"checkpoint step 5 file state\.json") as exc:
        verify_checkpoint(blobs, ref)
    assert exc.value.exit_code == 3
    with pytest.raises(IntegrityError):
        materialise(blobs, ref, tmp_path / "out")
