"""The data behind the dashboard's pages, computed here so templates and scripts only show.

* ``comparison``: what N runs differ in, section by section (params, seeds, determinism
  and threads, packages, lockfile, code, data, GPU), each row marked ``differs``;
* ``curves``: metric series downsampled on the server with LTTB (tsdownsample) so a
  100,000-point series is sent as at most ``points`` points, read from the store's curve
  previews (store/preview.py) where it has them; a run's downsampled curves are kept
  (``CurveCache``) until its metrics mark moves;
* ``run_view``: one run's whole record, artifacts, certificates and curves.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from auditor.core.schema import RunRecord
from auditor.store.base import MetricReader, RecordReader, RunReader
from auditor.store.preview import lttb as downsample
from auditor.store.query import BADGES, Row
from auditor.store.summaries import entry_point
from auditor.ui.importance import importance, is_seed_key, varying_params

MAX_POINTS = 1000
MAX_COMPARE = 50


def flatten(rec: RunRecord) -> dict[tuple[str, str], str]:
    """(section, key) -> shown value: everything a comparison looks at."""
    out: dict[tuple[str, str], str] = {}
    for k, v in rec.params.items():
        out[("seeds" if is_seed_key(k) else "params", k)] = _text(v)
    seeds = rec.seeds
    out[("seeds", "recorded seed")] = _text(seeds.seed)
    out[("seeds", "seeded")] = ", ".join(seeds.seeded) or "-"
    out[("seeds", "PYTHONHASHSEED")] = _text(seeds.pythonhashseed)
    if rec.determinism:
        for k, v in rec.determinism.model_dump().items():
            section = "threads" if "thread" in k else "determinism"
            out[(section, k)] = _text(v)
    env = rec.environment
    if env.python:
        out[("environment", "python")] = f"{env.python.implementation} {env.python.version}"
        for name, version in env.python.packages.items():
            out[("packages", name)] = version
        lock = env.python.lock
        out[("lockfile", "sha256")] = lock.sha256 if lock else "no lockfile"
        if lock:
            out[("lockfile", "origin")] = lock.origin
    out[("environment", "container image")] = _text(env.container_image)
    code = rec.code
    out[("code", "commit")] = _text(code.commit if code else None)
    out[("code", "dirty")] = _text(code.dirty if code else None)
    out[("code", "tree sha256")] = _text(code.tree_sha256 if code else None)
    for d in rec.data:
        out[("data", d.path)] = f"{d.sha256[:16]}… ({d.size} bytes)"
    acc = env.accelerators
    gpus = ", ".join(g.name for g in acc.gpus) if acc and acc.gpus else "none"
    out[("gpu", "gpus")] = gpus
    if acc:
        out[("gpu", "driver")] = _text(acc.driver_version)
        out[("gpu", "cuda")] = _text(acc.torch_cuda)
        out[("gpu", "cudnn")] = _text(acc.cudnn)
    for k, v in rec.metrics.final.items():
        out[("metrics", k)] = _text(v)
    return out


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return repr(v) if not math.isfinite(v) else f"{v:.6g}"
    return str(v)[:300]


SECTIONS = ("params", "seeds", "determinism", "threads", "packages", "lockfile", "code",
            "data", "gpu", "environment", "metrics")


def comparison(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Sections of rows ``{key, values, differs}`` for the runs, in SECTIONS order."""
    flat = [flatten(r) for r in records]
    keys = sorted({k for f in flat for k in f},
                  key=lambda k: (SECTIONS.index(k[0]) if k[0] in SECTIONS else 99, k[1]))
    sections: dict[str, list[dict[str, Any]]] = {}
    for section, key in keys:
        values = [f.get((section, key), "(absent)") for f in flat]
        sections.setdefault(section, []).append(
            {"key": key, "values": values, "differs": len(set(values)) > 1})
    return [{"name": s, "rows": rows, "differing": sum(r["differs"] for r in rows)}
            for s, rows in sections.items()]


def lttb(steps: np.ndarray, values: np.ndarray, points: int = MAX_POINTS
         ) -> tuple[list[float], list[float | None]]:
    """At most ``points`` (step, value) pairs keeping the curve's shape (LTTB); NaN and
    infinities are dropped before downsampling (they cannot be drawn)."""
    xs, ys = downsample(steps, values, points)
    return xs.tolist(), ys.tolist()


def series(store: MetricReader, run_id: str, key: str | None = None
           ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """A run's metric series as numpy arrays with their point counts, per key: the
    store's curve previews plus the points after them where it has them (derived,
    display-only data, store/preview.py), else the full series."""
    previews = store.metric_previews(run_id)
    if previews is not None:
        return {k: v for k, v in previews.items() if key is None or k == key}
    return {k: (s, v, len(v)) for k, (s, v) in store.metric_arrays(run_id, key).items()}


class CurveCache:
    """Downsampled curves kept between requests, keyed by run, metric key, point count and
    the run's metrics mark (points are append-only, so an unchanged mark means unchanged
    series; a running run's new points change its mark). Reading a 100,000-point series
    out of the store costs far more than the page, so a run's curves are read once."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], dict[str, dict[str, Any]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, store: MetricReader, run_id: str, key: str | None, points: int
            ) -> dict[str, dict[str, Any]]:
        """metric -> {steps, values, total} of one run, downsampled."""
        cache_key = (id(store), run_id, key, points, store.metrics_mark(run_id))
        with self.lock:
            hit = self.entries.get(cache_key)
            if hit is not None:
                self.entries.move_to_end(cache_key)
                return hit
        out: dict[str, dict[str, Any]] = {}
        for name, (steps, values, total) in series(store, run_id, key).items():
            xs, ys = lttb(steps, values, points)
            out[name] = {"steps": xs, "values": ys, "total": total}
        with self.lock:
            self.entries[cache_key] = out
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return out


CURVES = CurveCache()


def curves(store: MetricReader, run_ids: Sequence[str], key: str | None = None,
           points: int = MAX_POINTS) -> dict[str, list[dict[str, Any]]]:
    """metric -> [{run, steps, values, total}], each series LTTB-downsampled."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        for name, curve in CURVES.get(store, run_id, key, points).items():
            out.setdefault(name, []).append({"run": run_id, **curve})
    return dict(sorted(out.items()))


def rows_for(records: Sequence[RunRecord], verdicts: dict[str, str]) -> list[Row]:
    """Table rows built from whole records (the compare page's own runs)."""
    return [Row(r.identity.id, r.identity.name, r.identity.status, r.identity.started_at,
                r.code.commit if r.code else None, bool(r.code and r.code.dirty),
                r.identity.reproduces, r.identity.tags,
                {k: v for k, v in r.params.items()
                 if v is None or isinstance(v, str | int | float | bool)},
                dict(r.metrics.final), verdicts.get(r.identity.id, "never"),
                r.not_captured.get("verifiable"), entry_point(r.command.argv))
            for r in records]


def parallel(rows: Sequence[Row], metric: str | None) -> dict[str, Any]:
    """Parallel-coordinates data: the varying params (constants left out) and the metric."""
    names = varying_params(rows)
    dims = []
    for name in names:
        values = [r.params.get(name) for r in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        dims.append({"name": name, "numeric": numeric,
                     "categories": None if numeric else sorted({_text(v) for v in values})})
    data = [[_cell(r.params.get(n)) for n in names] + [_metric(r, metric)] for r in rows]
    return {"dims": dims, "metric": metric, "data": data,
            "runs": [{"id": r.id, "name": r.name} for r in rows]}


def _cell(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v if math.isfinite(v) else None
    return _text(v)


def _metric(r: Row, metric: str | None) -> float | None:
    v = r.metrics.get(metric) if metric else None
    return v if isinstance(v, int | float) and math.isfinite(v) else None


def choose_metric(rows: Sequence[Row], wanted: str | None) -> str | None:
    """The metric asked for, else the one most runs have (ties by name)."""
    counts: dict[str, int] = {}
    for r in rows:
        for k in r.metrics:
            counts[k] = counts.get(k, 0) + 1
    if wanted and wanted in counts:
        return wanted
    return min(counts, key=lambda k: (-counts[k], k)) if counts else None


def importance_view(rows: Sequence[Row], metric: str | None) -> dict[str, Any]:
    """Importance as plain JSON-ready data: over the comparable runs, saying which runs
    and params were left out and why."""
    if metric is None:
        return {"metric": None, "runs": len(rows), "params": [], "message": "no metric",
                "left_out": [], "params_left_out": {}, "scope": "", "statements": []}
    result = importance(rows, metric)
    return {
        "metric": metric, "runs": result.runs, "message": result.message,
        "seed_std": result.seed_std, "seed_groups": result.seed_groups, "best": result.best,
        "params": [vars(p) for p in result.params], "scope": result.scope,
        "left_out": [vars(x) for x in result.left_out],
        "params_left_out": result.params_left_out, "statements": result.statements(),
    }


def run_labels(rows: Sequence[Row]) -> dict[str, str]:
    """Each run named by the params that differ between ``rows`` (``lr=0.1 · seed=2``),
    seeds last; a run's name and id tail where no param differs."""
    keys = sorted({k for r in rows for k in r.params})
    differing = [k for k in keys if len({repr(r.params.get(k)) for r in rows}) > 1]
    differing.sort(key=lambda k: (is_seed_key(k), k))
    out = {}
    for r in rows:
        parts = [f"{k}={_text(r.params.get(k))[:24]}" for k in differing]
        out[r.id] = " · ".join(parts) if parts else f"{r.name} · {r.id[-6:]}"
    return out


def seed_groups(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Runs that differ only in seed, grouped (W&B grouping): each group's setting, label
    (the params that differ between groups) and run ids, in the runs' order."""
    keys = sorted({k for r in rows for k in r.params if not is_seed_key(k)})
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(repr(r.params.get(k)) for k in keys), []).append(r)
    differing = [k for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1]
    out = []
    for members in groups.values():
        first = members[0]
        setting = {k: first.params.get(k) for k in differing}
        label = " · ".join(f"{k}={_text(v)[:24]}" for k, v in setting.items()) or "all runs"
        out.append({"label": label, "setting": setting, "runs": [r.id for r in members]})
    return out


def compare_view(store: RunReader, run_ids: Sequence[str], metric: str | None,
                 verdicts: dict[str, str], population: Sequence[Row] | None = None
                 ) -> dict[str, Any]:
    """Everything the compare page shows for these runs; ``population`` (all the runs a
    filter matched, of which ``run_ids`` are the first) is what the importance weighs."""
    records = [store.get_record(i) for i in run_ids]
    rows = rows_for(records, verdicts)
    weighed = list(population) if population is not None else rows
    chosen = choose_metric(weighed, metric)
    labels = run_labels(rows)
    groups = seed_groups(rows)
    per_run = curves(store, run_ids)
    return {
        "runs": [{"id": r.id, "name": r.name, "status": r.status, "verified": r.verified,
                  "started": r.started_at.isoformat(), "label": labels[r.id]} for r in rows],
        "sections": comparison(records),
        "curves": per_run,
        "groups": groups,  # the bands are drawn from the runs' curves (app.js: bandOf)
        "metric": chosen,
        "metrics": sorted({k for r in rows for k in r.metrics}),
        "parallel": parallel(rows, chosen),
        "importance": importance_view(weighed, chosen),
        "population": len(weighed),
    }


def badge(verdict: str) -> str:
    """A certificate verdict as its short badge name."""
    return BADGES.get(verdict, verdict)


def explained(store: RecordReader, certs: Sequence[Any]) -> list[dict[str, Any]]:
    """Each certificate with what its stored verification says: the verdict, the first
    divergence, the most likely cause, and where its HTML report is served (from the
    result stored with the rerun; a certificate whose result cannot be read says so)."""
    from auditor.certify.issue import stored_result
    from auditor.core.errors import AuditorError

    out = []
    for c in certs:
        row: dict[str, Any] = {"verdict": c.verdict, "issued": c.issued_at.isoformat(),
                               "rerun": c.rerun_id, "sha256": c.sha256,
                               "first_divergence": None, "cause": None, "report": None,
                               "problem": None}
        if c.rerun_id:
            try:
                result = stored_result(store, store.get_record(c.rerun_id))
            except AuditorError as exc:
                row["problem"] = " ".join(str(exc).split())
            else:
                verdict = result.verdict
                row["first_divergence"] = verdict.first_divergence
                if verdict.causes:
                    top = verdict.causes[0]
                    change = (f": {top.left or '(none)'} → {top.right or '(none)'}"
                              if top.left is not None or top.right is not None else "")
                    row["cause"] = f"{top.category} {top.what}{change}"
                    row["cause_why"] = top.explanation
                row["report"] = f"/runs/{c.rerun_id}/report"
        out.append(row)
    return out


def stored_verification(store: RecordReader, run_id: str) -> Any:
    """The result stored with a rerun by its verification (``VerifyResult``): the run's
    own for a rerun, its newest rerun's for an original."""
    from auditor.certify.issue import stored_result
    from auditor.core.errors import RunNotFound

    record = store.get_record(run_id)
    if record.identity.reproduces is None:
        reruns = store.run_ids_reproducing(run_id)
        if not reruns:
            raise RunNotFound(f"{run_id}: a verification report (never verified)")
        record = store.get_record(reruns[0])
    return stored_result(store, record)


def live_divergence(store: MetricReader, rerun_id: str, original_id: str
                    ) -> dict[str, dict[str, Any]]:
    """metric -> the first step where a rerun's series leaves its original's beyond the
    default metric tolerance (``|a - b| <= atol + rtol·|a|``), over every point logged so
    far (not the downsampled curves): what a running rerun's page marks as it happens.
    The certificate's first divergence, under the verification's policy, is the verdict."""
    from auditor.core.policy import DEFAULT_POLICY

    original = store.metric_arrays(original_id)
    out: dict[str, dict[str, Any]] = {}
    for key, (steps, values) in store.metric_arrays(rerun_id).items():
        if key not in original:
            continue
        o_steps, o_values = original[key]
        common, i_r, i_o = np.intersect1d(steps, o_steps, assume_unique=False,
                                          return_indices=True)
        if not len(common):
            continue
        a, b = o_values[i_o], values[i_r]
        tol = DEFAULT_POLICY.compare.metric_tolerance_for(key)
        both_nan = np.isnan(a) & np.isnan(b)
        with np.errstate(invalid="ignore"):
            bad = ~both_nan & ~(np.abs(a - b) <= tol.atol + tol.rtol * np.abs(a))
        hits = np.flatnonzero(bad)
        if len(hits):
            j = int(hits[0])
            out[key] = {"step": int(common[j]), "original": _finite_or_none(a[j]),
                        "rerun": _finite_or_none(b[j])}
    return out


def _finite_or_none(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def run_curves(store: MetricReader, rec: RunRecord) -> dict[str, Any]:
    """A run page's curves; for a rerun, its original's overlaid (dashed) and the first
    divergence so far."""
    own = curves(store, [rec.identity.id])
    original = rec.identity.reproduces
    if not original:
        return {"curves": own, "original": None, "divergence": {}}
    theirs = curves(store, [original])  # an original not in this store: none, no overlay
    merged = {k: [*v, *({**c, "dashed": True} for c in theirs.get(k, []))]
              for k, v in own.items()}
    return {"curves": merged, "original": original,
            "divergence": live_divergence(store, rec.identity.id, original)}
