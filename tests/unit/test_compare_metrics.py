"""The metrics comparer: series paired by step, NaN/inf as values, irregular series (T26,
T27, T29 in small, T30)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.compare import Evidence, metrics
from auditor.core.policy import ComparePolicy, Tolerance
from auditor.core.schema import MetricsSummary
from tests.factories import make_evidence, make_record

Series = dict[str, Sequence[tuple[object, object]]]


def evidence(series: Series, run_id: str = "01hzzzzzzzzzzzzzzzzzzzzzzz") -> Evidence:
    final = {k: v[-1][1] for k, v in series.items() if v and isinstance(v[-1][1], float)}
    return make_evidence(make_record(id=run_id, metrics=MetricsSummary(final=final)),
                         series=series)


def run(left: Series, right: Series, policy: ComparePolicy | None = None):  # type: ignore[no-untyped-def]
    return metrics.compare(evidence(left), evidence(right), policy or ComparePolicy())


LOSS = [(0, 1.0986), (1, 0.9), (2, 0.7), (3, 0.5)]


# -- the four standard tests -------------------------------------------------------------


def test_recognises_every_metric_key_of_either_run() -> None:
    diffs = run({"loss": LOSS, "acc": [(0, 0.5)]}, {"loss": LOSS, "lr": [(0, 0.1)]})
    assert [(d.where, d.kind) for d in diffs] == [("metrics/acc", "missing"),
                                                  ("metrics/lr", "extra")]


def test_self_compare_is_empty() -> None:
    series: Series = {"loss": LOSS, "odd": [(0, math.nan), (1, math.inf), (2, -math.inf),
                                            (3, -0.0), (4, 5e-324), (5, 1.7976931348623157e308)]}
    assert run(series, series) == []


def test_golden_difference_with_known_numbers() -> None:
    right = [(0, 1.1021), (1, 0.9), (2, 0.7), (3, 0.6)]
    (diff,) = run({"loss": LOSS}, {"loss": right})
    assert diff.where == "metrics/loss" and diff.kind == "value" and not diff.within_tolerance
    assert diff.stats["points"] == 4 and diff.stats["differing"] == 2
    assert diff.stats["beyond"] == 2 and diff.stats["first_step"] == 0
    assert diff.stats["max_abs"] == pytest.approx(0.1)
    assert diff.stats["max_rel"] == pytest.approx(0.2)
    assert (diff.stats["left_final"], diff.stats["right_final"]) == (0.5, 0.6)
    assert (diff.left, diff.right) == ("0.5", "0.6")
    assert diff.comments[0] == "first leaves tolerance at step 0 (1.0986 vs 1.1021)"
    assert diff.magnitude == pytest.approx(0.1)


def test_missing_input_empty_and_absent_series() -> None:
    assert run({"loss": []}, {"loss": []}) == []
    assert run({}, {}) == []
    (diff,) = run({"loss": LOSS}, {"loss": []})
    assert diff.stats["only_left"] == 4 and diff.stats["first_step"] == 0
    assert diff.comments[0] == "first leaves tolerance at step 0 (1.0986 vs missing)"


# -- tolerance ----------------------------------------------------------------------------


def test_small_differences_are_one_within_tolerance_difference() -> None:
    right = [(s, v * (1 + 1e-7)) for s, v in LOSS]
    (diff,) = run({"loss": LOSS}, {"loss": right})
    assert diff.within_tolerance and diff.stats["beyond"] == 0 and diff.stats["differing"] == 4
    assert diff.comments[0].startswith("first differs at step 0")


def test_per_metric_tolerance_and_bitwise() -> None:
    right = [(0, 1.0986), (1, 0.91), (2, 0.7), (3, 0.5)]
    loose = ComparePolicy(metrics={"lo*": Tolerance(rtol=0.1, atol=0)})
    assert run({"loss": LOSS}, {"loss": right}, loose)[0].within_tolerance
    tiny = [(s, v * (1 + 1e-12)) for s, v in LOSS]
    assert not run({"loss": LOSS}, {"loss": tiny}, ComparePolicy(bitwise=True))[0].within_tolerance


def test_first_diverging_step_is_reported() -> None:
    right = [*LOSS[:2], (2, 0.75), (3, 0.55)]
    (diff,) = run({"loss": LOSS}, {"loss": right})
    assert diff.stats["first_step"] == 2 and diff.comments[0].startswith("first leaves "
                                                                         "tolerance at step 2")


# -- NaN and infinities (T26, T27) --------------------------------------------------------


def test_nan_at_the_same_step_is_equal_by_default() -> None:
    series: Series = {"loss": [(0, 1.0), (1, math.nan), (2, 0.5)]}
    assert run(series, series) == []
    (diff,) = run(series, series, ComparePolicy(nan_equal=False))
    assert diff.stats["beyond"] == 1 and diff.stats["first_step"] == 1


def test_nan_against_a_number_diverges_at_that_step() -> None:
    left: Series = {"loss": [(0, 1.0), (1, 0.8), (2, 0.5)]}
    right: Series = {"loss": [(0, 1.0), (1, math.nan), (2, 0.5)]}
    (diff,) = run(left, right)
    assert not diff.within_tolerance and diff.stats["first_step"] == 1
    assert diff.comments[0] == "first leaves tolerance at step 1 (0.8 vs nan)"
    assert diff.stats["max_abs"] is None  # no numeric difference to report


@pytest.mark.parametrize(("a", "b", "equal"), [
    (math.inf, math.inf, True), (-math.inf, -math.inf, True), (math.inf, -math.inf, False),
    (math.inf, 1.7976931348623157e308, False), (-0.0, -0.0, True), (5e-324, 5e-324, True),
])
def test_infinities_equal_only_the_same_infinity(a: float, b: float, equal: bool) -> None:
    diffs = run({"m": [(0, a)]}, {"m": [(0, b)]})
    assert (diffs == []) is equal
    assert all(not d.within_tolerance for d in diffs)


def test_negative_zero_differs_but_within_tolerance() -> None:
    (diff,) = run({"m": [(0, 0.0)]}, {"m": [(0, -0.0)]})
    assert diff.within_tolerance and diff.stats["differing"] == 1


# -- irregular series (T30) ---------------------------------------------------------------


def test_duplicate_steps_last_write_wins_with_a_comment() -> None:
    left: Series = {"loss": [(0, 1.0), (1, 9.9), (1, 0.8), (2, 0.5)]}
    right: Series = {"loss": [(0, 1.0), (1, 0.8), (2, 0.5)]}
    assert run(left, right) == []
    changed: Series = {"loss": [(0, 1.0), (1, 9.9), (1, 0.7), (2, 0.5)]}
    (diff,) = run(changed, right)
    assert diff.stats["first_step"] == 1 and diff.stats["points"] == 3
    assert "1 repeated steps in the original: the last value logged for a step wins" in \
        diff.comments


def test_non_monotonic_steps_are_sorted_and_noted() -> None:
    left: Series = {"loss": [(2, 0.5), (0, 1.0), (1, 0.8)]}
    right: Series = {"loss": [(0, 1.0), (1, 0.8), (2, 0.6)]}
    (diff,) = run(left, right)
    assert diff.stats["first_step"] == 2 and diff.stats["left_final"] == 0.5
    assert "steps logged out of order in the original: compared in step order" in diff.comments
    assert run(left, right) == [diff]  # deterministic


def test_missing_steps_are_differences() -> None:
    left: Series = {"loss": [(0, 1.0), (1, 0.8), (2, 0.5)]}
    right: Series = {"loss": [(0, 1.0), (2, 0.5), (3, 0.4)]}
    (diff,) = run(left, right)
    assert (diff.stats["only_left"], diff.stats["only_right"]) == (1, 1)
    assert diff.stats["first_step"] == 1 and diff.stats["points"] == 4


def test_string_bool_and_none_values_are_skipped_not_crashed() -> None:
    left: Series = {"loss": [(0, 1.0), (1, "0.8"), (2, True), (3, None), (4, 0.5), ("5", 1.0)]}
    right: Series = {"loss": [(0, 1.0), (4, 0.5)]}
    (diff,) = run(left, right)
    assert diff.within_tolerance and diff.stats["differing"] == 0
    assert "4 points in the original skipped: step not an integer or value not a number" in \
        diff.comments


def test_ints_and_numpy_scalars_are_numbers() -> None:
    left: Series = {"m": [(0, 1), (np.int64(1), np.float32(0.5))]}
    right: Series = {"m": [(0, 1.0), (1, 0.5)]}
    assert run(left, right) == []


def test_unreadable_series_is_an_error_difference() -> None:
    left: Series = {"m": [(2**70, 1.0)]}
    (diff,) = run(left, {"m": [(0, 1.0)]})
    assert diff.kind == "error" and "could not be read" in diff.comments[0]


# -- streaming (T29 in small) -------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CHUNK", 7)


@pytest.mark.usefixtures("small_chunks")
def test_streaming_across_chunks_matches_whole_comparison() -> None:
    steps = list(range(0, 200, 2))
    left: Series = {"m": [(s, s / 10) for s in steps]}
    right: Series = {"m": [(s, s / 10 + (0.5 if s == 150 else 0)) for s in steps if s != 60]
                     + [(300, 1.0)]}
    (diff,) = run(left, right)
    assert diff.stats["first_step"] == 60 and diff.stats["differing"] == 1
    assert (diff.stats["only_left"], diff.stats["only_right"]) == (1, 1)
    assert diff.stats["points"] == 101 and diff.stats["right_final"] == 1.0


@pytest.mark.usefixtures("small_chunks")
def test_streaming_duplicates_spanning_chunks() -> None:
    left: Series = {"m": [(0, 0.0)] + [(1, float(i)) for i in range(20)] + [(2, 2.0)]}
    right: Series = {"m": [(0, 0.0), (1, 19.0), (2, 2.0)]}
    assert run(left, right) == []
    late: Series = {"m": [(0, 0.0), *[(1, 1.0)] * 10, (2, 2.0), (1, 5.0)]}
    (diff,) = run(late, right)  # out of order: falls back to sorting, last write still wins
    assert diff.stats["first_step"] == 1 and diff.comments[0].endswith("(5 vs 19)")


# -- property: the chunked merge agrees with a plain dictionary model ---------------------

STEPS = st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.0, 1.0, 2.0, math.nan])),
                 max_size=40)


def model(left: list[tuple[int, float]], right: list[tuple[int, float]]) -> dict[str, object]:
    """What the comparer must find, computed the obvious way (last write wins per step)."""
    a, b = dict(left), dict(right)
    both = sorted(set(a) & set(b))
    differing = [s for s in both if not (a[s] == b[s] or (math.isnan(a[s]) and math.isnan(b[s])))]
    one_sided = sorted(set(a) ^ set(b))
    first = min(differing[:1] + one_sided[:1], default=None)
    return {"points": len(set(a) | set(b)), "differing": len(differing), "first_step": first,
            "only_left": len(set(a) - set(b)), "only_right": len(set(b) - set(a))}


@settings(max_examples=150, deadline=None)
@given(STEPS, STEPS, st.sampled_from([1, 2, 3, 64]))
def test_chunked_merge_matches_the_model(left: list[tuple[int, float]],
                                         right: list[tuple[int, float]], chunk: int) -> None:
    saved, metrics.CHUNK = metrics.CHUNK, chunk
    try:
        diffs = run({"m": left}, {"m": right})
    finally:
        metrics.CHUNK = saved
    expected = model(left, right)
    if expected["differing"] == 0 and expected["first_step"] is None:
        assert diffs == []
    else:
        (diff,) = diffs
        assert {k: diff.stats[k] for k in expected} == expected
