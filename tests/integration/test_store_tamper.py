"""The store edited behind auditor's back with plain SQL (issue 8, finding 6): what
``audit list``/``show`` display comes from digested data, and metric series carry a
digest that fsck and verify check. Real `audit record` runs of a small script."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import audit

SCRIPT = ("import json\n"
          "for step in range(5):\n"
          "    print(json.dumps({'step': step, 'loss': 1.0 / (step + 1)}), flush=True)\n")


@pytest.fixture
def recorded(make_repo: Callable[..., Path], tmp_path: Path) -> dict[str, Any]:
    repo = make_repo({"t.py": SCRIPT, ".gitignore": ".auditor/\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("--json", "record", "--name", "honest", "--", sys.executable, "t.py", cwd=repo,
                env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    return {"repo": repo, "env": env, "run": run_id, "db": tmp_path / "store" / "store.db"}


def sql(w: dict[str, Any], statement: str, *params: object) -> None:
    with sqlite3.connect(w["db"]) as conn:
        conn.execute(statement, params)


def cli(w: dict[str, Any], *args: str) -> Any:
    return audit(*args, cwd=w["repo"], env=w["env"])


def test_the_series_digest_is_recorded(recorded: dict[str, Any]) -> None:
    shown = json.loads(cli(recorded, "--json", "show", recorded["run"]).stdout)
    assert len(shown["metrics"]["series_sha256"]) == 64
    assert cli(recorded, "fsck").returncode == 0


def test_summary_columns_edited_in_sql_do_not_change_what_list_shows(
    recorded: dict[str, Any]
) -> None:
    commit = json.loads(cli(recorded, "--json", "list").stdout)[0]["commit"]
    sql(recorded, "update runs set name='blessed', summary=?, \"commit\"=? where id=?",
        json.dumps({"final": {"loss": 0.0}, "tags": ["release"]}), "0" * 40, recorded["run"])
    row = json.loads(cli(recorded, "--json", "list").stdout)[0]
    assert row["name"] == "honest" and row["commit"] == commit
    assert row["final_metrics"]["loss"] == pytest.approx(0.2) and row["tags"] == []
    assert "blessed" not in cli(recorded, "list").stdout


def test_an_edited_record_is_listed_as_corrupt(recorded: dict[str, Any]) -> None:
    with sqlite3.connect(recorded["db"]) as conn:
        text = conn.execute("select record from runs").fetchone()[0]
    sql(recorded, "update runs set record=?", text.replace('"honest"', '"blessed"'))
    row = json.loads(cli(recorded, "--json", "list").stdout)[0]
    assert row["status"] == "corrupt" and "blessed" not in json.dumps(row)


def test_a_changed_metric_point_is_an_integrity_error(recorded: dict[str, Any]) -> None:
    sql(recorded, "update metrics set bits=bits+1, value=value+1e-16 where seq=2")
    res = cli(recorded, "fsck")
    assert res.returncode == 3, res.stdout
    assert f"run {recorded['run']}: the stored metric series does not match" in res.stdout
    res = cli(recorded, "verify", recorded["run"], "--backend", "venv")
    assert res.returncode == 3, res.stderr  # before any rerun: not a "not-reproduced"
    assert "metric points were changed" in res.stderr and "likely cause" not in res.stdout


@pytest.mark.parametrize("edit", ["delete from metrics where seq=4",
                                  "insert into metrics values ((select id from runs), 99, "
                                  "'loss', 9, 0.0, 0, 0.0)"])
def test_a_deleted_or_added_point_is_caught(recorded: dict[str, Any], edit: str) -> None:
    sql(recorded, edit)
    res = cli(recorded, "fsck")
    assert res.returncode == 3 and "metric series does not match" in res.stdout
