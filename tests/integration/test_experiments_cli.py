"""Issue 18, items 2-4 from the terminal, on runs recorded by `audit record` of a small
real script: `audit compare` is an experiment table (exit 0) unless one run reproduces
the other; `audit list` hides reruns, shows chosen columns and fits 80 columns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from auditor.core.schema import new_run_id
from auditor.store import open_store
from auditor.store.base import MetricPoint
from tests.conftest import audit, commit_repo

SCRIPT = '''
import argparse, json, math
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
acc = 0.5 + 0.1 * math.log10(a.lr * 1000) + 0.01 * math.sin(a.seed * 2.1 + 1)
for step in range(3):
    print(json.dumps({"step": step, "accuracy": acc * (step + 1) / 3}))
'''


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Six recorded runs (lr 0.001/0.1 x seeds 0-2) and a stored rerun of the first."""
    tmp = tmp_path_factory.mktemp("experiments")
    repo = commit_repo(tmp / "repo", {"train.py": SCRIPT, ".gitignore": ".auditor/\n"})
    env = {"AUDITOR_STORE": str(tmp / "store")}
    ids: dict[str, str] = {}
    for lr in ("0.001", "0.1"):
        for seed in ("0", "1", "2"):
            res = audit("--json", "record", "--", sys.executable, "train.py", "--lr", lr,
                        "--seed", seed, cwd=repo, env=env)
            assert res.returncode == 0, res.stderr
            ids[f"{lr}/{seed}"] = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    store = open_store(str(tmp / "store"))
    try:  # a rerun of the first run (what `audit rerun` stores, without building)
        original = store.get_record(ids["0.001/0"])
        rerun = original.model_copy(update={"identity": original.identity.model_copy(
            update={"id": new_run_id(), "reproduces": original.identity.id})})
        store.put_record(rerun)
        for key, (steps, values) in store.metric_arrays(original.identity.id).items():
            store.add_metrics(rerun.identity.id, [
                MetricPoint(key, int(s), float(v), float(s)) for s, v in zip(steps, values,
                                                                            strict=True)])
        ids["rerun"] = rerun.identity.id
    finally:
        store.close()
    ids["_repo"], ids["_store"] = str(repo), str(tmp / "store")
    return ids


def run(sweep: dict[str, str], *args: str, columns: int | None = None
        ) -> tuple[int, str, str]:
    env = {"AUDITOR_STORE": sweep["_store"], **({"COLUMNS": str(columns)} if columns else {})}
    res = audit(*args, cwd=Path(sweep["_repo"]), env=env)
    return res.returncode, res.stdout, res.stderr


def test_two_sweep_runs_are_an_experiment_table_not_a_verdict(sweep: dict[str, str]) -> None:
    code, out, err = run(sweep, "compare", sweep["0.1/0"], sweep["0.1/1"])
    assert code == 0, err
    assert "not-reproduced" not in out and "likely cause" not in out
    header = out.splitlines()[0].split()
    assert header[:3] == ["id", "name", "verified"] and "seed" in header
    assert "accuracy" in header and "lr" not in header  # lr is the same: listed below
    assert "same in all: " in out and "lr=0.1" in out


def test_any_number_of_runs_and_json(sweep: dict[str, str]) -> None:
    four = [sweep[k] for k in ("0.001/0", "0.001/1", "0.1/0", "0.1/1")]
    code, out, err = run(sweep, "--json", "compare", *four)
    assert code == 0, err
    table = json.loads(out)
    assert [r["id"] for r in table["runs"]] == four
    assert table["differing"] == ["lr", "seed"] and table["metrics"] == ["accuracy"]
    assert table["runs"][2]["params"] == {"lr": 0.1, "seed": 0}


def test_compare_where_gives_the_importance_over_comparable_runs(sweep: dict[str, str]) -> None:
    code, out, err = run(sweep, "compare", "--where", "name ~ train", "--metric", "accuracy")
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert sweep["rerun"] not in out  # originals only
    assert "importance for accuracy:" in lines
    assert "over 6 comparable run(s) (train.py at commit " in out
    assert any(line.startswith("lr: stands out of seed noise") for line in lines)
    assert any(line.startswith("best setting lr=0.1: accuracy ") for line in lines)


def test_a_rerun_and_its_original_get_the_verdict(sweep: dict[str, str]) -> None:
    code, out, err = run(sweep, "--json", "compare", sweep["0.001/0"], sweep["rerun"])
    assert code == 0, err
    assert json.loads(out)["level"] == "reproduced-bitwise"
    code, out, _ = run(sweep, "compare", sweep["rerun"], sweep["0.001/0"])  # either order
    assert code == 0 and out.startswith("reproduced-bitwise") and "(rerun)" in out
    code, out, _ = run(sweep, "--json", "compare", "--as-rerun", sweep["0.1/0"], sweep["0.1/1"])
    assert code == 1 and json.loads(out)["level"] == "not-reproduced"
    code, _, err = run(sweep, "compare", "--as-rerun", sweep["0.1/0"])
    assert code == 2 and err.startswith("error: --as-rerun compares two runs (1 given)")
    code, _, err = run(sweep, "compare", "--where", "name = nothing")
    assert code == 2 and err.startswith("error: no runs match 'name = nothing'")


def test_list_hides_reruns_shows_columns_and_fits_80(sweep: dict[str, str]) -> None:
    code, out, err = run(sweep, "list", columns=80)
    assert code == 0, err
    table = out.splitlines()[:8]  # header, six runs, the reruns line (then the signing hint)
    assert all(len(line) <= 80 for line in table), out
    assert sweep["rerun"][:12] not in out
    assert "1 rerun(s) not listed: --include-reruns" in out
    code, out, _ = run(sweep, "list", "--include-reruns", "--columns",
                       "params.lr,params.seed,metrics.accuracy", columns=80)
    lines = out.splitlines()
    assert lines[0].split()[-3:] == ["lr", "seed", "accuracy"]
    at = next(i for i, line in enumerate(lines) if line.startswith(sweep["0.001/0"][:12]))
    assert lines[at + 1].startswith("↳ " + sweep["rerun"][:12])  # right under its original
    assert lines[at].split()[-3:-1] == ["0.001", "0"]
    code, _, err = run(sweep, "list", "--columns", "lr")
    assert code == 2 and "'lr' is not params.NAME or metrics.NAME" in err
