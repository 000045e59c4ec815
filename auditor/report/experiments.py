"""``audit compare`` over experiments: one row per run, the params that differ and the
final metrics (``dvc exp show`` style). An experiment table states what differs; it gives
no verdict (a reproduction verdict is for a rerun against its original)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from auditor.report.records import console, fmt_float
from auditor.store.query import Row


def experiment_table(rows: Sequence[Row]) -> dict[str, Any]:
    """{runs: [{id, name, status, verified, reproduces, params, metrics}], differing:
    [param names that differ, a run lacking one counting as differing], same: {param:
    value shared by all}, metrics: [final metric names]} (JSON-ready)."""
    names = sorted({k for r in rows for k in r.params})
    differing = [k for k in names
                 if len({repr(r.params.get(k, _MISSING)) for r in rows}) > 1]
    same = {k: rows[0].params.get(k) for k in names if k not in differing}
    metrics = sorted({k for r in rows for k in r.metrics})
    return {
        "runs": [{"id": r.id, "name": r.name, "status": r.status, "verified": r.verified,
                  "reproduces": r.reproduces,
                  "params": {k: r.params[k] for k in differing if k in r.params},
                  "metrics": {k: _finite(r.metrics[k]) for k in metrics if k in r.metrics}}
                 for r in rows],
        "differing": differing, "same": same, "metrics": metrics,
    }


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _finite(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def print_experiments(table: dict[str, Any], statements: Sequence[str] = ()) -> None:
    """The table on stdout; then what all runs share, and the importance statements."""
    out = console()
    narrow = out.width < 120
    grid = Table(box=None, header_style="bold", pad_edge=False)
    grid.add_column("id", no_wrap=True)
    grid.add_column("name", overflow="fold")
    grid.add_column("verified", no_wrap=True)
    for k in table["differing"]:
        grid.add_column(k, overflow="fold", style="cyan")
    for k in table["metrics"]:
        grid.add_column(k, overflow="fold", style="magenta")
    for run in table["runs"]:
        grid.add_row(run["id"][:12] if narrow else run["id"], run["name"], run["verified"],
                     *(_cell(run["params"].get(k, "(absent)")) for k in table["differing"]),
                     *(_cell(run["metrics"].get(k)) for k in table["metrics"]))
    out.print(grid)
    if table["same"]:
        out.print("same in all: " + ", ".join(f"{k}={_cell(v)}"
                                              for k, v in table["same"].items()))
    for line in statements:
        out.print(line, highlight=False)
