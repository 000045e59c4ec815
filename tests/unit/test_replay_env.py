"""What a rerun replays: recorded variables, hash seed, thread counts; skips only by name."""

from __future__ import annotations

import os

import pytest

from auditor.core.errors import CouldNotVerify
from auditor.core.schema import Determinism, Environment, RunRecord, Seeds
from auditor.rerun.sandbox import _argv, replay_env
from tests.factories import make_record


def rec(env_vars: dict[str, str], threads: int | None, argv: tuple[str, ...] = ("python", "t.py"),
        hashseed: str = "77") -> RunRecord:
    return make_record(
        argv=argv, seeds=Seeds(pythonhashseed=hashseed),
        determinism=Determinism(source="observed-in-process", torch_num_threads=threads),
        environment=Environment(env_vars=env_vars))


def test_recorded_values_and_hash_seed_are_replayed_secrets_and_host_paths_not() -> None:
    env = replay_env(rec({"OMP_NUM_THREADS": "1", "GITHUB_TOKEN": "[REDACTED]", "PATH": "/x",
                          "LANG": "C.UTF-8"}, 1), frozenset(), ())
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONHASHSEED"] == "77"
    assert env["LANG"] == "C.UTF-8" and "GITHUB_TOKEN" not in env and "PATH" not in env


def test_thread_count_set_only_when_the_host_default_differs() -> None:
    cores = len(os.sched_getaffinity(0))
    assert "OMP_NUM_THREADS" not in replay_env(rec({}, cores), frozenset(), ())
    assert replay_env(rec({}, cores + 3), frozenset(), ())["OMP_NUM_THREADS"] == str(cores + 3)


def test_skip_switches_drop_exactly_the_named_setting() -> None:
    env = replay_env(rec({"OMP_NUM_THREADS": "1"}, 1), frozenset({"threads"}), ())
    assert "OMP_NUM_THREADS" not in env and env["PYTHONHASHSEED"] == "77"
    env = replay_env(rec({"OMP_NUM_THREADS": "1"}, 1), frozenset({"pythonhashseed"}), ())
    assert "PYTHONHASHSEED" not in env and env["OMP_NUM_THREADS"] == "1"


def test_pass_env_brings_a_declared_host_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert replay_env(rec({"HF_TOKEN": "[REDACTED]"}, 1), frozenset(), ("HF_TOKEN",))["HF_TOKEN"]


def test_interpreter_is_the_image_one_and_redacted_argv_cannot_replay() -> None:
    assert _argv(rec({}, 1, argv=("/home/u/.venv/bin/python3.11", "t.py")))[0] == "python"
    with pytest.raises(CouldNotVerify, match="redacted secret"):
        _argv(rec({}, 1, argv=("python", "t.py", "--key", "[REDACTED]")))
