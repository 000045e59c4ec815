"""The params comparer: the hyperparameter dictionaries of two runs, with deepdiff.

Contract: ``compare(left, right, policy)`` returns one ``kind="changed"`` difference per
changed, added or removed leaf of ``record.params``, at ``params/<path>`` (nested keys and
list indices joined by ``/``: ``params/optim/lr``), with both values in short form, never
within tolerance: a rerun with other hyperparameters is not the same run. NaN equals NaN;
``1`` vs ``1.0`` is a change of type and is reported. The policy is not consulted.

``deep_changes`` is the shared deepdiff walk (the environment comparer's fallback):
deepdiff's tree view, so paths come as lists and never need parsing back out of strings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditor.compare.difference import Difference
from auditor.core.policy import ComparePolicy

if TYPE_CHECKING:
    from auditor.compare.evidence import Evidence

SHORT = 200  # characters of a value shown in a difference


@dataclass(frozen=True)
class Change:
    """One leaf that differs: its path, and each side's value (None when absent)."""

    path: tuple[str, ...]
    left: Any
    right: Any
    report_type: str  # deepdiff's: values_changed, dictionary_item_added, ...


def compare(left: Evidence, right: Evidence, policy: ComparePolicy) -> list[Difference]:
    """Differences between the original run's params (left) and the rerun's."""
    return [Difference(where="params/" + "/".join(c.path), kind="changed",
                       left=short(c.left), right=short(c.right), comments=(_what(c),))
            for c in deep_changes(left.record.params, right.record.params)]


def deep_changes(left: Any, right: Any) -> list[Change]:
    """Every changed leaf between two JSON-like values, sorted by path."""
    if _same(left, right):  # the usual case: no walk, no import
        return []
    deepdiff, not_present = _deepdiff()
    tree = deepdiff(left, right, ignore_nan_inequality=True, verbose_level=2, view="tree",
                    threshold_to_diff_deeper=0)  # always itemise, never "the whole dict changed"
    changes = [Change(tuple(str(p) for p in level.path(output_format="list")),
                      _present(level.t1, not_present), _present(level.t2, not_present),
                      report_type)
               for report_type, levels in tree.items() for level in levels]
    return sorted(changes, key=lambda c: (c.path, c.report_type))


def _same(left: Any, right: Any) -> bool:
    """Equal as JSON, types included (``3`` is not ``3.0``, ``True`` is not ``1``)."""
    try:
        return json.dumps(left, sort_keys=True, default=repr) == json.dumps(
            right, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # keys of mixed types: let deepdiff walk them
        return False


def _deepdiff() -> tuple[Any, type]:
    """deepdiff's ``DeepDiff`` and ``NotPresent``, imported on first use without pandas and
    polars: deepdiff imports them when installed (0.2-0.4 s of every verify) only to diff
    data frames, and params and environments are JSON-like values."""
    blocked = [name for name in ("pandas", "polars") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import fails: deepdiff skips it
    try:
        from deepdiff import DeepDiff
        from deepdiff.helper import NotPresent
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return DeepDiff, NotPresent


def _present(value: Any, not_present: type) -> Any:
    return None if isinstance(value, not_present) else value


def _what(change: Change) -> str:
    kind = change.report_type
    if kind.endswith("_added"):
        return "only in the rerun"
    if kind.endswith("_removed"):
        return "only in the original"
    if kind == "type_changes":
        return f"type changed: {type(change.left).__name__} -> {type(change.right).__name__}"
    return "value changed"


def short(value: Any) -> str | None:
    """A value as a short string (strings as they are, others as JSON when possible)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str)
        except ValueError:  # a circular structure
            text = repr(value)
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"
