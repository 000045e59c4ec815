"""The environment comparer: deepdiff per group, differences that explain, never fail."""

from __future__ import annotations

from typing import Any

from auditor.compare import environment
from auditor.core.policy import ComparePolicy
from auditor.core.schema import (
    Accelerators,
    Determinism,
    Environment,
    Gpu,
    PythonEnv,
    RunRecord,
    Seeds,
    System,
)
from tests.factories import make_evidence, make_record

PY = PythonEnv(executable="/usr/bin/python3", version="3.11.7", implementation="CPython",
               build="main", packages={"numpy": "1.26.4", "torch": "2.13.0", "rich": "13.7.0"})
SYSTEM = System(os="Ubuntu 22.04", kernel="6.5.0", glibc="2.35", cpu_model="Xeon",
                cpu_count=2, cpu_affinity=2, cpu_flags=("avx2", "sse4_2"))
GPUS = Accelerators(driver_version="550.54", gpus=(Gpu(index=0, name="H100",
                                                       compute_capability="9.0"),),
                    torch_cuda="12.4", cudnn="90100")
DET = Determinism(source="observed-in-process", torch_num_threads=2,
                  torch_deterministic_algorithms=True)


def record(**changes: Any) -> RunRecord:
    """A complete record; keyword arguments replace whole parts."""
    parts: dict[str, Any] = {
        "environment": env(),
        "determinism": DET,
        "seeds": Seeds(seed=1, seeded=("random", "torch"), pythonhashseed="0",
                       torch_initial_seed=1),
    }
    return make_record(**{**parts, **changes})


def env(**fields: Any) -> Environment:
    base: dict[str, Any] = {"python": PY, "system": SYSTEM, "accelerators": GPUS,
                            "env_vars": {"OMP_NUM_THREADS": "2", "TOKEN": "[REDACTED]"}}
    return Environment(**{**base, **fields})


def compare(left: RunRecord, right: RunRecord) -> list[Any]:
    return environment.compare(make_evidence(left), make_evidence(right), ComparePolicy())


# -- the four standard tests -------------------------------------------------------------


def test_recognises_every_group() -> None:
    other = record(
        environment=env(
            python=PY.model_copy(update={"version": "3.12.1",
                                         "packages": {**PY.packages, "numpy": "2.0.0"}}),
            system=SYSTEM.model_copy(update={"kernel": "6.8.0", "cpu_count": 4}),
            accelerators=GPUS.model_copy(update={"cudnn": "90200"}),
            env_vars={"OMP_NUM_THREADS": "4", "TOKEN": "[REDACTED]"}),
        determinism=DET.model_copy(update={"torch_num_threads": 4}),
        seeds=Seeds(seed=1, seeded=("random", "torch"), pythonhashseed="1", torch_initial_seed=1))
    wheres = [d.where for d in compare(record(), other)]
    assert wheres == ["environment/packages/numpy", "environment/python/version",
                      "environment/os/kernel", "environment/cpu/cpu_count",
                      "environment/gpu/cudnn", "environment/determinism/torch_num_threads",
                      "environment/seeds/pythonhashseed", "environment/env/OMP_NUM_THREADS"]


def test_self_compare_is_empty() -> None:
    assert compare(record(), record()) == []


def test_golden_changed_package_version() -> None:
    other = record(environment=env(python=PY.model_copy(
        update={"packages": {**PY.packages, "numpy": "2.0.0"}})))
    (diff,) = compare(record(), other)
    assert diff.where == "environment/packages/numpy" and diff.kind == "changed"
    assert (diff.left, diff.right) == ("1.26.4", "2.0.0")
    assert diff.within_tolerance and diff.stats == {"group": "packages"}


def test_missing_section_is_one_difference() -> None:
    other = record(environment=env(python=None), determinism=None)
    diffs = compare(record(), other)
    assert [(d.where, d.right, d.comments) for d in diffs] == [
        ("environment/packages", None, ("not captured in the rerun",)),
        ("environment/python", None, ("not captured in the rerun",)),
        ("environment/determinism", None, ("not captured in the rerun",))]
    assert compare(other, other) == []


# -- details -----------------------------------------------------------------------------


def test_added_and_removed_packages() -> None:
    packages = {"numpy": "1.26.4", "torch": "2.13.0", "scipy": "1.13.0"}
    other = record(environment=env(python=PY.model_copy(update={"packages": packages})))
    diffs = {d.where: d for d in compare(record(), other)}
    assert (diffs["environment/packages/rich"].left, diffs["environment/packages/rich"].right) \
        == ("13.7.0", None)
    assert diffs["environment/packages/scipy"].right == "1.13.0"


def test_cpu_flags_and_gpus_say_what_changed() -> None:
    other = record(environment=env(
        system=SYSTEM.model_copy(update={"cpu_flags": ("avx2", "avx512f", "sse4_2")}),
        accelerators=GPUS.model_copy(update={"gpus": (Gpu(index=0, name="A100",
                                                           compute_capability="8.0"),)})))
    diffs = {d.where: d for d in compare(record(), other)}
    assert diffs["environment/cpu/cpu_flags"].comments == ("only in the rerun: avx512f",)
    assert diffs["environment/gpu/names"].comments == ("only in the rerun: A100",
                                                       "only in the original: H100")
    assert "environment/gpu/compute_capability" in diffs


def test_redacted_values_are_not_compared() -> None:
    # A redacted value is never replayed (unless the policy passes it), so on either side it
    # says nothing about the run's numerics; a real value that changed still shows.
    other = record(environment=env(env_vars={"OMP_NUM_THREADS": "2", "TOKEN": "[REDACTED]",
                                             "EXTRA": "[REDACTED]"}))
    assert compare(record(), other) == []
    changed = record(environment=env(env_vars={"OMP_NUM_THREADS": "1", "EXTRA": "[REDACTED]"}))
    (diff,) = compare(record(), changed)
    assert diff.where == "environment/env/OMP_NUM_THREADS" and diff.right == "1"


def test_seed_and_determinism_fields() -> None:
    other = record(seeds=Seeds(seed=None, torch_initial_seed=123456789),
                   determinism=DET.model_copy(update={"source": "environment-only",
                                                      "cudnn_benchmark": True}))
    wheres = {d.where for d in compare(record(), other)}
    assert wheres == {"environment/seeds/seed", "environment/seeds/seeded",
                      "environment/seeds/pythonhashseed", "environment/seeds/torch_initial_seed",
                      "environment/determinism/cudnn_benchmark"}  # source is not compared


def test_many_package_changes_are_itemised_not_one_blob() -> None:
    # deepdiff reports a whole dict as changed past a threshold unless told otherwise.
    left = {f"pkg{i}": "1.0" for i in range(40)}
    right = {"pkg0": "2.0", "other": "1.0"}
    a = record(environment=env(python=PY.model_copy(update={"packages": left})))
    b = record(environment=env(python=PY.model_copy(update={"packages": right})))
    wheres = {d.where for d in compare(a, b)}
    assert "environment/packages/pkg0" in wheres and "environment/packages/other" in wheres
    assert "environment/packages" not in wheres and len(wheres) >= 40


def test_items_differ_exactly_where_deepdiff_finds_a_change() -> None:
    """The group items are compared without deepdiff (a verify changes hundreds of them):
    the changed items must be those deepdiff's walk finds, types, order and NaN included."""
    from auditor.compare.params import deep_changes

    nan = float("nan")
    left = {"same": 1, "int_float": 1, "bool_int": True, "list_tuple": [1, 2],
            "order": [1, 2], "nan": nan, "nan_list": [nan, 1.0], "nested": {"a": {"b": 1}},
            "nested_same": {"a": [1, {"b": nan}]}, "gone": "x", "none": None, "zero": 0.0,
            "str": "a"}
    right = {"same": 1, "int_float": 1.0, "bool_int": 1, "list_tuple": (1, 2),
             "order": [2, 1], "nan": nan, "nan_list": [nan, 1.0], "nested": {"a": {"b": 2}},
             "nested_same": {"a": [1, {"b": nan}]}, "new": "y", "none": None, "zero": -0.0,
             "str": "b"}
    walked = sorted({c.path[0] for c in deep_changes(left, right)})
    got = [d.where.rsplit("/", 1)[1] for d in environment._compare_group("env", left, right)]
    assert got == walked == ["bool_int", "gone", "int_float", "list_tuple", "nested", "new",
                             "order", "str"]
