"""Issue 18, item 1: a wrapped argparse script's params are complete (defaults too, from
the parsed namespace inside the process), named as argparse names them (`batch_size`),
with where each value came from; filters and importance see the full set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def _record(repo: Path, env: dict[str, str], *argv: str) -> dict[str, Any]:
    res = audit("--json", "record", "--", *argv, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    shown: dict[str, Any] = json.loads(audit("--json", "show", run_id, cwd=repo, env=env).stdout)
    return shown


def _repo(tmp_path: Path, files: dict[str, str]) -> tuple[Path, dict[str, str]]:
    repo = commit_repo(tmp_path / "repo", {**files, ".gitignore": ".auditor/\n"})
    return repo, {"AUDITOR_STORE": str(tmp_path / "store")}


TWICE = '''
import argparse
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--batch-size", type=int, default=32)
probe = argparse.ArgumentParser()  # an explicit list first: not the command line
probe.add_argument("--x", default="0")
assert probe.parse_args(["--x", "1"]).x == "1"
a = p.parse_args()
q = argparse.ArgumentParser()  # the command line parsed again, by another parser
q.add_argument("--other", default="later")
q.parse_known_args()
a = p.parse_args()
print(a.lr)
'''


def test_only_the_first_parse_of_the_command_line_counts(tmp_path: Path) -> None:
    """An explicit list (``parse_args(["--x", "1"])``) is not the command line; a second
    parse of the command line (another parser) does not replace the first."""
    repo, env = _repo(tmp_path, {"train.py": TWICE})
    shown = _record(repo, env, sys.executable, "train.py", "--lr", "0.5")
    assert shown["params"] == {"lr": 0.5, "batch_size": 32}
    assert shown["not_captured"]["params"] == "default: batch_size; typed: lr"


PARENT = '''
import argparse, subprocess, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
a = p.parse_args()
subprocess.run([sys.executable, "child.py", "--depth", "3"], check=True)
'''
CHILD = '''
import argparse
p = argparse.ArgumentParser()
p.add_argument("--depth", type=int, default=1)
p.add_argument("--width", type=int, default=8)
p.parse_args()
'''
LAUNCHER = '''
import argparse, subprocess, sys
p = argparse.ArgumentParser()
p.add_argument("--nproc", type=int, default=1)
p.add_argument("script")
p.add_argument("rest", nargs=argparse.REMAINDER)
a = p.parse_args()
subprocess.run([sys.executable, a.script, *a.rest], check=True)
'''


def test_the_outermost_parse_wins_and_a_launcher_gives_way(tmp_path: Path) -> None:
    """Several processes parse: the run's own is the outermost (a script's helper does not
    replace it); a launcher's (its REMAINDER took the script's words) gives way to the
    script it started."""
    repo, env = _repo(tmp_path, {"parent.py": PARENT, "child.py": CHILD,
                                 "launch.py": LAUNCHER})
    shown = _record(repo, env, sys.executable, "parent.py", "--lr", "0.2")
    assert shown["params"] == {"lr": 0.2}
    shown = _record(repo, env, sys.executable, "launch.py", "--nproc", "2", "child.py",
                    "--width", "16")
    assert shown["params"] == {"depth": 1, "width": 16}
    assert shown["not_captured"]["params"] == "default: depth; typed: width"


def test_a_script_without_argparse_keeps_its_command_line_params_normalised(
        tmp_path: Path) -> None:
    repo, env = _repo(tmp_path, {"train.py": "import sys\nprint(sys.argv)\n"})
    shown = _record(repo, env, sys.executable, "train.py", "--batch-size", "8", "--fast")
    assert shown["params"] == {"batch_size": 8, "fast": True}
    assert "params" not in shown["not_captured"]


GH_TOKEN = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SECRET = f'''
import argparse
p = argparse.ArgumentParser()
p.add_argument("--remote", default="{GH_TOKEN}")
p.add_argument("--password", default="hunter2-not-typed")
p.add_argument("--lr", type=float, default=0.1)
p.parse_args()
'''


def test_a_secret_default_goes_through_the_secret_scan(tmp_path: Path) -> None:
    """Defaults were never on the command line, so the argv scan never saw them: the
    namespace's values are scanned as params are (by shape and by name)."""
    repo, env = _repo(tmp_path, {"train.py": SECRET})
    shown = _record(repo, env, sys.executable, "train.py")
    assert shown["params"]["lr"] == 0.1
    assert GH_TOKEN not in json.dumps(shown) and "hunter2" not in json.dumps(shown)
    assert shown["params"]["remote"] != GH_TOKEN and shown["params"]["password"] != "hunter2"
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert GH_TOKEN.encode() not in stored and b"hunter2-not-typed" not in stored


HUGE = '''
import argparse
p = argparse.ArgumentParser()
for i in range(10_000):
    p.add_argument(f"--opt-{i}", type=int, default=i)
p.add_argument("--blob", default="x" * 5_000_000)
a = p.parse_args()
print(a.opt_9999)
'''


def test_a_namespace_of_10000_entries_and_a_huge_value_is_bounded(tmp_path: Path) -> None:
    repo, env = _repo(tmp_path, {"train.py": HUGE})
    shown = _record(repo, env, sys.executable, "train.py", "--opt-0", "7")
    params = shown["params"]
    assert len(params) == 1_000 and params["opt_0"] == 7 and params["opt_999"] == 999
    assert "blob" not in params  # beyond the bound, counted in the note
    assert shown["not_captured"]["params"].endswith(
        "not recorded: 9001 more (over the bound of 1000)")
    assert len(json.dumps(shown)) < 200_000


def test_a_huge_value_is_cut_with_its_length_and_digest(tmp_path: Path) -> None:
    repo, env = _repo(tmp_path, {"train.py": (
        "import argparse\np = argparse.ArgumentParser()\n"
        "p.add_argument('--blob', default='x' * 5_000_000)\n"
        "p.add_argument('--func', default=print)\np.set_defaults(step=lambda: 0)\n"
        "p.parse_args()\n")})
    shown = _record(repo, env, sys.executable, "train.py")
    blob = shown["params"]["blob"]
    assert blob.startswith("x" * 512) and "(5000000 characters, sha256 " in blob
    assert len(blob) < 700
    assert " at 0x" not in shown["params"]["step"]  # the same text in every run
    assert shown["params"]["func"] == "<built-in function print>"
    assert shown["not_captured"]["params"] == "config: step; default: blob, func"


SUBCOMMANDS = '''
import argparse
def main(a):
    print(a.lr)
p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
sub = p.add_subparsers(dest="command")
t = sub.add_parser("train")
t.add_argument("--lr", type=float, default=0.1)
t.add_argument("--warmup", type=int, default=5)
t.set_defaults(func=main)
e = sub.add_parser("eval")
e.add_argument("--split", default="val")
a = p.parse_args()
a.func(a)
'''


def test_a_subcommand_records_its_own_arguments(tmp_path: Path) -> None:
    """The chosen sub-parser's arguments (parsed by argparse with an explicit list) are
    the run's too, and ``set_defaults(func=...)`` is recorded the same way in every run."""
    repo, env = _repo(tmp_path, {"train.py": SUBCOMMANDS})
    shown = _record(repo, env, sys.executable, "train.py", "train", "--lr", "0.3")
    assert shown["params"] == {"seed": 0, "command": "train", "lr": 0.3, "warmup": 5,
                               "func": "<function main>"}
    assert shown["not_captured"]["params"] == (
        "config: func; default: seed, warmup; typed: command, lr")


VERIFIED = '''
import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--data", default=os.path.join(os.getcwd(), "data"))
a = p.parse_args()
print(json.dumps({"step": 0, "loss": a.lr * a.batch_size}))
'''


@pytest.mark.slow
def test_a_run_recorded_from_the_probe_verifies_reproduced(tmp_path: Path) -> None:
    """The rerun's params come from its own probe too (like for like); a default holding
    the tree's path (the rerun runs in a copy elsewhere) is mapped back to the original's."""
    python = tmp_path / "env"
    subprocess.run(["python3", "-m", "venv", str(python)], check=True)
    repo, env = _repo(tmp_path, {"train.py": VERIFIED})
    shown = _record(repo, env, str(python / "bin" / "python"), "train.py", "--lr", "0.5")
    assert shown["params"] == {"lr": 0.5, "batch_size": 4, "data": str(repo / "data")}
    res = audit("--json", "verify", shown["identity"]["id"], "--backend", "venv", cwd=repo,
                env=env, timeout=600)
    result = json.loads(res.stdout)["results"][0]
    assert result["verdict"]["level"] == "reproduced-bitwise", res.stdout[-3000:]
    assert res.returncode == 0
    listed = audit("--json", "list", "--include-reruns", cwd=repo, env=env).stdout
    reruns = [r for r in json.loads(listed) if r.get("reproduces")]
    assert len(reruns) == 1
    rerun = json.loads(audit("--json", "show", reruns[0]["id"], cwd=repo, env=env).stdout)
    assert rerun["params"] == shown["params"]
    assert rerun["not_captured"]["params"] == "default: batch_size, data; typed: lr"
