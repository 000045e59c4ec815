"""PostgreSQL roles of a team store (``audit store roles``), applied in the tests' own
cluster: a reader lists, shows and serves the dashboard but cannot record, push or
verify; a recorder records but cannot append certificates; only a verifier can, and
not even it can rewrite the certificate log. Each refusal is one line, exit 2."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from auditor.core.errors import StoreError
from auditor.store import open_store
from auditor.store.base import CertificateRow
from tests.conftest import audit
from tests.uiserver import serve

TRAIN = """\
import json
for step in range(3):
    print(json.dumps({"step": step, "loss": 1.0 / (step + 1)}))
"""


def _as(url: str, user: str, password: str) -> str:
    return sa.engine.make_url(url).set(username=user, password=password).render_as_string(
        hide_password=False)


@pytest.fixture
def team(pg_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The roles applied to a fresh store schema, one login per role; dropped after."""
    prefix = "t" + secrets.token_hex(4)
    applied = audit("store", "roles", "--apply", "--prefix", prefix, cwd=tmp_path,
                    env={"AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": str(tmp_path / "blobs")})
    assert applied.returncode == 0, applied.stderr
    owner = sa.create_engine(pg_url)
    password = secrets.token_hex(12)
    logins = {kind: f"{prefix}_{kind}_login" for kind in ("reader", "recorder", "verifier")}
    with owner.begin() as conn:
        for kind, login in logins.items():
            conn.execute(sa.text(f"CREATE ROLE {login} LOGIN PASSWORD '{password}' "
                                 f"IN ROLE {prefix}_{kind}"))
    try:
        yield {"owner": pg_url, "prefix": prefix, "blobs": str(tmp_path / "blobs"),
               **{k: _as(pg_url, v, password) for k, v in logins.items()}}
    finally:
        groups = ", ".join(f"{prefix}_{k}" for k in logins)
        with owner.begin() as conn:  # what the grants made, revoked by their grantor
            schema, database = conn.execute(
                sa.text("SELECT current_schema(), current_database()")).one()
            for statement in (
                    f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {groups}",
                    f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {groups}",
                    f"REVOKE ALL ON SCHEMA {schema} FROM {groups}",
                    f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES "
                    f"FROM {prefix}_reader",
                    f"REVOKE ALL ON DATABASE {database} FROM {groups}",
                    *(f"DROP ROLE {name}" for name in logins.values()),
                    *(f"DROP ROLE {prefix}_{k}" for k in ("verifier", "recorder", "reader"))):
                conn.execute(sa.text(statement))
        owner.dispose()


def _one_line(res: object, needle: str) -> None:
    out = res.stderr  # type: ignore[attr-defined]
    assert res.returncode == 2, out  # type: ignore[attr-defined]
    assert out.count("\n") == 1 and out.startswith("error: ") and needle in out, out
    assert "Traceback" not in out


def test_print_sql_names_the_schema_and_each_role(pg_url: str, tmp_path: Path) -> None:
    res = audit("store", "roles", "--print-sql", "--prefix", "acme", cwd=tmp_path,
                env={"AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": str(tmp_path / "b")})
    assert res.returncode == 0, res.stderr
    schema = pg_url.split("search_path%3D")[-1] if "search_path%3D" in pg_url else \
        pg_url.split("search_path=")[-1]
    sql = res.stdout
    assert f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "acme_reader"' in sql
    assert f'GRANT INSERT ON "{schema}"."cert_log" TO "acme_verifier"' in sql
    assert f'"{schema}"."runs" TO "acme_recorder"' in sql
    assert "certificates\" TO \"acme_recorder\"" not in sql
    bad = audit("store", "roles", "--print-sql", "--prefix", "x; DROP", cwd=tmp_path,
                env={"AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": str(tmp_path / "b")})
    _one_line(bad, "not a plain lowercase SQL name")


def test_sqlite_store_has_no_roles(tmp_path: Path) -> None:
    open_store(str(tmp_path / "store")).close()
    res = audit("store", "roles", "--print-sql", cwd=tmp_path,
                env={"AUDITOR_STORE": str(tmp_path / "store")})
    _one_line(res, "roles belong to a PostgreSQL store")


def test_reader_reads_recorder_records_only_verifier_certifies(
        team: dict[str, str], make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo({"train.py": TRAIN})

    def env(kind: str) -> dict[str, str]:
        return {"AUDITOR_STORE": team[kind], "AUDITOR_BLOBS": team["blobs"]}

    # the recorder records; the reader cannot, before any training runs
    rec = audit("record", "--name", "by-recorder", "--", sys.executable, "train.py",
                cwd=repo, env=env("recorder"))
    assert rec.returncode == 0, rec.stderr
    denied = audit("record", "--name", "by-reader", "--", sys.executable, "train.py",
                   cwd=repo, env=env("reader"))
    _one_line(denied, "this database role may not write to table runs")
    assert "needs auditor_recorder" in denied.stderr
    assert team["reader"].split(":")[2].split("@")[0] not in denied.stderr  # no password

    # the reader lists, shows, compares and serves the dashboard
    listed = audit("--json", "list", cwd=repo, env=env("reader"))
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [r["name"] for r in runs] == ["by-recorder"]
    run_id = runs[0]["id"]
    shown = audit("show", run_id, cwd=repo, env=env("reader"))
    assert shown.returncode == 0 and "by-recorder" in shown.stdout, shown.stderr
    checked = audit("fsck", cwd=repo, env=env("reader"))
    assert checked.returncode == 0, checked.stderr
    with serve(team["reader"]) as base:  # the dashboard, as the reader's role
        assert httpx.get(base + "/", timeout=60).status_code == 200
        assert httpx.get(f"{base}/runs/{run_id}", timeout=60).status_code == 200
        assert httpx.get(base + "/api/runs", timeout=60).json()["total"] == 1

    # a reader cannot push into the team store; nor verify (refused before any rerun)
    local = tmp_path / "laptop-store"
    mine = audit("record", "--name", "local", "--", sys.executable, "train.py", cwd=repo,
                 env={"AUDITOR_STORE": str(local)})
    assert mine.returncode == 0, mine.stderr
    local_id = json.loads(audit("--json", "list", env={"AUDITOR_STORE": str(local)},
                                cwd=repo).stdout)[0]["id"]
    pushed = audit("--store", str(local), "push", "--to", team["reader"], local_id, cwd=repo,
                   env={"AUDITOR_BLOBS": ""})
    assert pushed.returncode == 2 and "may not write to table" in pushed.stderr, pushed.stderr
    assert pushed.stderr.count("\n") == 1
    for kind in ("reader", "recorder"):
        verify = audit("verify", run_id, cwd=repo, env=env(kind))
        _one_line(verify, "may not append certificates, so it cannot verify")
        assert "needs auditor_verifier" in verify.stderr

    # certificates: the recorder's append is refused with the one line, the verifier's works
    row = CertificateRow("ab" * 32, run_id, None, "reproduced-bitwise",
                         datetime.now(UTC), ("cd" * 32,))
    as_recorder = open_store(team["recorder"], blobs=team["blobs"], create=False)
    try:
        with pytest.raises(StoreError, match="may not append certificates"):
            as_recorder.put_certificate(row)
        log = as_recorder.certificate_log()
        assert log is not None
        with pytest.raises(StoreError, match="may not append certificates"):
            log.append_line(b'{"forged": true}\n')
    finally:
        as_recorder.close()
    as_verifier = open_store(team["verifier"], blobs=team["blobs"], create=False)
    try:
        as_verifier.put_certificate(row)
        log = as_verifier.certificate_log()
        assert log is not None
        log.append_line(b'{"line": 1}\n')
        assert [c.sha256 for c in as_verifier.certificates(run_id=run_id)] == [row.sha256]
    finally:
        as_verifier.close()
    # not even the verifier rewrites the log: it is append-only for every group role
    verifier_db = sa.create_engine(team["verifier"])
    try:
        for statement in ("UPDATE cert_log SET line = 'x'", "DELETE FROM cert_log"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), \
                    verifier_db.begin() as conn:
                conn.execute(sa.text(statement))
        with pytest.raises(sa.exc.ProgrammingError, match="must be owner of table runs"), \
                verifier_db.begin() as conn:
            conn.execute(sa.text("DROP TABLE runs"))
    finally:
        verifier_db.dispose()
