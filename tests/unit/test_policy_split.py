"""``Policy`` in two parts read from one flat ``[verify]`` table: ``compare`` (what the
comparison tolerates) and ``rerun`` (what the rerun is allowed). The file format is the
one it was, and a repo's auditor.toml cannot use the split to loosen anything unseen."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.core.errors import InputError
from auditor.core.policy import (
    ComparePolicy,
    Policy,
    RerunPolicy,
    load_policy,
    loosenings,
    policy_path,
)


def _load(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "auditor.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_one_flat_table_fills_both_parts(tmp_path: Path) -> None:
    policy = _load(tmp_path, '[verify]\nbitwise = true\nignore_outputs = ["out/*.png"]\n'
                             'pass_env = ["HF_TOKEN"]\nallow_gpu_mismatch = true\n')
    assert policy.compare == ComparePolicy(bitwise=True, ignore_outputs=("out/*.png",))
    assert policy.rerun == RerunPolicy(pass_env=("HF_TOKEN",), allow_gpu_mismatch=True)
    assert not hasattr(policy.compare, "pass_env")  # comparers never see the rerun part
    assert not hasattr(policy.rerun, "bitwise")


def test_results_keep_the_flat_table(tmp_path: Path) -> None:
    policy = _load(tmp_path, '[verify]\npass_env = ["A"]\ncompare_logs = "strict"\n')
    table = policy.table()
    assert table["pass_env"] == ["A"] and table["compare_logs"] == "strict"
    assert "compare" not in table and "rerun" not in table
    assert set(table) == set(ComparePolicy.model_fields) | set(RerunPolicy.model_fields)
    assert Policy.from_table(table) == policy  # what a result stores reads back the same


@pytest.mark.parametrize("text", [
    "[verify]\n[verify.compare]\nbitwise = false\n",  # the parts are no keys of the file
    '[verify]\nrerun = {pass_env = ["X"]}\n',
    "[verify]\nallow_gpu_mismatchh = true\n",  # a typo never silently loosens
])
def test_keys_outside_the_format_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError, match=r"policy key '(compare|rerun|allow_gpu_mismatchh)'"):
        _load(tmp_path, text)


def test_both_parts_loosenings_are_reported(tmp_path: Path) -> None:
    policy = _load(tmp_path, '[verify]\nignore_outputs = ["noise*"]\nallow_gpu_mismatch = true\n')
    lines = loosenings(policy)
    assert lines[0].startswith("ignore_outputs:")
    assert lines[-1].startswith("allow_gpu_mismatch:")
    assert loosenings(policy.with_gpu_mismatch()) == lines
    assert loosenings(Policy().with_gpu_mismatch()) == [lines[-1]]
    assert loosenings(Policy()) == []


def test_strict_types_hold_in_both_parts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="allow_gpu_mismatch"):
        _load(tmp_path, '[verify]\nallow_gpu_mismatch = "yes"\n')
    with pytest.raises(InputError, match="bitwise"):
        _load(tmp_path, "[verify]\nbitwise = 1\n")


def test_policy_path_finds_the_repo_file(tmp_path: Path) -> None:
    assert policy_path(None, tmp_path) is None
    (tmp_path / "auditor.toml").write_text("[verify]\n", encoding="utf-8")
    assert policy_path(None, tmp_path) == tmp_path / "auditor.toml"
    assert policy_path(Path("other.toml"), tmp_path) == Path("other.toml")


@pytest.mark.parametrize("glob", ["timing.json", "outputs/timing.json", "*.json", "timing.*"])
def test_ignore_outputs_globs_match_as_users_write_them(glob: str) -> None:
    # outputs are stored as outputs/<path in the working directory>; a glob written as that
    # path (the way users write it) matches too, not only one with the outputs/ prefix
    policy = ComparePolicy(ignore_outputs=(glob,))
    assert policy.is_ignored("outputs/timing.json")
    assert not policy.is_ignored("outputs/model.pt")


def test_log_outputs_match_inside_the_working_directory() -> None:
    policy = ComparePolicy(log_outputs=("logs/*.txt",))
    assert policy.is_log_output("outputs/logs/train.txt")
    assert not policy.is_log_output("outputs/ckpt/logs.bin")
