"""Parameter importance for one metric over a set of runs, measured against seed noise.

* importance: scikit-learn's random forest (impurity importance) and its permutation
  importance with the spread over repeats (impurity importance favours params with many
  distinct values; permutation importance does not; past 500 runs each repeat scores a
  random 500-run subsample, which the spread over repeats then includes), plus scipy's
  Spearman rank correlation of each numeric param with the metric;
* seed noise: runs whose params are equal except for their seed (or reruns of one run)
  form groups; the pooled standard deviation within those groups is the metric's
  seed-to-seed spread. A param's effect is the gap between its best and worst value's mean
  metric; scipy's t-test from those means, with the seed spread as both groups' standard
  deviation, says whether that gap stands out of the noise (p < 0.05);
* the best run: is it distinguishable from the next ones, the same test between the best
  setting and each runner-up setting.

With too few runs (or no varying param) the answer says so instead of inventing numbers.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import permutation_importance

from auditor.store.query import Row

MIN_RUNS = 6
SEED_KEY = re.compile(r"(^|[_.-])(seed|random_seed|rng_seed)$", re.IGNORECASE)
ALPHA = 0.05
TREES = 50
PERMUTATION_ROWS = 500  # each permutation repeat scores a random subsample of this many


@dataclass(frozen=True)
class ParamImportance:
    """One param's importance for the metric."""

    name: str
    forest: float
    permutation: float
    permutation_std: float
    spearman: float | None
    effect: float | None  # best minus worst mean over the param's values
    p_value: float | None
    stands_out: bool | None  # None: no seed noise estimate to compare against


@dataclass(frozen=True)
class Importance:
    """The importance view's data; ``message`` set (and lists empty) when it cannot be
    computed honestly."""

    metric: str
    runs: int
    params: list[ParamImportance] = field(default_factory=list)
    seed_std: float | None = None
    seed_groups: int = 0
    best: dict[str, Any] | None = None
    message: str | None = None


def is_seed_key(name: str) -> bool:
    """Whether a param names a seed."""
    return bool(SEED_KEY.search(name))


def importance(rows: Sequence[Row], metric: str, *, higher_is_better: bool | None = None,
               repeats: int = 5) -> Importance:
    """Importance of each varying param for ``metric`` over ``rows``."""
    runs = [r for r in rows if _finite(r.metrics.get(metric))]
    if len(runs) < MIN_RUNS:
        return Importance(metric, len(runs), message=f"too few runs with metric {metric!r} "
                          f"({len(runs)}; at least {MIN_RUNS} are needed)")
    varying = varying_params(runs)
    if not varying:
        return Importance(metric, len(runs),
                          message="no param varies across these runs (other than a seed)")
    higher = _higher_is_better(metric) if higher_is_better is None else higher_is_better
    y = np.array([float(r.metrics[metric]) for r in runs])
    x = _design(runs, varying)
    forest, perm_mean, perm_std = _forest(x, y, repeats)
    seed_std, groups = seed_noise(runs, varying, metric)
    params = []
    for i, name in enumerate(varying):
        effect, p = _effect(runs, name, metric, seed_std)
        params.append(ParamImportance(
            name, float(forest[i]), float(perm_mean[i]), float(perm_std[i]),
            _spearman(x[:, i], y, runs, name), effect, p,
            None if p is None else p < ALPHA,
        ))
    params.sort(key=lambda p: (-p.permutation, -p.forest, p.name))
    best = _best(runs, varying, metric, seed_std, higher)
    return Importance(metric, len(runs), params, seed_std, groups, best)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _higher_is_better(metric: str) -> bool:
    return not re.search(r"loss|error|err$|mse|mae|rmse|perplexity|time|wer|cer", metric, re.I)


def varying_params(rows: Sequence[Row]) -> list[str]:
    """Params (not seeds) that take more than one value across ``rows``."""
    values: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for k, v in r.params.items():
            values[k].add(repr(v))
    keys = set(values)
    return sorted(k for k in keys if not is_seed_key(k)
                  and (len(values[k]) > 1 or any(k not in r.params for r in rows)))


def _design(rows: Sequence[Row], names: Sequence[str]) -> np.ndarray:
    """Numeric params as numbers; text and missing ones as category codes."""
    columns = []
    for name in names:
        raw = [r.params.get(name) for r in rows]
        numbers = [_number(v) for v in raw]
        if all(n is not None for n in numbers):
            columns.append(np.array(numbers, dtype=float))
        else:
            codes = {v: i for i, v in enumerate(sorted({repr(v) for v in raw}))}
            columns.append(np.array([codes[repr(v)] for v in raw], dtype=float))
    return np.column_stack(columns)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _forest(x: np.ndarray, y: np.ndarray, repeats: int) -> tuple[Any, Any, Any]:
    model = RandomForestRegressor(n_estimators=TREES, random_state=0, n_jobs=1).fit(x, y)
    perm = permutation_importance(_TreeMean(model), x, y, scoring="r2", n_repeats=repeats,
                                  random_state=0, n_jobs=1,
                                  max_samples=min(len(y), PERMUTATION_ROWS))
    return model.feature_importances_, perm.importances_mean, perm.importances_std


class _TreeMean(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """The fitted forest's prediction (the mean of its trees, as sklearn computes it),
    called tree by tree without joblib's per-tree dispatch, which dominates the cost of
    permutation importance's hundreds of predictions on small tables."""

    def __init__(self, forest: Any = None) -> None:
        self.forest = forest

    def fit(self, x: np.ndarray, y: np.ndarray) -> _TreeMean:
        """Already fitted: the forest was."""
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The mean of the trees' predictions."""
        data = np.ascontiguousarray(x, dtype=np.float32)
        trees = [t.predict(data, check_input=False) for t in self.forest.estimators_]
        return np.asarray(np.mean(trees, axis=0))


def _spearman(column: np.ndarray, y: np.ndarray, rows: Sequence[Row], name: str) -> float | None:
    from scipy.stats import spearmanr

    if any(_number(r.params.get(name)) is None for r in rows) or np.ptp(column) == 0:
        return None
    rho = float(spearmanr(column, y).statistic)
    return rho if math.isfinite(rho) else None


def _setting(row: Row, varying: Sequence[str]) -> tuple[str, ...]:
    return tuple(repr(row.params.get(k)) for k in varying)


def seed_noise(rows: Sequence[Row], varying: Sequence[str], metric: str
               ) -> tuple[float | None, int]:
    """Pooled within-setting standard deviation of ``metric`` over groups of runs that
    differ only in seed (reruns share their original's setting), and how many groups."""
    groups: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for r in rows:
        groups[_setting(r, varying)].append(float(r.metrics[metric]))
    multi = [np.array(v) for v in groups.values() if len(v) > 1]
    dof = sum(len(v) - 1 for v in multi)
    if dof < 2:
        return None, len(multi)
    pooled = sum(float(np.var(v, ddof=1)) * (len(v) - 1) for v in multi) / dof
    return math.sqrt(pooled), len(multi)


def _value_groups(rows: Sequence[Row], name: str, metric: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[repr(r.params.get(name))].append(float(r.metrics[metric]))
    return groups


def _effect(rows: Sequence[Row], name: str, metric: str, seed_std: float | None
            ) -> tuple[float | None, float | None]:
    groups = _value_groups(rows, name, metric)
    if len(groups) < 2:
        return None, None
    means = {k: float(np.mean(v)) for k, v in groups.items()}
    lo, hi = min(means, key=means.__getitem__), max(means, key=means.__getitem__)
    effect = means[hi] - means[lo]
    if seed_std is None:
        return effect, None
    return effect, _t_p(means[hi], len(groups[hi]), means[lo], len(groups[lo]), seed_std)


def _t_p(mean_a: float, n_a: int, mean_b: float, n_b: int, std: float) -> float:
    from scipy.stats import ttest_ind_from_stats

    if std == 0:
        return 0.0 if mean_a != mean_b else 1.0
    result = ttest_ind_from_stats(mean_a, std, n_a, mean_b, std, n_b, equal_var=True)
    return float(result.pvalue)


def _best(rows: Sequence[Row], varying: Sequence[str], metric: str, seed_std: float | None,
          higher: bool) -> dict[str, Any] | None:
    """The best run, and whether its setting beats the next settings beyond seed noise."""
    settings: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for r in rows:
        settings[_setting(r, varying)].append(r)
    sign = 1.0 if higher else -1.0
    means = sorted(
        ((float(np.mean([r.metrics[metric] for r in g])), key) for key, g in settings.items()),
        key=lambda m: -sign * m[0])
    best_run = max(rows, key=lambda r: sign * r.metrics[metric])
    out: dict[str, Any] = {"run": best_run.id, "name": best_run.name,
                           "value": best_run.metrics[metric], "higher_is_better": higher,
                           "ties": [], "distinguishable": None}
    if seed_std is None or len(means) < 2:
        return out
    top_mean, top_key = means[0]
    ties = []
    for mean, key in means[1:4]:
        p = _t_p(top_mean, len(settings[top_key]), mean, len(settings[key]), seed_std)
        if p >= ALPHA:
            ties.append({"setting": dict(zip(varying, key, strict=True)), "mean": mean,
                         "p_value": p})
    out["ties"] = ties
    out["setting"] = dict(zip(varying, top_key, strict=True))
    out["mean"] = top_mean
    out["distinguishable"] = not ties
    return out


def best_run(rows: Sequence[Row], metric: str) -> dict[str, Any] | None:
    """The best run for ``metric`` and whether it is distinguishable from the runner-ups
    beyond seed noise (without fitting a forest: cheap enough for the runs table)."""
    runs = [r for r in rows if _finite(r.metrics.get(metric))]
    if len(runs) < 2:
        return None
    varying = varying_params(runs)
    seed_std, _ = seed_noise(runs, varying, metric)
    best = _best(runs, varying, metric, seed_std, _higher_is_better(metric))
    if best is not None:
        best["seed_std"] = seed_std
    return best
