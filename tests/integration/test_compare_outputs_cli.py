"""`audit compare` on recorded runs (real scripts, a real store): a `.bin` output that is no
torch file is compared as bytes, never an exit 2 (issue 8); what the policy ignores is
named, never counted as compared, and shown first as a loosening (issue 8, finding 3);
a log file whose timings differ does not fail the comparison unless the policy is strict
(issue 9)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import audit, audit_compare, commit_repo

PY = sys.executable
WRITER = '''
import os, sys, time
variant = sys.argv[1]
os.makedirs("out", exist_ok=True)
payload = os.urandom(64) if variant == "random" else bytes(range(64))
open("out/model.bin", "wb").write(payload)           # raw bytes, no torch file
open("out/noise.dat", "wb").write(os.urandom(16))     # always different
with open("out/train.log", "w") as log:
    log.write(f"epoch 1 took {time.perf_counter():.6f} s\\n")
    log.write("lr 0.3\\n" if variant == "lr" else "lr 0.1\\n")
print('{"step": 0, "loss": 1.0}')
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("outputs")
    repo = commit_repo(tmp_path / "repo", {
        "w.py": WRITER, ".gitignore": "out/\n",
        "ignore.toml": '[verify]\nignore_outputs = ["outputs/out/noise*"]\n',
        "strict.toml":
            '[verify]\nignore_outputs = ["outputs/out/noise*"]\ncompare_logs = "strict"\n'})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    ids = {"_repo": str(repo), "_store": str(tmp_path / "store")}
    for variant in ("fixed", "fixed2", "random", "lr"):
        res = audit("--json", "record", "--", PY, "w.py", variant, cwd=repo, env=env)
        assert res.returncode == 0, res.stderr
        ids[variant] = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    return ids


compare = audit_compare


def test_a_random_bin_output_is_compared_as_bytes(runs: dict[str, str]) -> None:
    code, verdict, err = compare(runs, "fixed", "random", "--policy", "ignore.toml")
    assert code == 1, err  # not 2: the .bin is not read as a torch checkpoint
    assert verdict["first_divergence"] == "files/outputs/out/model.bin"
    [diff] = [d for d in verdict["differences"]["files"] if d["where"].endswith("model.bin")]
    assert diff["kind"] == "bytes"


def test_ignored_outputs_are_named_and_not_compared(runs: dict[str, str]) -> None:
    code, verdict, err = compare(runs, "fixed", "fixed2", "--policy", "ignore.toml")
    assert code == 0, err
    assert verdict["level"] == "reproduced-bitwise"
    assert verdict["outputs"]["ignored"] == ["outputs/out/noise.dat"]
    assert "outputs/out/noise.dat" not in verdict["outputs"]["compared"]
    assert "outputs/out/model.bin" in verdict["outputs"]["compared"]
    assert verdict["loosenings"][0].startswith(
        "ignore_outputs: outputs matching outputs/out/noise*")
    res = audit("compare", "--as-rerun", runs["fixed"], runs["fixed2"], "--policy", "ignore.toml",
                cwd=Path(runs["_repo"]), env={"AUDITOR_STORE": runs["_store"]})
    assert res.stdout.splitlines()[0].startswith("policy loosened: ignore_outputs")


def test_a_log_difference_is_informational_unless_strict(runs: dict[str, str]) -> None:
    code, verdict, err = compare(runs, "fixed", "lr", "--policy", "ignore.toml")
    assert code == 0, err
    [log] = [d for d in verdict["differences"]["files"] if d["where"].endswith("train.log")]
    assert log["stats"]["informational"] and log["stats"]["first_line"] == 2
    assert any("'lr 0.1' → 'lr 0.3'" in line for line in verdict["loosenings"])
    code, verdict, _ = compare(runs, "fixed", "lr", "--policy", "strict.toml")
    assert code == 1 and verdict["first_divergence"] == "files/outputs/out/train.log"
    code, verdict, _ = compare(runs, "fixed", "fixed2", "--policy", "strict.toml")
    assert code == 0, verdict  # the timing line differs only inside its mask
