"""TensorBoard event files, compared by what they hold, not by when they were written.

An event file (``events.out.tfevents.<time>.<host>.<pid>.<n>``) stamps every record with
its ``wall_time``, so two bit-for-bit reproducible trainings never write the same bytes.
Contract of ``compare_event_files(left, right, policy, where)``:

* the records are read with TensorBoard's own reader (``EventFileLoader``, which also
  turns old ``simple_value`` scalars into tensors), ``wall_time`` is cleared in every one;
* scalar summaries are series per tag, compared step by step under
  ``policy.metric_tolerance_for(tag)`` (exact under ``bitwise``): a ``kind="value"``
  difference at ``<where>/<tag>`` with ``first_step``, ``max_abs`` and the left/right
  values there, or ``"missing"``/``"extra"`` for a tag or steps on one side only;
* every other record (histograms, images, text, graphs, the file version) is compared by
  its serialised bytes, in order: one ``kind="bytes"`` difference naming the first one;
* identical records whose bytes differ only by their times give one counted difference
  within tolerance saying so (never bitwise: the bytes differ); identical records in files
  of other sizes give a ``kind="bytes"`` difference beyond tolerance.

Without the ``tensorboard`` package (``pip install 'auditor[tensorboard]'``) the files cannot
be read: one ``kind="error"`` difference with ``stats["cannot_compare"]``, which the
verdict turns into could-not-verify, never into a judgement of the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.compare.difference import Difference
from auditor.core.policy import ComparePolicy

HINT = "pip install 'auditor[tensorboard]'"


def is_event_file(name: str) -> bool:
    """True for a TensorBoard event file name."""
    return "tfevents" in name.rpartition("/")[2]


@dataclass
class _Events:
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    others: list[tuple[int, str, bytes]] = field(default_factory=list)  # (step, tag, record)
    records: int = 0


def compare_event_files(left: Path, right: Path, policy: ComparePolicy,
                        where: str) -> list[Difference]:
    """Differences between two event files (see the module contract)."""
    try:
        a, b = _read(left), _read(right)
    except ImportError:
        return [Difference(
            where=where, kind="error", stats={"cannot_compare": True, "hint": HINT},
            comments=("a TensorBoard event file whose bytes differ cannot be read here: "
                      f"the tensorboard package is not installed ({HINT})",))]
    diffs = [d for tag in sorted(set(a.scalars) | set(b.scalars))
             if (d := _scalar_difference(f"{where}/{tag}", tag, a, b, policy)) is not None]
    diffs += _other_differences(where, a, b)
    if not diffs:
        diffs.append(_wall_time_only(where, (left, right), a.records))
    return diffs


def _wall_time_only(where: str, paths: tuple[Path, Path], records: int) -> Difference:
    """Identical records in files whose bytes differ: counted, never bitwise; within
    tolerance when the sizes match (the clock fills a fixed-size field), else bytes lie
    outside the records the reader returns."""
    sizes = paths[0].stat().st_size, paths[1].stat().st_size
    if sizes[0] != sizes[1]:
        return Difference(
            where=where, kind="bytes", left=f"{sizes[0]} bytes", right=f"{sizes[1]} bytes",
            stats={"records": records, "left_size": sizes[0], "right_size": sizes[1]},
            comments=(f"all {records} records are identical but the sizes differ: bytes lie "
                      "outside the records TensorBoard reads",))
    return Difference(
        where=where, kind="changed", within_tolerance=True, stats={"records": records},
        comments=(f"the bytes differ only in wall_time: all {records} records (scalars, "
                  "steps, tags) are identical; the clock counts as a difference within "
                  "tolerance, never bitwise",))


def _read(path: Path) -> _Events:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    events = _Events()
    for event in EventFileLoader(str(path)).Load():
        events.records += 1
        event.ClearField("wall_time")
        if event.WhichOneof("what") != "summary":
            events.others.append((event.step, "", event.SerializeToString(deterministic=True)))
            continue
        for value in event.summary.value:
            scalar = _scalar(value, tensor_util)
            if scalar is None:
                events.others.append((event.step, value.tag,
                                      value.SerializeToString(deterministic=True)))
            else:
                events.scalars.setdefault(value.tag, []).append((event.step, scalar))
    return events


def _scalar(value: Any, tensor_util: Any) -> float | None:
    if value.WhichOneof("value") == "simple_value":
        return float(value.simple_value)
    if value.WhichOneof("value") != "tensor" or value.tensor.tensor_shape.dim:
        return None
    array = tensor_util.make_ndarray(value.tensor)
    return float(array) if array.dtype.kind in "fiub" else None


def _scalar_difference(where: str, tag: str, a: _Events, b: _Events,
                       policy: ComparePolicy) -> Difference | None:
    left, right = a.scalars.get(tag), b.scalars.get(tag)
    if left is None or right is None:
        side = "original" if right is None else "rerun"
        return Difference(where=where, kind="missing" if right is None else "extra",
                          comments=(f"scalar {tag!r} is written only by the {side}",))
    tol = policy.metric_tolerance_for(tag)
    bad = [(s, x, y) for (s, x), (_, y) in zip(left, right, strict=False)
           if not _same(x, y, policy.nan_equal)]
    beyond = [(s, x, y) for s, x, y in bad if policy.bitwise or not _allowed(tol, x, y)]
    if not bad and len(left) == len(right):
        return None
    if not bad:
        longer = "original" if len(left) > len(right) else "rerun"
        return Difference(where=where, kind="missing" if longer == "original" else "extra",
                          left=f"{len(left)} points", right=f"{len(right)} points",
                          comments=(f"{tag!r}: the {longer} wrote more steps",))
    step, x, y = (beyond or bad)[0]
    max_abs = max(_gap(x2, y2) for _, x2, y2 in bad)
    return Difference(where=where, kind="value", left=repr(x), right=repr(y), magnitude=max_abs,
                      within_tolerance=not beyond and len(left) == len(right),
                      stats={"first_step": step, "differing": len(bad), "points": len(left),
                             "max_abs": max_abs},
                      comments=(f"scalar {tag!r} differs at {len(bad)} of {len(left)} steps, "
                                f"the first out of tolerance at step {step}" if beyond else
                                f"scalar {tag!r} differs at {len(bad)} steps, within tolerance",))


def _same(x: float, y: float, nan_equal: bool) -> bool:
    return x == y or (nan_equal and math.isnan(x) and math.isnan(y))


def _allowed(tol: Any, x: float, y: float) -> bool:
    return math.isfinite(x) and math.isfinite(y) and bool(tol.allows(x, y))


def _gap(x: float, y: float) -> float:
    gap = abs(x - y)
    return gap if math.isfinite(gap) else math.inf


def _other_differences(where: str, a: _Events, b: _Events) -> Iterator[Difference]:
    if a.others == b.others:
        return
    index = next((i for i, (x, y) in enumerate(zip(a.others, b.others, strict=False)) if x != y),
                 min(len(a.others), len(b.others)))
    first = a.others[index] if index < len(a.others) else b.others[index]
    step, tag = first[0], first[1] or "(event)"
    yield Difference(where=where, kind="bytes", left=f"{len(a.others)} records",
                     right=f"{len(b.others)} records",
                     stats={"first_record": index, "first_step": step, "tag": tag},
                     comments=(f"non-scalar records differ, the first at record {index} "
                               f"(tag {tag!r}, step {step})",))
