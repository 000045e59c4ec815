"""One side of a comparison: a record, its verified files and its metric series.

``evidence_from_store`` gathers one side from the store, re-hashing every output and log
artifact first, so an artifact altered after recording raises ``IntegrityError`` before
anything is compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from auditor.core.schema import RunRecord
from auditor.store.base import RunReader

COMPARED_KINDS = ("output", "log")  # artifact kinds whose files a comparison reads


@dataclass(frozen=True)
class Evidence:
    """One side of a comparison (left = original run, right = rerun)."""

    record: RunRecord
    files: Mapping[str, Path]  # output/log artifact name -> local, already-verified file
    metric_keys: tuple[str, ...]
    series: Callable[[str], Iterator[tuple[int, float]]]  # (step, value), in logging order


def evidence_from_store(store: RunReader, record: RunRecord) -> Evidence:
    """One side read from the store; every output and log blob is re-hashed first."""
    verified = {a.name: store.blobs.verified_path(a.sha256, a.name)
                for a in record.artifacts if a.kind in COMPARED_KINDS}
    run_id = record.identity.id

    def series(key: str) -> Iterator[tuple[int, float]]:
        return ((p.step, p.value) for p in store.iter_metrics(run_id, key))

    return Evidence(record=record, files=verified,
                    metric_keys=tuple(sorted(record.metrics.final)), series=series)


def plot_series(original: Evidence, rerun: Evidence, max_points: int = 400
                ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Both sides' metric curves, each downsampled to about ``max_points`` for plots."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for side, evidence in (("original", original), ("rerun", rerun)):
        curves: dict[str, list[tuple[int, float]]] = {}
        for key in evidence.metric_keys:
            points = list(evidence.series(key))
            curves[key] = points[::max(1, len(points) // max_points)]
        out[side] = curves
    return out
