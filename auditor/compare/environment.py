"""The environment comparer: what surrounded the two runs, group by group, item by item.

Contract: ``compare(left, right, policy)`` returns one ``kind="changed"`` difference per
changed item, at ``environment/<group>/<item>`` (``environment/packages/numpy``) with both
values in short form (None when absent on that side) and ``stats={"group": group}``. Every
environment difference is ``within_tolerance``: it never fails a verification by itself,
it explains one (``verdict.rank_causes`` ranks them). A section recorded on one side only
gives one difference at ``environment/<group>`` naming the side that lacks it.

Groups (``GROUPS``, in order): packages (name -> version), python (version,
implementation, build), os (os, kernel, glibc), cpu (model, count, affinity, flags), gpu
(names, compute capabilities, driver, CUDA driver, torch CUDA, cuDNN, NCCL), determinism
(every switch but ``source``), seeds (seed, seeded, pythonhashseed, torch_initial_seed),
env (environment variables; a variable redacted on both sides is left out, since its
values cannot be compared). An item differs where deepdiff would find a change in it
(``_equal``: types count, lists in order, NaN equals NaN), decided without deepdiff's walk
or import, since a rerun in another image changes hundreds of package items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from auditor.compare.difference import Difference
from auditor.compare.params import deep_changes, short
from auditor.core.policy import ComparePolicy
from auditor.core.schema import RunRecord

if TYPE_CHECKING:
    from auditor.compare.evidence import Evidence

REDACTED = "[REDACTED]"  # the marker record/capture/secrets.py writes for hidden values

Group = dict[str, Any] | None  # None: the section was not captured


def _packages(r: RunRecord) -> Group:
    py = r.environment.python
    return None if py is None else dict(py.packages)


def _python(r: RunRecord) -> Group:
    py = r.environment.python
    return None if py is None else {
        "version": py.version, "implementation": py.implementation, "build": py.build}


def _os(r: RunRecord) -> Group:
    s = r.environment.system
    return None if s is None else {"os": s.os, "kernel": s.kernel, "glibc": s.glibc}


def _cpu(r: RunRecord) -> Group:
    s = r.environment.system
    return None if s is None else {
        "cpu_model": s.cpu_model, "cpu_count": s.cpu_count, "cpu_affinity": s.cpu_affinity,
        "cpu_flags": sorted(s.cpu_flags)}


def _gpu(r: RunRecord) -> Group:
    a = r.environment.accelerators
    return None if a is None else {
        "names": [g.name for g in a.gpus],
        "compute_capability": [g.compute_capability for g in a.gpus],
        "driver": a.driver_version, "cuda_driver": a.cuda_driver_version,
        "torch_cuda": a.torch_cuda, "cudnn": a.cudnn, "nccl": a.nccl}


def _determinism(r: RunRecord) -> Group:
    d = r.determinism
    return None if d is None else d.model_dump(exclude={"source"})


def _seeds(r: RunRecord) -> Group:
    s = r.seeds
    return {"seed": s.seed, "seeded": sorted(s.seeded), "pythonhashseed": s.pythonhashseed,
            "torch_initial_seed": s.torch_initial_seed}


def _env(r: RunRecord) -> Group:
    return dict(r.environment.env_vars)


GROUPS: tuple[tuple[str, Callable[[RunRecord], Group]], ...] = (
    ("packages", _packages), ("python", _python), ("os", _os), ("cpu", _cpu), ("gpu", _gpu),
    ("determinism", _determinism), ("seeds", _seeds), ("env", _env),
)


def compare(left: Evidence, right: Evidence, policy: ComparePolicy) -> list[Difference]:
    """Differences between the original run's environment (left) and the rerun's."""
    return compare_records(left.record, right.record)


def compare_records(left: RunRecord, right: RunRecord) -> list[Difference]:
    """The same comparison straight from two records (no files or series needed)."""
    diffs: list[Difference] = []
    for group, extract in GROUPS:
        diffs.extend(_compare_group(group, extract(left), extract(right)))
    return diffs


def _compare_group(group: str, left: Group, right: Group) -> list[Difference]:
    if left is None and right is None:
        return []
    if left is None or right is None:
        lacking = "original" if left is None else "rerun"
        return [Difference(where=f"environment/{group}", kind="changed", within_tolerance=True,
                           left=None if left is None else "captured",
                           right=None if right is None else "captured",
                           stats={"group": group}, comments=(f"not captured in the {lacking}",))]
    if group == "env":
        left, right = _without_redacted(left, right)
    if isinstance(left, dict) and isinstance(right, dict):  # every group: its items only
        items = sorted(k for k in left.keys() | right.keys()
                       if k not in left or k not in right or not _equal(left[k], right[k]))
        return [_item(group, item, left.get(item), right.get(item)) for item in items]
    changes = deep_changes(left, right)
    if any(not c.path for c in changes):  # the whole group changed shape or type
        return [Difference(where=f"environment/{group}", kind="changed", left=short(left),
                           right=short(right), within_tolerance=True, stats={"group": group})]
    items = sorted({c.path[0] for c in changes})
    return [_item(group, item, left.get(item), right.get(item)) for item in items]


def _equal(left: Any, right: Any) -> bool:
    """deepdiff's equality, which the group's items need only as yes or no (no walk, no
    import: a verify changes hundreds of package items): the same type at every level
    (``1`` is not ``1.0``, a list is not a tuple), lists in order, NaN equal to NaN."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_equal(v, right[k]) for k, v in left.items())
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(_equal, left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def _without_redacted(left: dict[str, Any], right: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    # A redacted value is never replayed (unless the policy passes it): not comparable.
    hidden = {k for k, v in (*left.items(), *right.items()) if v == REDACTED}
    return ({k: v for k, v in left.items() if k not in hidden},
            {k: v for k, v in right.items() if k not in hidden})


def _item(group: str, item: str, left: Any, right: Any) -> Difference:
    return Difference(where=f"environment/{group}/{item}", kind="changed", left=short(left),
                      right=short(right), within_tolerance=True, stats={"group": group},
                      comments=_comments(left, right))


def _comments(left: Any, right: Any) -> tuple[str, ...]:
    """For lists (CPU flags, GPU names): what each side has that the other lacks."""
    if not isinstance(left, list) or not isinstance(right, list):
        return ()
    gained = [str(x) for x in right if x not in left]
    lost = [str(x) for x in left if x not in right]
    parts = []
    if gained:
        parts.append("only in the rerun: " + ", ".join(gained[:20]))
    if lost:
        parts.append("only in the original: " + ", ".join(lost[:20]))
    return tuple(parts)
