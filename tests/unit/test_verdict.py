"""Verdicts from differences: levels, where divergence starts, ranked causes, summary,
environment digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.certify.decide import UNEXPLAINED, decide, environment_digest, rank_causes
from auditor.compare import compare_runs
from auditor.compare.difference import Difference
from auditor.core.policy import Policy
from auditor.core.schema import (
    ArtifactRef,
    Determinism,
    Environment,
    MetricsSummary,
    PythonEnv,
    RunRecord,
    Seeds,
)
from tests.factories import make_evidence, make_record

PY = PythonEnv(executable="/usr/bin/python3", version="3.11.7", implementation="CPython",
               build="main", packages={"numpy": "1.26.4", "torch": "2.13.0", "rich": "13.7.0"})


def record(**changes: Any) -> RunRecord:
    parts: dict[str, Any] = {
        "environment": Environment(python=PY),
        "determinism": Determinism(source="observed-in-process", torch_num_threads=2),
        "seeds": Seeds(seed=1, pythonhashseed="0", torch_initial_seed=1),
        "metrics": MetricsSummary(final={"loss": 0.5, "acc": 0.9}),
        "artifacts": (ArtifactRef(name="out/model.safetensors", sha256="a" * 64, size=1,
                                  kind="output"),),
    }
    return make_record(**{**parts, **changes})


def metric(key: str, step: int | None, within: bool) -> Difference:
    return Difference(where=f"metrics/{key}", kind="value", within_tolerance=within,
                      stats={"first_step": step})


ENV = Difference(where="environment/packages/rich", kind="changed", within_tolerance=True,
                 stats={"group": "packages"})
LOG = Difference(where="files/logs/stdout.txt", kind="text", within_tolerance=True,
                 stats={"informational": True})


# -- levels ------------------------------------------------------------------------------


def test_no_difference_is_bitwise_even_with_environment_and_log_changes() -> None:
    v = decide({"environment": [ENV], "files": [LOG], "metrics": []}, record(), record(),
               Policy())
    assert v.level == "reproduced-bitwise" and v.exit_code == 0
    assert v.causes == [] and v.first_divergence is None
    assert v.summary == {"compared_metrics": 2, "compared_files": 1, "compared_logs": 0,
                         "identical": 3,
                         "within_tolerance": 0, "beyond_tolerance": 0,
                         "environment_changes": 1, "informational": 1}


def test_all_within_tolerance() -> None:
    v = decide({"metrics": [metric("loss", 3, True)], "environment": [ENV]}, record(),
               record(), Policy(), notes=["n"])
    assert v.level == "reproduced-within-tolerance" and v.notes == ["n"]
    assert v.summary["identical"] == 2 and v.summary["within_tolerance"] == 1
    assert v.causes and v.causes[0].score == 10.0  # rich (20) halved: inside tolerance
    assert v.first_divergence is None


def test_bitwise_policy_turns_within_tolerance_into_not_reproduced() -> None:
    v = decide({"metrics": [metric("loss", 3, True)]}, record(), record(), Policy(bitwise=True))
    assert v.level == "not-reproduced" and v.exit_code == 1


def test_beyond_tolerance_names_the_earliest_step() -> None:
    diffs = {"metrics": [metric("acc", 7, False), metric("loss", 2, False),
                         metric("lr", 1, True)],
             "weights": [Difference(where="weights/out/model.safetensors/fc.weight",
                                    kind="value")]}
    v = decide(diffs, record(), record(), Policy())
    assert v.level == "not-reproduced"
    assert v.first_divergence == "metrics/loss@step 2"
    assert v.summary["identical"] == 0 and v.summary["beyond_tolerance"] == 3


def test_without_metric_steps_the_first_weights_or_file_difference() -> None:
    diffs = {"params": [Difference(where="params/lr", kind="changed")],
             "weights": [Difference(where="weights/out/model.safetensors/fc.bias",
                                    kind="shape")]}
    v = decide(diffs, record(), record(), Policy())
    assert v.first_divergence == "weights/out/model.safetensors/fc.bias"


# -- causes ------------------------------------------------------------------------------


def test_unseeded_run_is_the_top_cause_and_step_zero_is_named() -> None:
    left = record(seeds=Seeds(seed=None, torch_initial_seed=67280421310721))
    right = record(seeds=Seeds(seed=None, torch_initial_seed=91871352830217))
    diffs = {"metrics": [metric("loss", 0, False)]}
    v = decide(diffs, left, right, Policy())
    assert v.level == "not-reproduced" and v.first_divergence == "metrics/loss@step 0"
    top = v.causes[0]
    assert (top.category, top.what, top.score) == ("seed", "unseeded", 100.0)
    assert "not seeded" in top.explanation
    assert (top.left, top.right) == ("67280421310721", "91871352830217")


def test_hash_seed_and_threads_rank_above_a_random_package() -> None:
    right = record(
        seeds=Seeds(seed=1, pythonhashseed="1", torch_initial_seed=1),
        determinism=Determinism(source="observed-in-process", torch_num_threads=4),
        environment=Environment(python=PY.model_copy(
            update={"packages": {**PY.packages, "rich": "14.0.0", "numpy": "2.0.0"}})))
    causes = rank_causes({}, record(), right)  # no environment diffs given: computed
    assert [c.what for c in causes] == ["PYTHONHASHSEED", "torch_num_threads", "numpy", "rich"]
    assert [c.category for c in causes] == ["seed", "threads", "packages", "packages"]
    assert causes[0].score > causes[1].score > causes[2].score > causes[3].score
    assert all(c.explanation.endswith(".") for c in causes)


def test_environment_differences_given_are_used() -> None:
    causes = rank_causes({"environment": [ENV]}, record(), record())
    assert [(c.what, c.left, c.right) for c in causes] == [("rich", None, None)]


def test_no_environment_difference_gives_the_generic_cause() -> None:
    v = decide({"metrics": [metric("loss", 5, False)], "environment": []}, record(), record(),
               Policy())
    assert [(c.category, c.what, c.score) for c in v.causes] == [
        (UNEXPLAINED.category, UNEXPLAINED.what, UNEXPLAINED.score)]
    assert "unseeded RNG" in v.causes[0].explanation
    assert "first divergence is at metrics/loss@step 5" in v.causes[0].explanation


def test_decide_over_compare_runs_end_to_end() -> None:
    left = record(seeds=Seeds(seed=None, torch_initial_seed=1), artifacts=())
    right = record(seeds=Seeds(seed=None, torch_initial_seed=2), artifacts=())
    diffs = compare_runs(make_evidence(left, series={"loss": [(0, 1.0986), (1, 0.9)]}),
                         make_evidence(right, series={"loss": [(0, 1.1021), (1, 0.95)]}),
                         Policy().compare)
    v = decide(diffs, left, right, Policy())
    assert v.level == "not-reproduced" and v.first_divergence == "metrics/loss@step 0"
    assert v.causes[0].what == "unseeded"
    assert list(v.differences) == ["process", "params", "environment", "metrics", "weights",
                                   "files"]


def test_a_crashed_rerun_is_the_first_cause(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.txt"
    stderr.write_text("Traceback (most recent call last):\nFileNotFoundError: data/blobs.csv\n")
    left = record(artifacts=())
    right = record(artifacts=(), identity=left.identity.model_copy(update={"exit_code": 1}))
    ok = make_evidence(left)
    bad = make_evidence(right, files={"logs/stderr.txt": stderr})
    v = decide(compare_runs(ok, bad, Policy().compare), left, right, Policy())
    assert v.level == "not-reproduced" and v.first_divergence == "process/exit_code"
    assert v.causes[0].category == "process" and "FileNotFoundError" in v.causes[0].explanation


# -- environment digest ------------------------------------------------------------------


def test_environment_digest_covers_what_a_rerun_must_match() -> None:
    base = environment_digest(record())
    assert len(base) == 64 and base == environment_digest(record())
    assert environment_digest(record(seeds=Seeds(seed=1, pythonhashseed="1"))) != base
    assert environment_digest(record(environment=Environment(python=PY.model_copy(
        update={"packages": {"numpy": "2.0.0"}})))) != base
    assert environment_digest(record(metrics=MetricsSummary(final={"loss": 9.0}))) == base
    assert environment_digest(record(seeds=Seeds(seed=2, pythonhashseed="0"))) == base
