"""Artifacts in S3 (moto's standalone server on 127.0.0.1): create-only, streamed,
multipart, verified on every read, one-line errors, no credentials anywhere."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import s3fs

from auditor.core.errors import IntegrityError, StoreError
from auditor.release.fsck import check_store
from auditor.store import RemoteBlobStore, open_store
from auditor.store import remote as remote_mod
from tests.conftest import audit


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_put_and_read_back_verified(s3_bucket: str, tmp_path: Path) -> None:
    blobs = RemoteBlobStore(s3_bucket, tmp_path / "cache")
    sha, size = blobs.put_bytes(b"weights" * 1000)
    assert size == 7000 and blobs.has(sha)
    assert blobs.read_bytes(sha, "outputs/model.bin") == b"weights" * 1000
    assert _fs().exists(blobs.key_for(sha))
    assert dict(blobs.object_digests()) == {sha: sha}


def test_existing_object_is_skipped_never_overwritten(s3_bucket: str, tmp_path: Path) -> None:
    blobs = RemoteBlobStore(s3_bucket, tmp_path / "cache")
    sha, _ = blobs.put_bytes(b"a" * 100)
    before = _fs().info(blobs.key_for(sha))
    assert blobs.put_bytes(b"a" * 100) == (sha, 100)  # skipped
    assert _fs().info(blobs.key_for(sha))["LastModified"] == before["LastModified"]
    _fs().pipe_file(blobs.key_for(sha), b"evil")  # altered behind our back, other size
    with pytest.raises(IntegrityError, match="not overwritten"):
        blobs.put_bytes(b"a" * 100)
    assert _fs().cat_file(blobs.key_for(sha)) == b"evil"


def test_same_size_tamper_is_named_on_read(s3_bucket: str, tmp_path: Path) -> None:
    # T53: other bytes of the same size in the bucket: every read names the digest.
    blobs = RemoteBlobStore(s3_bucket, tmp_path / "cache")
    sha, _ = blobs.put_bytes(b"x" * 64)
    _fs().pipe_file(blobs.key_for(sha), b"y" * 64)
    with pytest.raises(IntegrityError, match=f"object sha256:{sha} .* was altered"):
        blobs.read_bytes(sha, "outputs/w.bin")
    assert not blobs.path_for(sha).exists()  # nothing cached under the digest's name
    assert dict(blobs.object_digests())[sha] != sha  # fsck sees it too


def test_large_file_goes_multipart_streamed(s3_bucket: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        for i in range(20):
            fh.write(bytes([i]) * (1 << 20))
    blobs = RemoteBlobStore(s3_bucket, tmp_path / "cache")
    sha, size = blobs.put_file(big)
    assert size == 20 << 20 and size > 2 * remote_mod.PART_SIZE
    etag = _fs().info(blobs.key_for(sha))["ETag"]
    assert "-" in etag  # a multipart upload's ETag names its part count
    assert blobs.verified_path(sha).stat().st_size == size


def test_missing_bucket_and_credentials_in_url_are_one_line(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="does not exist") as err:
        RemoteBlobStore("s3://no-such-bucket-zz/p", tmp_path).check_reachable()
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="credentials in the URL are refused") as err:
        RemoteBlobStore("s3://AKIAXX:topsecret@bucket/p", tmp_path)
    assert "topsecret" not in str(err.value)


def test_unreachable_endpoint_is_one_line(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(StoreError, match="artifact store s3://b/p: cannot open") as err:
        RemoteBlobStore("s3://b/p", tmp_path).check_reachable()
    assert "\n" not in str(err.value)


def test_sqlite_metadata_with_s3_artifacts_and_fsck(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "meta"), blobs=s3_bucket)
    assert isinstance(store.blobs, RemoteBlobStore)
    sha, _ = store.blobs.put_bytes(b"ok")
    assert check_store(store).problems == []
    _fs().pipe_file(store.blobs.key_for(sha), b"no")
    problems = check_store(store).problems
    assert len(problems) == 1 and sha in problems[0]
    store.close()


TRAIN = """\
import json
for step in range(3):
    print(json.dumps({"step": step, "loss": 1.0 / (step + 1)}))
open("model.bin", "wb").write(b"weights" * 1000)
"""


def test_record_into_postgresql_and_s3_then_every_read_command(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str],
    make_repo: Callable[..., Path], tmp_path: Path,
) -> None:
    repo = make_repo({"train.py": TRAIN, ".gitignore": "model.bin\n"})
    env = {**s3_env, "AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": s3_bucket,
           "AUDITOR_CACHE": str(tmp_path / "cache")}
    rec = audit("record", "--", sys.executable, "train.py", cwd=repo, env=env)
    assert rec.returncode == 0, rec.stderr
    env.pop("AUDITOR_BLOBS")  # the database remembers s3://…
    runs = json.loads(audit("--json", "list", cwd=repo, env=env).stdout)
    run_id = runs[0]["id"]
    record = json.loads(audit("show", "--json", run_id, cwd=repo, env=env).stdout)
    model = next(a for a in record["artifacts"] if a["name"] == "outputs/model.bin")
    assert _fs().exists(f"{s3_bucket}/objects/sha256/{model['sha256'][:2]}/{model['sha256'][2:]}")
    assert audit("fsck", cwd=repo, env=env).returncode == 0
    checkout = audit("checkout", run_id, str(tmp_path / "tree"), cwd=repo, env=env)
    assert checkout.returncode == 0, checkout.stderr
    # T54: the AWS keys reach no record, no stored log, no output.
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in json.dumps(record) and secret not in rec.stdout + rec.stderr
    for key in _fs().find(s3_bucket):
        assert secret.encode() not in _fs().cat_file(key)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret


def test_a_standalone_runs_checkpoints_go_to_the_team_bucket(s3_bucket: str,
                                                              tmp_path: Path) -> None:
    """``run.checkpoint`` of a run whose store keeps artifacts in S3: a small checkpoint
    (encoded in memory, ``put_many``) and a large one (streamed, spooled, ``put_file``)
    both land in the bucket, verified on the way back and restorable."""
    import torch

    from auditor.core.schema import Command, Identity, RunRecord
    from auditor.record import checkpoints as ck
    from auditor.record.tracker import Run

    store = open_store(str(tmp_path / "meta"), blobs=s3_bucket)
    record = RunRecord(identity=Identity(id="0" * 26, name="s3", user="u", host="h",
                                         started_at=datetime.now(UTC)),
                       command=Command(argv=("x",), cwd="."))
    store.put_record(record)
    run = Run(record, store=store, quiet=True)
    small = torch.nn.Linear(4, 2)
    large = torch.nn.Linear(2048, 1100)  # 9 MB of tensors: above the in-memory bound
    run.checkpoint(1, model=small, optimizer=torch.optim.SGD(small.parameters(), lr=0.1))
    run.checkpoint(2, model=large)
    run.end()
    stored = store.get_record(record.identity.id)
    refs = ck.list_checkpoints(stored)
    assert [r.step for r in refs] == [1, 2]
    for ref in refs:
        manifest = ck.verify_checkpoint(store.blobs, ref)
        for sha, _size in manifest.files.values():
            assert _fs().exists(store.blobs.key_for(sha))  # in the bucket, not only cached
    folder = ck.materialise(store.blobs, refs[0], tmp_path / "ck1")
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(folder / "model.safetensors"))["weight"],
                       small.weight.detach())
    assert not (store.blobs.root / "spool" / record.identity.id).exists()
    store.close()
