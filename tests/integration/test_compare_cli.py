"""`audit compare A B` on recorded runs whose weights differ in the ways checkpoints break."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import audit, audit_compare, commit_repo

PY = sys.executable
WRITER = '''
import sys
import numpy as np
from safetensors.numpy import save_file
variant = sys.argv[1]
rng = np.random.default_rng(0)
tensors = {"fc1.weight": rng.standard_normal((8, 4), dtype=np.float32),
           "fc1.bias": np.zeros(8, dtype=np.float32)}
if variant == "extra-key":
    tensors["fc2.weight"] = np.ones((2, 8), dtype=np.float32)
if variant == "shape":
    tensors["fc1.weight"] = rng.standard_normal((8, 5), dtype=np.float32)
if variant == "nudged":
    w = tensors["fc1.weight"].copy()
    w[0, 0] = np.nextafter(w[0, 0], np.float32(10.0))
    tensors["fc1.weight"] = w
save_file(tensors, "model.safetensors")
if variant == "truncated":
    data = open("model.safetensors", "rb").read()
    open("model.safetensors", "wb").write(data[: len(data) - 40])
if variant == "corrupt":
    open("model.safetensors", "wb").write(b"\\x00" * 16 + b"not a checkpoint")
print('{"step": 0, "loss": 1.0}')
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("compare")
    repo = commit_repo(tmp_path / "repo", {"w.py": WRITER, ".gitignore": "*.safetensors\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    ids = {}
    for variant in ("good", "good2", "extra-key", "shape", "nudged", "truncated", "corrupt"):
        res = audit("--json", "record", "--output", "model.safetensors", "--", PY, "w.py",
                    variant, cwd=repo, env=env)
        assert res.returncode == 0, res.stderr
        ids[variant] = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    ids["_repo"], ids["_store"] = str(repo), str(tmp_path / "store")
    return ids


compare = audit_compare


def test_identical_weights_are_bitwise(runs: dict[str, str]) -> None:
    code, verdict, err = compare(runs, "good", "good2")
    assert code == 0, err
    assert verdict["level"] == "reproduced-bitwise"


def test_mismatched_keys_are_listed(runs: dict[str, str]) -> None:
    code, verdict, _ = compare(runs, "good", "extra-key")
    assert code == 1 and verdict["level"] == "not-reproduced"
    kinds = {d["kind"] for d in verdict["differences"]["weights"]}
    wheres = [d["where"] for d in verdict["differences"]["weights"]]
    assert "extra" in kinds and any(w.endswith("fc2.weight") for w in wheres)


def test_shape_change_has_a_per_tensor_reason(runs: dict[str, str]) -> None:
    code, verdict, _ = compare(runs, "good", "shape")
    assert code == 1
    shape = next(d for d in verdict["differences"]["weights"] if d["kind"] == "shape")
    assert shape["where"].endswith("fc1.weight")
    assert shape["left"] == "(8, 4)" and shape["right"] == "(8, 5)"


def test_one_ulp_is_within_tolerance_but_not_bitwise(runs: dict[str, str]) -> None:
    code, verdict, _ = compare(runs, "good", "nudged")
    assert code == 0 and verdict["level"] == "reproduced-within-tolerance"
    code, verdict, _ = compare(runs, "good", "nudged", "--bitwise")
    assert code == 1 and verdict["level"] == "not-reproduced"
    diff = verdict["differences"]["weights"][0]
    assert diff["stats"]["differing"] == 1 and diff["stats"]["max_ulp"] == 1


@pytest.mark.parametrize("variant", ["truncated", "corrupt"])
def test_a_broken_checkpoint_in_the_rerun_is_not_reproduced(runs: dict[str, str],
                                                            variant: str) -> None:
    """A rerun that writes a checkpoint no reader can read did not reproduce the original's
    bytes: a difference beyond tolerance with the reader's reason (not bad input)."""
    code, verdict, err = compare(runs, "good", variant)
    assert code == 1 and verdict["level"] == "not-reproduced", err
    [diff] = verdict["differences"]["weights"]
    assert (diff["kind"], diff["within_tolerance"]) == ("bytes", False)
    assert "cannot explain them" in diff["comments"][0] and "safetensors" in diff["comments"][0]
    assert "Traceback" not in err
