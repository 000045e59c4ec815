"""Issue 9 end to end: deterministic runs are certified however their author keeps logs and
outputs, and nondeterministic variants are still caught.

One throwaway repository, outputs NOT git-ignored (as in most research code), every run's
stdout and stderr redirected into a file inside the repository (`> log.txt 2>&1`, or
`| tee`). The seeded, PYTHONHASHSEED-replayed and thread-replayed trainings of
fixtures/train/train_mlp.py are recorded one after another in it, so each later run starts
in a tree dirty with the earlier runs' logs and `outputs/model.safetensors`; then all are
verified with a real docker engine. Each has a deliberately nondeterministic variant
(clock seed; hash seed or thread count not replayed) that must be not-reproduced with the
right first divergence. The venv backend gets the same log and dirty-repo patterns on a
small non-torch training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT, GIT_ENV, audit
from tests.e2e.conftest import six_venv, training_project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PY = sys.executable
SEEDED = ("--seed", "3")
HASHED = ("--hash-order", "--seed", "5")
THREADED = ("--epochs", "1", "--hidden", "512", "--l2", "1e-4", "--seed", "9")


def log_of(redirect: str) -> str:
    """The file a shell redirect (`> f 2>&1`) or `| tee f` writes."""
    words = redirect.split()
    return words[words.index(">") + 1] if ">" in words else words[words.index("tee") + 1]


def record_in_shell(root: Path, env: dict[str, str], argv: str, redirect: str) -> str:
    """`audit record` typed into a shell with its output kept in the repository."""
    line = f"{AUDIT} --json record --input data/blobs.csv -- {PY} train_mlp.py {argv} {redirect}"
    res = subprocess.run(["bash", "-c", line], cwd=root, env={**os.environ, **GIT_ENV, **env},
                         capture_output=True, text=True, timeout=600, check=False)
    log = root / log_of(redirect)
    text = log.read_text() if log.is_file() else res.stdout
    assert res.returncode == 0, text + res.stderr
    ids = [json.loads(x)["id"] for x in text.splitlines() if x.startswith('{"id"')]
    assert len(ids) == 1, text
    return str(ids[0])


def verify(root: Path, env: dict[str, str], run_id: str,
           *args: str) -> tuple[int, dict[str, Any], str]:
    res = audit("--json", "verify", run_id, *args, cwd=root, env=env, timeout=1200)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, data, res.stderr


def verdict_of(data: dict[str, Any]) -> dict[str, Any]:
    assert len(data["results"]) == 1, data
    return data["results"][0]["verdict"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def repo(
    tmp_path_factory: pytest.TempPathFactory, torch_rerun_env: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """One repository, three deterministic trainings and their variants recorded in it."""
    # no .gitignore: outputs and logs are untracked
    root, store = training_project(tmp_path_factory.mktemp("tree"), gitignore=None)
    env = {**store, **torch_rerun_env}
    runs = {
        "seeded": record_in_shell(root, env, " ".join(SEEDED), "> o1.txt 2>&1"),
        "hashed": record_in_shell(root, env, " ".join(HASHED), "2>&1 | tee o2.txt"),
        "threads": record_in_shell(root, {**env, "OMP_NUM_THREADS": "1"}, " ".join(THREADED),
                                   "> o3.txt 2>&1"),
        "clock": record_in_shell(root, env, "--seed clock", "> o4.txt 2>&1"),
    }
    yield {"root": root, "env": env, "runs": runs}


def test_runs_recorded_in_one_dirty_repo_are_all_certified(repo: dict[str, Any]) -> None:
    root, env, runs = repo["root"], repo["env"], repo["runs"]
    for case, extra in (("seeded", ()), ("hashed", ()), ("threads", ("--bitwise",))):
        code, data, err = verify(root, env, runs[case], *extra)
        assert code == 0, (case, err, data)
        assert verdict_of(data)["level"] == "reproduced-bitwise", (case, data)
    shown = json.loads(audit("--json", "show", runs["threads"], cwd=root, env=env).stdout)
    untracked = shown["code"]["untracked_artifacts"]
    assert "code/untracked/o1.txt" in untracked and "code/untracked/o3.txt" not in untracked
    assert not any("model.safetensors" in name for name in untracked)
    assert "outputs/outputs/model.safetensors" in {a["name"] for a in shown["artifacts"]}


def test_clock_seeded_variant_is_caught_at_step_0(repo: dict[str, Any]) -> None:
    code, data, err = verify(repo["root"], repo["env"], repo["runs"]["clock"])
    assert code == 1, err
    verdict = verdict_of(data)
    assert verdict["level"] == "not-reproduced"
    assert verdict["first_divergence"].startswith("metrics/"), verdict
    assert "@step 0" in verdict["first_divergence"]
    assert verdict["causes"][0]["category"] == "seed", verdict["causes"]


def test_hash_seed_not_replayed_is_caught_and_named(repo: dict[str, Any]) -> None:
    code, data, err = verify(repo["root"], repo["env"], repo["runs"]["hashed"],
                             "--skip-replay", "pythonhashseed")
    assert code == 1, err
    verdict = verdict_of(data)
    assert verdict["first_divergence"].startswith("metrics/"), verdict
    assert "PYTHONHASHSEED" in [c["what"] for c in verdict["causes"][:2]], verdict["causes"]


def test_thread_count_not_replayed_is_caught_and_named(repo: dict[str, Any]) -> None:
    code, data, err = verify(repo["root"], repo["env"], repo["runs"]["threads"], "--bitwise",
                             "--skip-replay", "threads")
    assert code == 1, err
    verdict = verdict_of(data)
    assert verdict["first_divergence"].startswith(("metrics/", "weights/", "files/")), verdict
    causes = [c["what"] for c in verdict["causes"][:3]]
    assert any(c in ("torch_num_threads", "OMP_NUM_THREADS") for c in causes), causes


VENV_TRAIN = (
    "import json, os, random, six, sys\n"
    "seed = int(sys.argv[1]) if sys.argv[1] != 'clock' else int.from_bytes(os.urandom(4))\n"
    "random.seed(seed)\n"
    "for step in range(3):\n"
    "    print(json.dumps({'step': step, 'x': random.random()}), flush=True)\n"
    "os.makedirs('checkpoints', exist_ok=True)\n"
    "open('checkpoints/last.bin', 'wb').write(bytes([0]) + random.randbytes(256))\n"
)


@pytest.mark.parametrize("backend", ["venv"])
def test_venv_backend_log_redirect_and_dirty_repo(make_repo, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  backend: str) -> None:
    root = make_repo({"t.py": VENV_TRAIN})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    py = six_venv(tmp_path / "trainenv")
    ids = []
    for seed, redirect in (("1", "> a.txt 2>&1"), ("2", "2>&1 | tee b.txt"),
                           ("clock", "> c.txt 2>&1")):
        line = f"{AUDIT} --json record -- {py} t.py {seed} {redirect}"
        res = subprocess.run(["bash", "-c", line], cwd=root,
                             env={**os.environ, **GIT_ENV, **env}, capture_output=True,
                             text=True, timeout=600, check=False)
        log = (root / log_of(redirect)).read_text()
        assert res.returncode == 0, log + res.stderr
        ids.append(next(json.loads(x)["id"] for x in log.splitlines() if x.startswith('{"id"')))
    for run_id in ids[:2]:
        code, data, err = verify(root, env, run_id, "--backend", backend)
        assert code == 0, (err, data)
        assert verdict_of(data)["level"] == "reproduced-bitwise", data
    code, data, err = verify(root, env, ids[2], "--backend", backend)
    assert code == 1, (err, data)
    assert verdict_of(data)["first_divergence"].startswith("metrics/x@step 0"), data
