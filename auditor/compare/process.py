"""The process itself: did the rerun end the way the original did?

A rerun that crashes (missing data, an import error in the image, out of memory inside
Python) cannot reproduce anything, and saying so plainly beats a list of missing metrics.
One difference, ``process/exit_code``, carries the last lines of the rerun's stderr.
"""

from __future__ import annotations

from typing import Any

from auditor.compare.difference import Difference
from auditor.core.policy import ComparePolicy

STDERR = "logs/stderr.txt"
TAIL_LINES = 3


def compare(left: Any, right: Any, policy: ComparePolicy) -> list[Difference]:
    """A difference when the exit codes differ (the original's is normally 0)."""
    a, b = left.record.identity.exit_code, right.record.identity.exit_code
    if a == b:
        return []
    return [Difference(where="process/exit_code", kind="changed", left=str(a), right=str(b),
                       comments=tuple(_tail(right.files.get(STDERR))))]


def _tail(path: Any) -> list[str]:
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines[-TAIL_LINES:] if line.strip()]
