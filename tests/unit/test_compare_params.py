"""The params comparer: hyperparameters by deepdiff; any change is beyond tolerance."""

from __future__ import annotations

import math
from typing import Any

from auditor.compare import Evidence, params
from auditor.core.policy import ComparePolicy
from tests.factories import make_evidence, make_record

PARAMS = {"lr": 0.1, "epochs": 3, "optim": {"name": "sgd", "betas": [0.9, 0.99]},
          "clip": math.nan}


def side(values: dict[str, Any]) -> Evidence:
    return make_evidence(make_record(params=values))


def compare(left: dict[str, Any], right: dict[str, Any]) -> list[Any]:
    return params.compare(side(left), side(right), ComparePolicy())


def test_recognises_nested_params() -> None:
    other = {**PARAMS, "optim": {"name": "adam", "betas": [0.9, 0.999]}}
    assert [d.where for d in compare(PARAMS, other)] == ["params/optim/betas/1",
                                                         "params/optim/name"]


def test_self_compare_is_empty_even_with_nan() -> None:
    assert compare(PARAMS, dict(PARAMS)) == []


def test_golden_changed_learning_rate() -> None:
    (diff,) = compare(PARAMS, {**PARAMS, "lr": 0.01})
    assert (diff.where, diff.kind, diff.left, diff.right) == ("params/lr", "changed", "0.1",
                                                              "0.01")
    assert not diff.within_tolerance and diff.comments == ("value changed",)


def test_missing_and_added_params() -> None:
    other = {k: v for k, v in PARAMS.items() if k != "epochs"} | {"seed": 7}
    diffs = {d.where: d for d in compare(PARAMS, other)}
    assert diffs["params/epochs"].comments == ("only in the original",)
    assert (diffs["params/epochs"].left, diffs["params/epochs"].right) == ("3", None)
    assert diffs["params/seed"].comments == ("only in the rerun",)
    assert compare({}, {}) == []


def test_type_change_is_reported() -> None:
    (diff,) = compare({"epochs": 3}, {"epochs": 3.0})
    assert diff.comments == ("type changed: int -> float",)


def test_long_values_are_shortened() -> None:
    (diff,) = compare({"text": "a" * 500}, {"text": "b" * 500})
    assert diff.left is not None and len(diff.left) == params.SHORT
