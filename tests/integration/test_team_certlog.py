"""The certificate log of a team store lives in its database, shared by every machine.

Two "machines" here are two processes' views of one team store (PostgreSQL metadata, S3
artifacts on moto's server) with different local working folders (``AUDITOR_CACHE``),
as two engineers' laptops or a CI runner and a release machine have. Before schema
revision 0003 each kept its own log in that folder, so `audit fsck` on one machine took
every certificate issued on the other for a row "added behind the log's back".
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from auditor.certify import log as certlog
from auditor.core.errors import IntegrityError
from auditor.core.keys import generate_keypair, load_public_key
from auditor.release.fsck import check_store
from auditor.release.gate import GatePolicy, check_artifacts
from auditor.release.tamper import index_problems
from auditor.store import SqlStore, open_store
from tests.conftest import audit
from tests.integration.test_push_pull import (
    _certify,
    _issue,
    _make_run,
    delete_signed_head,
    rechain,
)


def test_a_certificate_issued_on_one_machine_is_in_the_log_every_machine_reads(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, pub = generate_keypair(tmp_path / "keys", "k")
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache-ci"))
    ci = open_store(pg_url, blobs=s3_bucket)
    run = _make_run(ci, random.Random(1))
    cert = _certify(ci, run, key)  # appends to certlog.log_of(store), as `audit verify` does
    ci.close()
    assert not (tmp_path / "cache-ci" / "log").exists()  # nothing of the log stays local

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache-release"))
    release = open_store(pg_url, blobs=s3_bucket)
    log = certlog.log_of(release)
    assert [e.cert_sha256 for e in certlog.read_entries(log)] == [cert]
    unsigned = index_problems(release, [load_public_key(pub)])  # appended without a key
    assert len(unsigned) == 1 and "head is not signed" in unsigned[0]
    assert "cert_log" not in unsigned[0] and "certs.head.dsse.json" in unsigned[0]
    assert index_problems(release, None) == []
    run2 = _make_run(release, random.Random(2))
    _certify(release, run2, key)  # the release machine extends the same chain
    assert [e.run_id for e in certlog.read_entries(log)] == [run, run2]
    release.close()

    env = {**s3_env, "AUDITOR_CACHE": str(tmp_path / "cache-third")}
    fsck = audit("--store", pg_url, "--blobs", s3_bucket, "fsck", cwd=tmp_path, env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("edit", ["line", "delete", "head"])
def test_the_shared_log_edited_in_the_database_is_caught(
    edit: str, pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    store = open_store(pg_url, blobs=s3_bucket)
    key, _pub = generate_keypair(tmp_path / "keys", "k")
    rng = random.Random(3)
    for _ in range(3):
        _certify(store, _make_run(store, rng), key)
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        if edit == "line":  # a verdict's run id swapped in the middle of the chain
            line = conn.execute(sa.text("SELECT line FROM cert_log WHERE pos = 2")).scalar_one()
            conn.execute(sa.text("UPDATE cert_log SET line = :l WHERE pos = 2"),
                         {"l": bytes(line).replace(b'"seq":2', b'"seq":7')})
        elif edit == "delete":
            conn.execute(sa.text("DELETE FROM cert_log WHERE pos = 2"))
        else:  # the head rewound to hide the last line
            conn.execute(sa.text("DELETE FROM cert_log WHERE pos = 3"))
    engine.dispose()
    problems = index_problems(store, None)
    assert problems and "certificate log" in problems[0], problems
    fsck = audit("--store", pg_url, "--blobs", s3_bucket, "fsck", cwd=tmp_path,
                 env={**s3_env, "AUDITOR_CACHE": str(tmp_path / "cache2")})
    assert fsck.returncode != 0 and "Traceback" not in fsck.stderr
    password = sa.engine.make_url(pg_url).password
    assert not password or password not in fsck.stdout + fsck.stderr
    with pytest.raises(Exception, match="certificate log"):
        certlog.append(certlog.log_of(store), "a" * 64, "01XYZ", None)  # never blessed
    store.close()


def _append_many(url: str, blobs: str, cache: str, count: int) -> None:
    import os

    os.environ["AUDITOR_CACHE"] = cache
    store = open_store(url, blobs=blobs)
    for i in range(count):
        certlog.append(certlog.log_of(store), f"{os.getpid() % 256:02x}{i:062x}", f"run{i}")
    store.close()


def test_appends_from_several_machines_at_once_keep_one_chain(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many,
                         args=(pg_url, s3_bucket, str(tmp_path / f"c{n}"), 15))
             for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = open_store(pg_url, blobs=s3_bucket)
    log = certlog.log_of(store)
    assert certlog.verify_log(log) == 60
    assert [e.seq for e in certlog.read_entries(log)] == list(range(1, 61))
    store.close()


@pytest.mark.parametrize("signed_head", ["kept", "deleted"])
def test_the_signed_log_head_cannot_be_laundered(
    signed_head: str, any_store: SqlStore, tmp_path: Path
) -> None:
    """Issue 16 item 5, on SQLite (the folder log) and PostgreSQL (the database log): one
    `audit verify` without --sign-key deleted the signed head (every gate then failed);
    with the head gone, a downgrade's row and log line deleted and the log re-chained were
    signed over by the next legitimate signed verify, and gate and fsck passed."""
    key, pub = generate_keypair(tmp_path / "keys", "k")
    trusted = [load_public_key(pub)]
    run = _make_run(any_store, random.Random(5))
    _issue(any_store, run, key)  # signed: reproduced-bitwise
    _issue(any_store, run, key, "not-reproduced")  # signed: the downgrade, log line 2
    _issue(any_store, run, None)  # `audit verify` without --sign-key
    log = certlog.log_of(any_store)
    assert log.exists(certlog.SIGNED_HEAD_NAME)  # an unsigned append keeps the signed head
    assert index_problems(any_store, trusted) == []  # so the gate still runs
    model = tmp_path / "w0.bin"
    art = any_store.get_record(run).outputs()[0]
    model.write_bytes(any_store.blobs.read_bytes(art.sha256))
    gate = GatePolicy(trusted_keys=(pub,))
    finding = check_artifacts(any_store, [model], gate).findings[0]
    assert not finding.passed  # the newest is unsigned; the older signed one is superseded
    # the attack: the downgrade's row and log line deleted, the log re-chained
    with any_store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM certificates WHERE verdict = 'not-reproduced'"))
    rechain(any_store, drop=2)
    if signed_head == "deleted":
        delete_signed_head(any_store)
    expected = "not the line the signed head signed" if signed_head == "kept" else \
        "head is not signed"
    assert expected in " ".join(index_problems(any_store, trusted))
    with pytest.raises(IntegrityError, match=r"refusing to append|removed behind auditor"):
        _issue(any_store, run, key)  # the next legitimate signed verify blesses nothing
    with pytest.raises(IntegrityError, match="certificate log"):
        check_artifacts(any_store, [model], gate)
    problems = check_store(any_store, keys=trusted).problems
    assert any(expected in p for p in problems), problems
