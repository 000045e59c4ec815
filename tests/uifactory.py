"""Synthetic runs for the dashboard's unit tests and benchmarks: real records in a real
store, with params, final metrics and metric series (no training)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from auditor.core.schema import MetricsSummary, RunRecord, Seeds
from auditor.store import SqlStore
from tests.factories import make_record, metric_points

START = datetime(2026, 1, 1, tzinfo=UTC)


def put_run(store: SqlStore, *, name: str = "run", params: dict[str, Any] | None = None,
            final: dict[str, float] | None = None, tags: tuple[str, ...] = (),
            status: str = "finished", series: dict[str, list[float]] | None = None,
            minute: int = 0, seed: int | None = None, reproduces: str | None = None,
            argv: tuple[str, ...] = ("python", "train.py")) -> RunRecord:
    """Store one run (record + metric points) and return its record."""
    rec = make_record(name=name, started_at=START + timedelta(minutes=minute), status=status,
                      tags=tags, params=dict(params or {}), seeds=Seeds(seed=seed),
                      metrics=MetricsSummary(final=dict(final or {})), reproduces=reproduces,
                      argv=argv)
    store.put_record(rec)
    for key, values in (series or {}).items():
        store.add_metrics(rec.identity.id, metric_points(key, values))
    return rec


def sweep(store: SqlStore, *, lrs: tuple[float, ...] = (0.001, 0.01, 0.1),
          dummies: tuple[str, ...] = ("a", "b"), seeds: int = 3,
          noise: float = 0.01) -> list[RunRecord]:
    """A grid where lr drives accuracy and ``dummy`` does nothing; seeds add noise."""
    out = []
    minute = 0
    for lr in lrs:
        for dummy in dummies:
            for seed in range(seeds):
                acc = 0.5 + 0.1 * math.log10(lr * 1000) + noise * math.sin(seed * 2.1 + 1)
                out.append(put_run(store, name=f"lr{lr}-{dummy}", minute=minute, seed=seed,
                                   params={"lr": lr, "dummy": dummy, "seed": seed},
                                   final={"accuracy": acc, "loss": 1 - acc},
                                   series={"loss": [1 - acc * i / 10 for i in range(11)]}))
                minute += 1
    return out
