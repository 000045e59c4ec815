"""Issue 18, item 1: a wrapped argparse script's params are complete (defaults too, from
the parsed namespace inside the process), named as argparse names them (`batch_size`),
with where each value came from; filters and importance see the full set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import audit, commit_repo

SCRIPT = '''
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--optimizer", default="sgd")
p.add_argument("--epochs", type=int, default=1)
if len(sys.argv) > 1 and sys.argv[1] == "--config":
    p.add_argument("--config")
    p.set_defaults(**json.load(open("config.json")))
a = p.parse_args()
print(json.dumps({"step": 0, "loss": a.lr * a.batch_size}))
'''


def _params(repo: Path, env: dict[str, str], *args: str) -> tuple[dict[str, object], str]:
    res = audit("--json", "record", "--", sys.executable, "train.py", *args, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    shown = json.loads(audit("--json", "show", run_id, cwd=repo, env=env).stdout)
    return shown["params"], shown["not_captured"].get("params", "")


def test_defaults_are_recorded_under_argparse_names_with_their_source(tmp_path: Path) -> None:
    repo = commit_repo(tmp_path / "repo", {"train.py": SCRIPT, "config.json": '{"epochs": 5}',
                                           ".gitignore": ".auditor/\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    params, note = _params(repo, env, "--lr", "0.3", "--batch-size", "64")
    assert params == {"lr": 0.3, "batch_size": 64, "optimizer": "sgd", "epochs": 1}
    assert note == "default: epochs, optimizer; typed: batch_size, lr"
    params, note = _params(repo, env, "--config", "config.json")
    assert params["epochs"] == 5 and params["config"] == "config.json"
    assert note == "config: epochs; default: batch_size, lr, optimizer; typed: config"
    # one setting, one column: a filter on the default finds the runs that never typed it
    listed = audit("--json", "list", "--where", "params.optimizer = sgd", cwd=repo, env=env)
    assert len(json.loads(listed.stdout)) == 2
    assert "batch-size" not in listed.stdout
