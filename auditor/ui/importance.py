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

Over comparable runs only (``comparable``): reruns are no independent samples (they would
shrink the noise estimate), runs without the metric say nothing, and runs of another
entry point (or, unless asked, other code) answer another question; the biggest such
group is kept and every run left out is named with why. Params that cannot be settings
are left out and named too (``usable_params``): constant ones, text unique per run (run
names, output folders), path-like values, and params some runs lack ("missing" is never
treated as a value). The best setting is named with its seed-group mean ± std, and the
best run is the best run of that setting.

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
PATH_KEY = re.compile(r"(^|[_.-])(dir|path|file|folder|output|out|logdir|ckpt|checkpoint)s?$",
                      re.IGNORECASE)
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
class LeftOut:
    """A run the importance did not use, and why."""

    run: str
    name: str
    why: str


@dataclass(frozen=True)
class Comparable:
    """The runs one importance is computed over, and those left out."""

    runs: list[Row]
    left_out: list[LeftOut]
    scope: str  # what the kept runs share: "train.py at commit 1a2b3c4d5e"


@dataclass(frozen=True)
class Importance:
    """The importance view's data; ``message`` set (and lists empty) when it cannot be
    computed honestly. ``runs`` counts the comparable runs used."""

    metric: str
    runs: int
    params: list[ParamImportance] = field(default_factory=list)
    seed_std: float | None = None
    seed_groups: int = 0
    best: dict[str, Any] | None = None
    message: str | None = None
    left_out: list[LeftOut] = field(default_factory=list)
    params_left_out: dict[str, str] = field(default_factory=dict)
    scope: str = ""

    def statements(self) -> list[str]:
        """What the result says, as sentences (the terminal and the tests read these)."""
        out = [f"over {self.runs} comparable run(s) ({self.scope})" if self.scope
               else f"over {self.runs} run(s)"]
        if self.left_out:
            out.append(f"left out {len(self.left_out)} run(s): " + "; ".join(
                f"{x.name} ({x.run[:10]}): {x.why}" for x in self.left_out[:8])
                + (" …" if len(self.left_out) > 8 else ""))
        if self.params_left_out:
            out.append("params left out: " + "; ".join(
                f"{k}: {why}" for k, why in sorted(self.params_left_out.items())))
        if self.message:
            return [*out, self.message]
        if self.seed_std is not None:
            out.append(f"seed noise σ = {self.seed_std:.4g} from {self.seed_groups} group(s)"
                       " of runs that differ only in seed")
        for p in self.params:
            verdict = ("no seed-noise estimate" if p.stands_out is None else
                       "stands out of seed noise" if p.stands_out else "inside seed noise")
            effect = "" if p.effect is None else f" (effect {p.effect:.4g}"
            effect += "" if p.p_value is None else f", p = {p.p_value:.3g}"
            out.append(f"{p.name}: {verdict}{effect}{')' if effect else ''}")
        if self.best and self.best.get("setting") is not None:
            out.append(best_sentence(self.metric, self.best))
        return out


def is_seed_key(name: str) -> bool:
    """Whether a param names a seed."""
    return bool(SEED_KEY.search(name))


def comparable(rows: Sequence[Row], metric: str, *, across_code: bool = False) -> Comparable:
    """The biggest group of ``rows`` one importance can honestly be computed over: no
    reruns, the metric present, one entry point and (unless ``across_code``) one commit;
    every other run is named with why it was left out."""
    left: list[LeftOut] = []
    candidates: list[Row] = []
    for r in rows:
        if r.reproduces:
            left.append(LeftOut(r.id, r.name, f"rerun of {r.reproduces[:10]} (not an "
                                              "independent sample)"))
        elif not _finite(r.metrics.get(metric)):
            left.append(LeftOut(r.id, r.name, f"no metric {metric!r}"))
        else:
            candidates.append(r)
    groups: dict[tuple[str | None, str | None], list[Row]] = defaultdict(list)
    for r in candidates:
        groups[(r.entry, None if across_code else r.commit)].append(r)
    if not groups:
        return Comparable([], left, "")
    entry, commit = max(groups, key=lambda k: len(groups[k]))  # ties: the newest run's
    for (e, c), runs in groups.items():
        if (e, c) == (entry, commit):
            continue
        why = (f"other entry point {e or '(unknown)'}" if e != entry
               else f"other code (commit {(c or 'none')[:10]}; pass across_code to mix)")
        left.extend(LeftOut(r.id, r.name, why) for r in runs)
    scope = (entry or "unknown entry point") + (
        "" if across_code else f" at commit {commit[:10]}" if commit else ", no commit")
    return Comparable(groups[(entry, commit)], left, scope)


def best_sentence(metric: str, best: dict[str, Any]) -> str:
    """``best setting lr=0.1: accuracy 0.81 ± 0.004 over 3 run(s); best run …``"""
    setting = ", ".join(f"{k}={v}" for k, v in best["setting"].items()) or "(one setting)"
    spread = "" if best.get("std") is None else f" ± {best['std']:.4g}"
    return (f"best setting {setting}: {metric} {best['mean']:.6g}{spread} over "
            f"{best['n']} run(s); best run {best['name']} ({best['run'][:10]}, "
            f"{best['value']:.6g})")


def importance(rows: Sequence[Row], metric: str, *, higher_is_better: bool | None = None,
               repeats: int = 5, across_code: bool = False) -> Importance:
    """Importance of each varying param for ``metric`` over the comparable ``rows``."""
    group = comparable(rows, metric, across_code=across_code)
    runs = group.runs
    varying, skipped = usable_params(runs)
    done: dict[str, Any] = {"left_out": group.left_out, "params_left_out": skipped,
                            "scope": group.scope}
    if len(runs) < MIN_RUNS:
        return Importance(metric, len(runs), message=f"too few comparable runs with metric "
                          f"{metric!r} ({len(runs)}; at least {MIN_RUNS} are needed)",
                          **done)
    if not varying:
        return Importance(metric, len(runs), message="no usable param varies across these "
                          "runs (other than a seed)", **done)
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
    return Importance(metric, len(runs), params, seed_std, groups, best,
                      **done)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _higher_is_better(metric: str) -> bool:
    return not re.search(r"loss|error|err$|mse|mae|rmse|perplexity|time|wer|cer", metric, re.I)


def varying_params(rows: Sequence[Row]) -> list[str]:
    """Params that can be settings and take more than one value across ``rows``."""
    return usable_params(rows)[0]


def usable_params(rows: Sequence[Row]) -> tuple[list[str], dict[str, str]]:
    """(params that vary as settings do, {param left out: why}). Seeds are the noise, not
    a setting; a param some runs lack is left out (missing is no value); so are constant
    ones, path-like ones and text unique to each run (names, output folders)."""
    values: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        for k, v in r.params.items():
            values[k].append(v)
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for k in sorted(values):
        seen = values[k]
        distinct = {repr(v) for v in seen}
        text = [v for v in seen if isinstance(v, str)]
        if is_seed_key(k):
            continue
        if len(seen) < len(rows):
            skipped[k] = f"missing in {len(rows) - len(seen)} of {len(rows)} runs"
        elif len(distinct) == 1:
            skipped[k] = "constant"
        elif PATH_KEY.search(k) or any("/" in v or "\\" in v for v in text):
            skipped[k] = "path-like"
        elif text and len(distinct) == len(rows) and len(rows) > 2:
            skipped[k] = "unique per run"
        else:
            kept.append(k)
    return kept, skipped


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
    """The best setting (by its mean over seeds) with its mean ± std, the best run of that
    setting, and whether the setting beats the next settings beyond seed noise."""
    settings: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for r in rows:
        settings[_setting(r, varying)].append(r)
    sign = 1.0 if higher else -1.0
    means = sorted(
        ((float(np.mean([r.metrics[metric] for r in g])), key) for key, g in settings.items()),
        key=lambda m: -sign * m[0])
    top_mean, top_key = means[0]
    top = settings[top_key]
    best_run = max(top, key=lambda r: sign * r.metrics[metric])
    values = [float(r.metrics[metric]) for r in top]
    out: dict[str, Any] = {"run": best_run.id, "name": best_run.name,
                           "value": best_run.metrics[metric], "higher_is_better": higher,
                           "ties": [], "distinguishable": None,
                           "setting": {k: top[0].params.get(k) for k in varying},
                           "mean": top_mean, "n": len(top),
                           "std": float(np.std(values, ddof=1)) if len(top) > 1 else None}
    if seed_std is None or len(means) < 2:
        return out
    ties = []
    for mean, key in means[1:4]:
        p = _t_p(top_mean, len(settings[top_key]), mean, len(settings[key]), seed_std)
        if p >= ALPHA:
            ties.append({"setting": {k: settings[key][0].params.get(k) for k in varying},
                         "mean": mean,
                         "p_value": p})
    out["ties"] = ties
    out["distinguishable"] = not ties
    return out


def best_run(rows: Sequence[Row], metric: str) -> dict[str, Any] | None:
    """The best setting and run for ``metric`` over the comparable ``rows`` and whether it
    is distinguishable from the runner-ups beyond seed noise (without fitting a forest:
    cheap enough for the runs table)."""
    group = comparable(rows, metric)
    runs = group.runs
    if len(runs) < 2:
        return None
    varying = varying_params(runs)
    seed_std, _ = seed_noise(runs, varying, metric)
    best = _best(runs, varying, metric, seed_std, _higher_is_better(metric))
    if best is not None:
        best.update(seed_std=seed_std, runs=len(runs), scope=group.scope,
                    left_out=len(group.left_out), sentence=best_sentence(metric, best))
    return best
