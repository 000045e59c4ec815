"""`audit push` / `audit pull` between a local SQLite store and a team store on a real
PostgreSQL server with artifacts in S3 (moto's server on 127.0.0.1): round trip, bit
fidelity, idempotence, conflicts, a push killed with SIGKILL, and faults (one line each)."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from auditor.certify import log as certlog
from auditor.certify.certificate import (
    ReproductionPredicate,
    Subject,
    envelope_bytes,
    make_statement,
    seal,
)
from auditor.certify.issue import issue_certificate
from auditor.certify.verdict import Verdict, VerifyResult
from auditor.compare.pairing import OutputCoverage
from auditor.core.keys import generate_keypair, load_private_key
from auditor.core.policy import Policy
from auditor.core.schema import (
    ArtifactRef,
    MetricsSummary,
    new_run_id,
    record_bytes,
    record_sha256,
)
from auditor.store import CertificateRow, SqlStore, open_store
from auditor.store.base import series_digest
from auditor.store.sql import float_to_bits
from tests.conftest import AUDIT, audit
from tests.factories import make_record, metric_points

NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_0000_ABCD))[0]  # bits kept
VALUES = [0.5, -0.0, float("inf"), float("-inf"), float("nan"), 5e-324, NAN_PAYLOAD]


def _make_run(store: SqlStore, rng: random.Random, size: int = 4_000, *,
              status: str = "finished", name: str = "train") -> str:
    run_id = new_run_id()
    arts = []
    for k in range(2):
        sha, n = store.blobs.put_bytes(rng.randbytes(size + k))
        arts.append(ArtifactRef(name=f"outputs/w{k}.bin", sha256=sha, size=n, kind="output"))
    points = metric_points("loss", (VALUES[s % len(VALUES)] for s in range(50)))
    store.add_metrics(run_id, points)
    record = make_record(
        id=run_id, name=name, status=status, artifacts=tuple(arts),
        metrics=MetricsSummary(points=len(points), series_sha256=series_digest(points)),
    )
    store.put_record(record)
    return run_id


def _certify(store: SqlStore, run_id: str, key: Path) -> str:
    record = store.get_record(run_id)
    predicate = ReproductionPredicate(
        verdict="reproduced-bitwise", original_run=run_id, rerun_run=None,
        original_record_sha256=record_sha256(record), issued_at=datetime.now(UTC),
        auditor_version="0.1.0", isolation="container")
    subjects = [Subject(name=a.name, digest={"sha256": a.sha256}) for a in record.artifacts]
    data = envelope_bytes(seal(make_statement(subjects, predicate), load_private_key(key)))
    sha, _ = store.blobs.put_bytes(data)
    store.put_certificate(CertificateRow(sha, run_id, None, "reproduced-bitwise",
                                         predicate.issued_at,
                                         tuple(a.sha256 for a in record.artifacts)))
    certlog.append(certlog.log_of(store), sha, run_id, None)  # as certify/issue.py does
    return sha


def _issue(store: SqlStore, run_id: str, key: Path | None,
           verdict: str = "reproduced-bitwise") -> str:
    """What `audit verify` (with ``--sign-key key``, or without) does once the rerun is
    compared: a rerun record, then ``issue_certificate`` itself (sealed, stored, indexed,
    appended to the store's certificate log, the log head signed with the same key)."""
    original = store.get_record(run_id)
    rerun = make_record(name="rerun", status="finished")
    store.put_record(rerun)
    result = VerifyResult(
        original_run=run_id, original_name=original.identity.name,
        rerun_run=rerun.identity.id, rerun_name="rerun",
        verdict=Verdict(level=verdict,  # type: ignore[arg-type]
                        outputs=OutputCoverage(compared=[a.name for a in original.outputs()])),
        policy=Policy().table(), backend="docker", started_at=datetime.now(UTC))
    sha = issue_certificate(store, result, original, rerun, key, None).certificate_sha256
    assert sha is not None
    return sha


def _bits(store: SqlStore, run_id: str) -> list[tuple[str, int, int, float]]:
    return [(p.key, p.step, float_to_bits(p.value), p.time) for p in store.iter_metrics(run_id)]


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return res.stderr


@pytest.fixture
def team(pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
         ) -> dict[str, str]:
    """Environment naming the team store: PostgreSQL metadata + S3 artifacts, with its
    local cache (and certificate log) in the test's folder."""
    return {**s3_env, "AUDITOR_CACHE": str(tmp_path / "cache"), "TEAM": pg_url,
            "TEAM_BLOBS": s3_bucket}


def test_push_then_pull_round_trip(team: dict[str, str], tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "laptop"))
    rng = random.Random(7)
    runs = [_make_run(local, rng) for _ in range(3)]
    running = _make_run(local, rng, status="running")
    key, _pub = generate_keypair(tmp_path / "keys", "k")
    cert = _certify(local, runs[0], key)
    local.close()
    env = {**team, "AUDITOR_STORE": str(tmp_path / "laptop")}
    first = audit("push", "--all", "--to", team["TEAM"], "--to-blobs", team["TEAM_BLOBS"],
                  cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "pushed 3 run(s)" in first.stdout and "1 still recording" in first.stdout
    assert "6 object(s)" in first.stdout and "1 certificate(s)" in first.stdout
    assert _password(team["TEAM"]) not in first.stdout + first.stderr
    # Pushing again adds nothing (the database remembers its artifact URL now).
    again = audit("push", "--all", "--to", team["TEAM"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "pushed 0 run(s)" in again.stdout and "0 object(s)" in again.stdout
    assert "0 certificate(s)" in again.stdout and "3 already there" in again.stdout
    fsck = audit("fsck", cwd=tmp_path, env={**team, "AUDITOR_STORE": team["TEAM"]})
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "3 runs, 7 objects, 1 certificates checked" in fsck.stdout
    # An object deleted from the bucket behind our back: fsck names it, a push restores it.
    import s3fs

    team_store = open_store(team["TEAM"])
    lost = team_store.get_record(runs[1]).artifacts[0]
    s3fs.S3FileSystem(skip_instance_cache=True).rm(team_store.blobs.key_for(lost.sha256))  # type: ignore[attr-defined]
    team_store.close()
    broken = audit("fsck", cwd=tmp_path, env={**team, "AUDITOR_STORE": team["TEAM"]})
    assert broken.returncode == 3 and lost.sha256 in broken.stdout
    healed = audit("push", "--all", "--to", team["TEAM"], cwd=tmp_path, env=env)
    assert healed.returncode == 0 and "1 missing object(s)" in healed.stdout, healed.stderr
    assert audit("fsck", cwd=tmp_path, env={**team, "AUDITOR_STORE": team["TEAM"]}
                 ).returncode == 0
    # Pull into a second laptop: bit-exact metrics, same records, fsck clean.
    env2 = {**team, "AUDITOR_STORE": str(tmp_path / "laptop2")}
    pulled = audit("pull", runs[0][:10], runs[1], "--from", team["TEAM"], cwd=tmp_path, env=env2)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled 2 run(s)" in pulled.stdout and "1 certificate(s)" in pulled.stdout
    assert audit("fsck", cwd=tmp_path, env=env2).returncode == 0
    src, team_store = open_store(str(tmp_path / "laptop")), open_store(team["TEAM"])
    dst = open_store(str(tmp_path / "laptop2"))
    try:
        for run_id in runs[:2]:
            want = record_sha256(src.get_record(run_id))
            assert record_sha256(dst.get_record(run_id)) == want
            assert record_sha256(team_store.get_record(run_id)) == want
            assert _bits(dst, run_id) == _bits(src, run_id) == _bits(team_store, run_id)
        assert [c.sha256 for c in dst.certificates()] == [cert]
        with pytest.raises(Exception, match="no run matches"):
            team_store.get_record(running)
    finally:
        for s in (src, team_store, dst):
            s.close()


def _password(url: str) -> str:
    return sa.engine.make_url(url).password or "\0"


def test_conflict_is_one_line_naming_the_run_and_others_still_move(
    team: dict[str, str], tmp_path: Path
) -> None:
    local = open_store(str(tmp_path / "laptop"))
    rng = random.Random(8)
    clash, fine = _make_run(local, rng), _make_run(local, rng)
    other = open_store(team["TEAM"], blobs=team["TEAM_BLOBS"])
    record = local.get_record(clash)
    other.put_record(record.model_copy(update={"params": {"lr": 0.1}}))  # same id, other record
    other.close()
    local.close()
    res = audit("push", clash, fine, "--to", team["TEAM"], cwd=tmp_path,
                env={**team, "AUDITOR_STORE": str(tmp_path / "laptop")})
    assert res.returncode == 2
    assert clash in _one_line(res) and "different record" in res.stderr
    team_store = open_store(team["TEAM"])
    assert team_store.get_record(fine).identity.id == fine
    assert team_store.get_record(clash).params == {"lr": 0.1}  # untouched
    team_store.close()


def test_push_killed_midway_then_pushed_again_is_complete(
    team: dict[str, str], tmp_path: Path
) -> None:
    local = open_store(str(tmp_path / "laptop"))
    rng = random.Random(9)
    runs = [_make_run(local, rng, size=300_000) for _ in range(8)]
    local.close()
    env = {**os.environ, **team, "AUDITOR_STORE": str(tmp_path / "laptop")}
    argv = [AUDIT, "push", "--all", "--to", team["TEAM"], "--to-blobs", team["TEAM_BLOBS"]]
    start = time.perf_counter()
    assert subprocess.run([*argv[:2], "--help"], env=env, capture_output=True).returncode == 0
    startup = time.perf_counter() - start
    for attempt in range(3):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(startup + rng.uniform(0.1, 1.5) * (attempt + 1))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        team_store = open_store(team["TEAM"], blobs=team["TEAM_BLOBS"])
        for summary in team_store.list_runs():  # whatever is there is complete
            rec = team_store.get_record(summary.id)
            for art in rec.artifacts:
                assert team_store.blobs.rehash(art.sha256) == art.sha256
            assert len(_bits(team_store, summary.id)) == 50
        team_store.close()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    team_store = open_store(team["TEAM"])
    assert sorted(team_store.run_versions()) == sorted(runs)
    team_store.close()
    fsck = audit("fsck", cwd=tmp_path, env={**team, "AUDITOR_STORE": team["TEAM"]})
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "8 runs, 16 objects" in fsck.stdout


def test_altered_object_at_the_source_is_not_pushed(team: dict[str, str], tmp_path: Path
                                                    ) -> None:
    local = open_store(str(tmp_path / "laptop"))
    run_id = _make_run(local, random.Random(10))
    art = local.get_record(run_id).artifacts[0]
    path = local.blobs.path_for(art.sha256)
    path.chmod(0o600)
    path.write_bytes(b"x" + path.read_bytes()[1:])
    local.close()
    res = audit("push", run_id, "--to", team["TEAM"], "--to-blobs", team["TEAM_BLOBS"],
                cwd=tmp_path, env={**team, "AUDITOR_STORE": str(tmp_path / "laptop")})
    assert res.returncode == 3
    assert art.sha256 in _one_line(res) and "altered" in res.stderr
    team_store = open_store(team["TEAM"])
    assert team_store.run_versions() == {}
    team_store.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_faults_are_one_line_with_an_exit_code(team: dict[str, str], tmp_path: Path) -> None:
    local = open_store(str(tmp_path / "laptop"))
    run_id = _make_run(local, random.Random(11))
    local.close()
    env = {**team, "AUDITOR_STORE": str(tmp_path / "laptop")}
    secret = "s3cr3t-pw-never-shown"
    cases = [
        # unreachable database (a password in the URL is never echoed)
        ([f"postgresql+psycopg://alice:{secret}@127.0.0.1:{_free_port()}/team",
          "--to-blobs", team["TEAM_BLOBS"]], {}, "cannot open store", 3),
        (["postgresql+psycopg://alice:x@127.0.0.1:notaport/team"], {}, "not a store URL", 2),
        ([team["TEAM"], "--to-blobs", "s3://no-such-bucket-here/team"], {}, "does not exist", 2),
        ([team["TEAM"], "--to-blobs", "s3://AKIA:secret@bucket/x"], {},
         "credentials in the URL are refused", 2),
        ([team["TEAM"], "--to-blobs", team["TEAM_BLOBS"]],
         {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{_free_port()}"}, "cannot open", 2),
    ]
    for to, extra, expected, code in cases:
        res = audit("push", run_id, "--to", *to, cwd=tmp_path, env={**env, **extra}, timeout=120)
        assert res.returncode == code, (to, res.stderr)
        assert expected in _one_line(res), (to, res.stderr)
        assert secret not in res.stdout + res.stderr
    bad = audit("push", "not/a/run", "--to", team["TEAM"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "invalid run id" in _one_line(bad)
    none = audit("pull", "--from", str(tmp_path / "laptop"), cwd=tmp_path,
                 env={**env, "AUDITOR_STORE": str(tmp_path / "other")})
    assert none.returncode == 2 and "--all" in _one_line(none)
    fresh = audit("pull", "--all", "--from", team["TEAM"], cwd=tmp_path, env=env)
    assert fresh.returncode == 2 and "has no artifact location" in _one_line(fresh)
    engine = sa.create_engine(team["TEAM"])  # nothing half-written by any of them
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from runs")).scalar() == 0
        assert conn.execute(sa.text("select count(*) from meta where key='blobs_url'")
                            ).scalar() == 0
    engine.dispose()


def test_wrong_s3_credentials_are_one_line(pg_url: str, tmp_path: Path) -> None:
    """A moto server of its own that checks keys (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        local = open_store(str(tmp_path / "laptop"))
        run_id = _make_run(local, random.Random(12))
        local.close()
        env = {"AUDITOR_STORE": str(tmp_path / "laptop"), "AUDITOR_CACHE": str(tmp_path / "c"),
               "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
               "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0",
               "AWS_SECRET_ACCESS_KEY": "wrong-secret-never-shown",
               "AWS_DEFAULT_REGION": "us-east-1"}
        res = audit("push", run_id, "--to", pg_url, "--to-blobs", "s3://team-bucket/x",
                    cwd=tmp_path, env=env, timeout=120)
        assert res.returncode == 2
        line = _one_line(res)
        assert "artifact store s3://team-bucket/x" in line and "access denied" in line
        assert "wrong-secret-never-shown" not in res.stdout + res.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the source is checked before anything is copied (issue 16, item 6) ------------------------
def rechain(store: SqlStore, drop: int) -> None:
    """What someone with write access to a store does to hide log line ``drop``: delete it,
    renumber and re-link every later line, and rewrite the unsigned head to match (the
    signed head cannot be forged without the key; it is left, or deleted, as the attack
    wants)."""
    import hashlib
    import json

    log = certlog.log_of(store)
    entries = [json.loads(line) for line in log.read(certlog.LOG_NAME).splitlines()]
    del entries[drop - 1]
    prev, lines = certlog.GENESIS, []
    for seq, entry in enumerate(entries, start=1):
        line = json.dumps({**entry, "seq": seq, "prev_sha256": prev}, sort_keys=True,
                          separators=(",", ":")).encode()
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
    if isinstance(log, certlog.FileLog):
        (log.dir / certlog.LOG_NAME).write_bytes(b"".join(x + b"\n" for x in lines))
    else:
        with store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM cert_log"))
            for pos, line in enumerate(lines, start=1):
                conn.execute(sa.text("INSERT INTO cert_log (pos, line) VALUES (:p, :l)"),
                             {"p": pos, "l": line})
    head = {"seq": len(lines), "line_sha256": prev, "size": sum(len(x) + 1 for x in lines)}
    with log.locked(exclusive=True):
        log.write(certlog.HEAD_NAME, json.dumps(head, sort_keys=True,
                                                separators=(",", ":")).encode())


def delete_signed_head(store: SqlStore) -> None:
    log = certlog.log_of(store)
    with log.locked(exclusive=True):
        log.write(certlog.SIGNED_HEAD_NAME, None)


def _nothing_pulled(laptop: Path) -> None:
    if (laptop / "store.db").exists():
        store = open_store(str(laptop))
        assert store.run_versions() == {} and store.certificates() == []
        store.close()


@pytest.mark.parametrize("attack", ["row", "row+line", "row+line+signed-head"])
def test_pull_refuses_a_source_whose_downgrade_was_deleted(
    attack: str, team: dict[str, str], tmp_path: Path
) -> None:
    """The probe: `audit pull` from a PostgreSQL store whose not-reproduced certificate row
    was deleted succeeded, and the receiving store's gate passed the downgraded model."""
    key, pub = generate_keypair(tmp_path / "keys", "k")
    shared = open_store(team["TEAM"], blobs=team["TEAM_BLOBS"])
    run_id = _make_run(shared, random.Random(21))
    _issue(shared, run_id, key)  # signed verifies, as a team's CI makes them
    _issue(shared, run_id, key, "not-reproduced")  # re-verified later: it does not reproduce
    with shared.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM certificates WHERE verdict = 'not-reproduced'"))
    if "line" in attack:
        rechain(shared, drop=2)
    if "signed-head" in attack:
        delete_signed_head(shared)
    shared.close()
    laptop = tmp_path / "laptop"
    trust = ["--trust", str(pub)] if "signed-head" in attack else []
    res = audit("pull", run_id, "--from", team["TEAM"], *trust, cwd=tmp_path,
                env={**team, "AUDITOR_STORE": str(laptop)})
    assert res.returncode == 3, (res.stdout, res.stderr)
    line = _one_line(res)
    assert "nothing copied" in line
    expected = {"row": "missing from the certificates table",
                "row+line": "the signed head covers 2 lines but the log has 1",
                "row+line+signed-head": "head is not signed"}[attack]
    assert expected in line, line
    assert _password(team["TEAM"]) not in res.stdout + res.stderr
    _nothing_pulled(laptop)


def test_a_certified_record_rewritten_with_its_digest_is_not_pulled(
    team: dict[str, str], tmp_path: Path
) -> None:
    key, _pub = generate_keypair(tmp_path / "keys", "k")
    shared = open_store(team["TEAM"], blobs=team["TEAM_BLOBS"])
    run_id = _make_run(shared, random.Random(22))
    _issue(shared, run_id, key)
    forged = shared.get_record(run_id).model_copy(update={"params": {"seed": 1234}})
    with shared.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET record = :r, record_sha256 = :d WHERE id = :i"),
                     {"r": record_bytes(forged).decode(), "d": record_sha256(forged),
                      "i": run_id})
    shared.close()
    laptop = tmp_path / "laptop"
    res = audit("pull", "--all", "--from", team["TEAM"], cwd=tmp_path,
                env={**team, "AUDITOR_STORE": str(laptop)})
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "was rewritten after it was certified" in _one_line(res)
    _nothing_pulled(laptop)


def test_a_signed_record_rewritten_with_its_digest_is_not_pushed(
    team: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, pub = generate_keypair(tmp_path / "keys", "k")
    monkeypatch.setenv("AUDITOR_SIGN_KEY", str(key))  # records signed as they are written
    local = open_store(str(tmp_path / "laptop"))
    run_id = _make_run(local, random.Random(23))  # never certified: only its signature
    forged = local.get_record(run_id).model_copy(update={"params": {"lr": 10.0}})
    local.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "laptop" / "store.db") as conn:
        conn.execute("UPDATE runs SET record = ?, record_sha256 = ? WHERE id = ?",
                     (record_bytes(forged).decode(), record_sha256(forged), run_id))
    env = {**team, "AUDITOR_STORE": str(tmp_path / "laptop")}
    res = audit("push", run_id, "--to", team["TEAM"], "--to-blobs", team["TEAM_BLOBS"],
                "--trust", str(pub), cwd=tmp_path, env=env)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "rewritten after it was signed" in _one_line(res)
    engine = sa.create_engine(team["TEAM"])
    with engine.connect() as conn:  # nothing written: not even the team store's schema
        assert conn.execute(sa.text("SELECT count(*) FROM information_schema.tables WHERE "
                                    "table_schema = current_schema()")).scalar() == 0
    engine.dispose()


def test_a_pull_without_key_keeps_the_receiving_logs_signed_head(
    team: dict[str, str], tmp_path: Path
) -> None:
    """Certificates pulled without --key go after the receiving store's signed head, which
    stays (it used to be refused: an unsigned append deleted the head)."""
    key, pub = generate_keypair(tmp_path / "keys", "k")
    shared = open_store(team["TEAM"], blobs=team["TEAM_BLOBS"])
    run_id = _make_run(shared, random.Random(24))
    _issue(shared, run_id, key)
    shared.close()
    local = open_store(str(tmp_path / "laptop"))
    _issue(local, _make_run(local, random.Random(25)), key)
    local.close()
    env = {**team, "AUDITOR_STORE": str(tmp_path / "laptop")}
    res = audit("pull", run_id, "--from", team["TEAM"], "--trust", str(pub), cwd=tmp_path,
                env=env)
    assert res.returncode == 0, res.stderr
    assert "1 certificate(s)" in res.stdout
    fsck = audit("fsck", "--key", str(pub), cwd=tmp_path, env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
