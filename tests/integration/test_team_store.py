"""The team store on a real PostgreSQL server, through the real `audit` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import audit

TRAIN = """\
import json, sys
for step in range(5):
    print(json.dumps({"step": step, "loss": 1.0 / (step + 1)}))
print(json.dumps({"step": 5, "loss": float("-inf") if "--inf" in sys.argv else 0.0}))
open("model.bin", "wb").write(b"weights" * 100)
"""


def _password(url: str) -> str:
    return sa.engine.make_url(url).password or ""


def test_every_command_on_postgresql(
    pg_url: str, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo({"train.py": TRAIN, ".gitignore": "model.bin\n"})
    blobs = tmp_path / "team-blobs"
    env = {"AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": str(blobs)}
    rec = audit("record", "--name", "pg", "--", sys.executable, "train.py", cwd=repo, env=env)
    assert rec.returncode == 0, rec.stderr
    secret = _password(pg_url)
    assert secret and secret not in rec.stdout + rec.stderr  # shown as ***
    # The database remembers where its artifacts are: the URL alone is enough now.
    only_url = {"AUDITOR_STORE": pg_url}
    listed = audit("--json", "list", cwd=repo, env=only_url)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [r["name"] for r in runs] == ["pg"] and runs[0]["final_metrics"]["loss"] == 0.0
    run_id = runs[0]["id"]
    shown = audit("show", "--json", run_id[:8], cwd=repo, env=only_url)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert any(a["name"] == "outputs/model.bin" for a in record["artifacts"])
    assert audit("fsck", cwd=repo, env=only_url).returncode == 0
    out = tmp_path / "tree"
    checkout = audit("checkout", run_id, str(out), cwd=repo, env=only_url)
    assert checkout.returncode == 0, checkout.stderr
    assert (out / "train.py").read_text() == TRAIN
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        dump = "".join(str(r) for r in conn.execute(sa.text("select * from runs")))
        dump += "".join(str(r) for r in conn.execute(sa.text("select * from meta")))
    engine.dispose()
    assert secret not in dump  # T54: never stored
    other = audit("--blobs", str(tmp_path / "elsewhere"), "list", cwd=repo, env=only_url)
    assert other.returncode == 2 and "keeps its artifacts at" in other.stderr


def test_server_store_without_artifact_location_is_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    res = audit("list", cwd=tmp_path, env={"AUDITOR_STORE": pg_url, "AUDITOR_BLOBS": ""})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "has no artifact location" in res.stderr


@pytest.mark.parametrize(
    "url, expected, code",
    [  # 3: nothing answered (port 1 on 127.0.0.1 is closed); 2: the URL itself is wrong
        ("postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/team", "Connection refused", 3),
        ("postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:notaport/team", "not a store URL", 2),
        ("nosuchdb+driver://alice:s3cr3t-pw@host/db", "unsupported store URL", 2),
        ("postgresql+nosuchdriver://alice:s3cr3t-pw@host/db", "not a store URL", 2),
    ],
)
def test_bad_store_urls_are_one_line_and_never_echo_the_password(
    url: str, expected: str, code: int, tmp_path: Path
) -> None:
    res = audit("--blobs", str(tmp_path / "b"), "list", cwd=tmp_path, env={"AUDITOR_STORE": url})
    assert res.returncode == code, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert expected in res.stderr and "s3cr3t-pw" not in res.stderr + res.stdout


def test_wrong_password_is_one_line(postgres_url: str, tmp_path: Path) -> None:
    url = sa.engine.make_url(postgres_url).set(password="wrong-pw-123")
    res = audit(
        "--blobs", str(tmp_path / "b"), "list", cwd=tmp_path,
        env={"AUDITOR_STORE": url.render_as_string(hide_password=False)},
    )
    assert res.returncode == 3 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: cannot open store postgresql+psycopg://"), res.stderr
    assert "password authentication failed" in res.stderr
    assert "wrong-pw-123" not in res.stderr + res.stdout
