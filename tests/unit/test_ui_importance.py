"""Parameter importance against seed noise (scikit-learn, scipy) on synthetic sweeps."""

from __future__ import annotations

from auditor.store import SqlStore
from auditor.store.query import all_rows
from auditor.ui.importance import best_run, importance
from tests.uifactory import put_run, sweep


def test_lr_first_and_dummy_inside_seed_noise(store: SqlStore) -> None:
    sweep(store)
    result = importance(all_rows(store), "accuracy")
    assert result.message is None and result.runs == 18
    assert [p.name for p in result.params] == ["lr", "dummy"]  # the seed is not a param here
    lr, dummy = result.params
    assert lr.stands_out is True and dummy.stands_out is False
    assert lr.permutation > 10 * max(dummy.permutation, 1e-9)
    assert lr.spearman is not None and lr.spearman > 0.9
    assert result.seed_std is not None and 0.001 < result.seed_std < 0.02
    assert result.seed_groups == 6


def test_large_noise_hides_a_small_effect(store: SqlStore) -> None:
    sweep(store, lrs=(0.01, 0.011), dummies=("a",), seeds=4, noise=0.2)
    lr = importance(all_rows(store), "accuracy").params[0]
    assert lr.name == "lr" and lr.stands_out is False


def test_too_few_runs_says_so(store: SqlStore) -> None:
    sweep(store, lrs=(0.1, 0.01), dummies=("a",), seeds=2)
    result = importance(all_rows(store), "accuracy")
    assert result.params == [] and result.message and "too few comparable runs" in result.message
    assert "metric 'nope'" in (importance(all_rows(store), "nope").message or "")


def test_without_seed_replicates_no_verdict_is_invented(store: SqlStore) -> None:
    for i, lr in enumerate((0.001, 0.003, 0.01, 0.03, 0.1, 0.3)):
        put_run(store, params={"lr": lr}, final={"accuracy": lr}, minute=i)
    result = importance(all_rows(store), "accuracy")
    assert result.seed_std is None and result.params[0].stands_out is None
    best = best_run(all_rows(store), "accuracy")
    assert best is not None and best["distinguishable"] is None


def test_best_run_distinguishable_or_not(store: SqlStore) -> None:
    sweep(store)
    best = best_run(all_rows(store), "accuracy")
    assert best is not None and best["name"].startswith("lr0.1")
    # lr0.1 with dummy a and b are the same setting in all but a param that does nothing
    assert best["distinguishable"] is False and len(best["ties"]) == 1
    loss = best_run(all_rows(store), "loss")  # lower is better for a loss
    assert loss is not None and loss["name"].startswith("lr0.1")
