"""Compare two runs, one comparer per kind of evidence, listed once in ``COMPARATORS``.

Contract: a comparer is ``compare(left, right, policy) -> list[Difference]`` over two
``Evidence`` values (left = the original run, right = the rerun). An empty list means
identical; a comparer never raises for a difference, only for evidence it cannot read
(``InputError`` for a corrupt weights file). ``compare_runs`` runs the table in order and
returns ``{comparer name: differences}``; ``evidence_from_store`` gathers one side from the
store, re-hashing every output and log artifact first, so an artifact altered after
recording raises ``IntegrityError`` before anything is compared.

The table (diffoscope's ``COMPARATORS``): the process's exit status first (a crashed rerun
explains everything else), params and environment because they are cheap and explain the
rest; then metrics, weights, and every other output file. The file comparers share one
plan (``files.plan``): outputs paired by name, then by name pattern (``pairing``: a time or
an id in a name), TensorBoard event files read by ``events``, logs informational unless
``compare_logs = "strict"``; ``files.coverage`` says which outputs were compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from auditor.compare.difference import Difference
from auditor.compare.evidence import Evidence, evidence_from_store, plot_series
from auditor.core.errors import InputError
from auditor.core.policy import ComparePolicy

__all__ = ["COMPARATORS", "Comparer", "Difference", "Evidence", "comparators",
           "compare_runs", "evidence_from_store", "plot_series"]

Comparer = Callable[[Evidence, Evidence, ComparePolicy], list[Difference]]

if TYPE_CHECKING:
    COMPARATORS: tuple[tuple[str, Comparer], ...]


@cache
def comparators() -> tuple[tuple[str, Comparer], ...]:
    """The table, in order. The comparers (numpy with them) are imported on first use, not
    with the package: ``Difference`` and ``evidence_from_store`` stay cheap to import, and
    ``audit verify`` loads them while the rerun runs."""
    from auditor.compare import environment, files, metrics, params, process

    return (
        ("process", process.compare),
        ("params", params.compare),
        ("environment", environment.compare),
        ("metrics", metrics.compare),
        ("weights", files.compare_weights),
        ("files", files.compare),
    )


def __getattr__(name: str) -> Any:
    if name == "COMPARATORS":  # the table, as it was when imported with the package
        return comparators()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare_runs(
    left: Evidence, right: Evidence, policy: ComparePolicy, only: Sequence[str] | None = None
) -> dict[str, list[Difference]]:
    """Every comparer's differences (or those named in ``only``), in table order."""
    chosen = _chosen(only)
    return {name: comparer(left, right, policy) for name, comparer in comparators()
            if name in chosen}


def _chosen(only: Sequence[str] | None) -> set[str]:
    names = [name for name, _ in comparators()]
    if only is None:
        return set(names)
    unknown = [name for name in only if name not in names]
    if unknown:
        raise InputError(f"unknown comparer {unknown[0]!r}; available: {', '.join(names)}")
    return set(only)
