"""The metrics comparer: whole metric series, point by point, in bounded memory.

Contract: ``compare(left, right, policy)`` returns, for each metric key of either run:

* ``kind="missing"`` / ``"extra"`` at ``metrics/<key>`` when only one run logged the key;
* nothing when both series hold the same points (bit for bit; NaN equals NaN at the same
  step under ``policy.nan_equal``, T27);
* else one ``kind="value"`` difference at ``metrics/<key>`` whose ``stats`` are points (steps
  in either run), differing, beyond (points out of tolerance, steps logged by one run only
  included), only_left, only_right, first_step (the first step out of tolerance, or the
  first differing step when all are within it), max_abs, max_rel (relative to the
  original, over differing points whose difference is a number), left_final, right_final
  (the value at each run's last step); ``within_tolerance`` when no point is beyond
  ``|l - r| <= atol + rtol * |l|`` with ``policy.metric_tolerance_for(key)``. Under
  ``policy.bitwise`` every differing point is beyond. NaN vs a number, +inf vs -inf and
  ±inf vs a number are divergences; -0.0 vs 0.0 differs but lies within any tolerance.

Irregular series (T30), handled the same way every time: points are paired by step; a
step logged several times keeps its last value in logging order (last write wins) and a
comment gives the count; steps logged out of order are compared in step order and a
comment says so; a point whose step is not an integer or whose value is not a real number
(str, bool, None) is skipped and counted in a comment, and the key then always gets a
difference (within tolerance when the other points agree; ``first_step`` None when none
differs), since points that were not compared cannot be called identical. A series that
cannot be read at all (a step beyond int64, a point that is not a pair) becomes a
``kind="error"`` difference.

Memory (T29): one key at a time. Series logged in step order (the usual case) stream in
chunks of ``CHUNK`` points per side, so memory stays a few chunks whatever the length
(10^7 points x 4 keys: under 10 MB above the interpreter). A series logged out of order
must be sorted: both sides are loaded whole, 16 bytes per point per side (int64 step +
float64 value), and sorting one side briefly needs 16 more per point of that side (the
argsort order and one permuted copy); comparing them still works chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Literal

import numpy as np

from auditor.compare.difference import Difference, Stat
from auditor.core.policy import ComparePolicy, Tolerance

if TYPE_CHECKING:
    from auditor.compare.evidence import Evidence

PAIR = np.dtype([("step", np.int64), ("value", np.float64)])
CHUNK = 1 << 16  # points per side per read: 1 MiB, small next to the 300 MB budget


class _OutOfOrder(Exception):
    """A series turned out not to be in step order: restart it with the sorting path."""


@dataclass(frozen=True)
class _Rule:
    tolerance: Tolerance
    nan_equal: bool
    bitwise: bool


def compare(left: Evidence, right: Evidence, policy: ComparePolicy) -> list[Difference]:
    """Differences between the original run's metric series (left) and the rerun's."""
    diffs: list[Difference] = []
    for key in sorted(set(left.metric_keys) | set(right.metric_keys)):
        if key not in right.metric_keys:
            diffs.append(_presence(key, left, "missing"))
        elif key not in left.metric_keys:
            diffs.append(_presence(key, right, "extra"))
        else:
            diffs.extend(compare_series(key, left, right, policy))
    return diffs


def _presence(key: str, side: Evidence, kind: Literal["missing", "extra"]) -> Difference:
    final = side.record.metrics.final.get(key)
    shown = None if final is None else _fmt(final)
    where_from = "original" if kind == "missing" else "rerun"
    return Difference(where=f"metrics/{key}", kind=kind,
                      left=shown if kind == "missing" else None,
                      right=shown if kind == "extra" else None,
                      comments=(f"logged only by the {where_from}",))


def compare_series(key: str, left: Evidence, right: Evidence,
                   policy: ComparePolicy) -> list[Difference]:
    """The difference (at most one) between two runs' series of one metric."""
    rule = _Rule(policy.metric_tolerance_for(key), policy.nan_equal, policy.bitwise)
    try:
        try:
            pair = (_Side.streamed(left.series(key)), _Side.streamed(right.series(key)))
            acc = _run(*pair, rule)
        except _OutOfOrder:
            pair = (_Side.loaded(left.series(key)), _Side.loaded(right.series(key)))
            acc = _run(*pair, rule)
    except (OverflowError, ValueError, TypeError) as exc:
        return [Difference(where=f"metrics/{key}", kind="error",
                           comments=(f"the series could not be read: {exc}",))]
    return acc.result(key, *pair)


# -- reading ---------------------------------------------------------------------------


Points = Iterable[tuple[int, float]]
Block = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted, one point per step


def _numbers(points: Points, skipped: list[int]) -> Iterator[tuple[int, float]]:
    """The points with an integer step and a real value; counts the others in skipped[0]."""
    for point in points:
        step, value = point
        if type(step) is int and type(value) is float:  # what the store yields: fast path
            yield point
        elif _is_step(step) and _is_real(value):
            yield int(step), float(value)
        else:
            skipped[0] += 1


def _is_step(step: object) -> bool:
    return isinstance(step, int | np.integer) and not isinstance(step, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


class _Side:
    """One series in step order with a buffer of points not yet compared."""

    def __init__(self, points: Iterator[tuple[int, float]], skipped: list[int]) -> None:
        self.points, self.skipped = points, skipped
        self.steps = np.empty(0, np.int64)
        self.values = np.empty(0, np.float64)
        self.done = False
        self.out_of_order = False
        self.duplicates = 0
        self.final: float | None = None

    @classmethod
    def streamed(cls, points: Points) -> _Side:
        """Read lazily, CHUNK points at a time; raises _OutOfOrder on a step going back."""
        skipped = [0]
        return cls(_numbers(points, skipped), skipped)

    @classmethod
    def loaded(cls, points: Points) -> _Side:
        """Read whole and sorted by step (stable, so logging order breaks ties)."""
        skipped = [0]
        side = cls(iter(()), skipped)
        steps, values = _load(_numbers(points, skipped))
        side.out_of_order = _descends(steps)
        if side.out_of_order:
            order = np.argsort(steps, kind="stable")
            steps = steps[order]  # one array at a time: the old one is freed before the next
            values = values[order]
        side.steps, side.values, side.done = steps, values, True
        return side

    def fill(self) -> None:
        """Append one chunk to the buffer."""
        chunk = np.fromiter(islice(self.points, CHUNK), PAIR)
        self.done = len(chunk) < CHUNK
        steps = chunk["step"]
        if len(steps) and (_descends(steps) or (len(self.steps) and steps[0] < self.steps[-1])):
            raise _OutOfOrder
        self.steps = np.concatenate((self.steps, steps))
        self.values = np.concatenate((self.values, chunk["value"]))

    def ready(self) -> None:
        """Read until a whole step (one that cannot continue in the next chunk) is buffered."""
        while not self.done and (len(self.steps) == 0 or self.steps[0] == self.steps[-1]):
            self.fill()

    def limit(self) -> int | None:
        """Steps below this are complete in the buffer and due now (None: all of them).

        A loaded series is handed out about CHUNK points at a time too, so comparing it
        needs only chunk-sized temporaries."""
        if not self.done:
            return int(self.steps[-1])
        if len(self.steps) <= CHUNK:
            return None
        at = max(CHUNK, int(np.searchsorted(self.steps, self.steps[0], "right")))
        return None if at >= len(self.steps) else int(self.steps[at])

    def take(self, limit: int | None) -> Block:
        """Remove the buffered points with step < limit; one per step, the last logged."""
        cut = len(self.steps) if limit is None else int(np.searchsorted(self.steps, limit))
        steps, values = self.steps[:cut], self.values[:cut]
        self.steps, self.values = self.steps[cut:], self.values[cut:]
        if len(steps) > 1:
            keep = np.append(steps[1:] != steps[:-1], True)
            self.duplicates += len(keep) - int(np.count_nonzero(keep))
            steps, values = steps[keep], values[keep]
        if len(values):
            self.final = float(values[-1])
        return steps, values

    def exhausted(self) -> bool:
        return self.done and len(self.steps) == 0


def _load(points: Iterator[tuple[int, float]]) -> Block:
    """A whole series as two contiguous arrays, read by chunks (no growing buffer)."""
    chunks: list[np.ndarray] = []
    while len(chunk := np.fromiter(islice(points, CHUNK), PAIR)):
        chunks.append(chunk)
    total = sum(len(c) for c in chunks)
    steps, values = np.empty(total, np.int64), np.empty(total, np.float64)
    at = 0
    chunks.reverse()
    while chunks:  # pop each chunk once copied, so the peak stays near 16 bytes per point
        chunk = chunks.pop()
        steps[at:at + len(chunk)], values[at:at + len(chunk)] = chunk["step"], chunk["value"]
        at += len(chunk)
    return steps, values


def _descends(steps: np.ndarray) -> bool:
    return bool(np.any(steps[1:] < steps[:-1]))


def _run(left: _Side, right: _Side, rule: _Rule) -> _Acc:
    """Merge two step-ordered series block by block."""
    acc = _Acc(rule)
    while True:
        left.ready()
        right.ready()
        limit = _min_limit(left.limit(), right.limit())
        acc.block(left.take(limit), right.take(limit))
        if left.exhausted() and right.exhausted():
            return acc


def _min_limit(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


# -- comparing -------------------------------------------------------------------------


@dataclass
class _First:
    step: int
    left: str
    right: str


@dataclass
class _Acc:
    """Running totals over the blocks of one key (blocks arrive in step order)."""

    rule: _Rule
    points: int = 0
    differing: int = 0
    beyond: int = 0
    only_left: int = 0
    only_right: int = 0
    max_abs: float = math.nan
    max_rel: float = math.nan
    first_beyond: _First | None = None
    first_differing: _First | None = None

    def block(self, left: Block, right: Block) -> None:
        """Compare points of both sides whose steps lie in the same range."""
        (ls, lv), (rs, rv) = left, right
        if len(ls) == len(rs) and np.array_equal(ls, rs):
            self.points += len(ls)
            self._values(ls, lv, rv)
            return
        pos = np.minimum(np.searchsorted(rs, ls), max(len(rs) - 1, 0))
        matched = rs[pos] == ls if len(rs) else np.zeros(len(ls), bool)
        in_right = np.zeros(len(rs), bool)
        in_right[pos[matched]] = True
        self.points += len(ls) + len(rs) - int(np.count_nonzero(matched))
        self._one_sided(ls[~matched], lv[~matched], "left")
        self._one_sided(rs[~in_right], rv[~in_right], "right")
        self._values(ls[matched], lv[matched], rv[pos[matched]])

    def _one_sided(self, steps: np.ndarray, values: np.ndarray, side: str) -> None:
        if not len(steps):
            return
        if side == "left":
            self.only_left += len(steps)
            self._note_beyond(int(steps[0]), _fmt(values[0]), "missing")
        else:
            self.only_right += len(steps)
            self._note_beyond(int(steps[0]), "missing", _fmt(values[0]))

    def _values(self, steps: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            nan = np.isnan(a)
            same = (a.view(np.int64) == b.view(np.int64)) & ~nan  # NaN: only by the rule
            if self.rule.nan_equal:
                same |= nan & np.isnan(b)
            if same.all():
                return
            diff = np.abs(a - b)
            self._tally(steps, a, b, diff, (same, self._ok(a, b, diff, same)))

    def _ok(self, a: np.ndarray, b: np.ndarray, diff: np.ndarray, same: np.ndarray) -> np.ndarray:
        """Within tolerance: identical, or both finite and close (inf never is close)."""
        if self.rule.bitwise:
            return same
        tol = self.rule.tolerance
        close = np.isfinite(a) & np.isfinite(b) & (diff <= tol.atol + tol.rtol * np.abs(a))
        ok: np.ndarray = same | close
        return ok

    def _tally(self, steps: np.ndarray, a: np.ndarray, b: np.ndarray, diff: np.ndarray,
               masks: tuple[np.ndarray, np.ndarray]) -> None:
        same, ok = masks
        differing = np.flatnonzero(~same)
        self.differing += len(differing)
        d = diff[differing]
        self.max_abs = _fmax(self.max_abs, d)
        self.max_rel = _fmax(self.max_rel, d / np.abs(a[differing]))
        i = int(differing[0])
        if self.first_differing is None:
            self.first_differing = _First(int(steps[i]), _fmt(a[i]), _fmt(b[i]))
        out = np.flatnonzero(~ok)
        self.beyond += len(out)
        if len(out):
            j = int(out[0])
            self._note_beyond(int(steps[j]), _fmt(a[j]), _fmt(b[j]))

    def _note_beyond(self, step: int, left: str, right: str) -> None:
        if self.first_beyond is None or step < self.first_beyond.step:
            self.first_beyond = _First(step, left, right)

    def result(self, key: str, left: _Side, right: _Side) -> list[Difference]:
        """The one Difference for this key, or none when the series are identical."""
        beyond = self.beyond + self.only_left + self.only_right
        if not self.differing and not beyond and not (left.skipped[0] or right.skipped[0]):
            return []  # skipped points: the runs cannot be called identical
        first = self.first_beyond or self.first_differing
        stats: dict[str, Stat] = {
            "points": self.points, "differing": self.differing, "beyond": beyond,
            "only_left": self.only_left, "only_right": self.only_right,
            "first_step": first.step if first else None, "max_abs": _num(self.max_abs),
            "max_rel": _num(self.max_rel), "left_final": left.final, "right_final": right.final}
        return [Difference(
            where=f"metrics/{key}", kind="value", left=_opt(left.final), right=_opt(right.final),
            magnitude=_num(self.max_abs), within_tolerance=beyond == 0, stats=stats,
            comments=self._comments(first, beyond) + _irregular(left, right))]

    def _comments(self, first: _First | None, beyond: int) -> tuple[str, ...]:
        rule = self.rule
        tol = "bit identity" if rule.bitwise else (
            f"rtol={rule.tolerance.rtol:g}, atol={rule.tolerance.atol:g}")
        counts = f"{self.differing} of {self.points} points differ, {beyond} beyond tolerance"
        if first is None:
            return (f"{counts} ({tol})",)
        where = f"step {first.step} ({first.left} vs {first.right})"
        lead = f"first leaves tolerance at {where}" if beyond else f"first differs at {where}"
        return (lead, f"{counts} ({tol})", *_one_sided_comments(self))


def _one_sided_comments(acc: _Acc) -> tuple[str, ...]:
    out = []
    if acc.only_left:
        out.append(f"{acc.only_left} steps logged only by the original")
    if acc.only_right:
        out.append(f"{acc.only_right} steps logged only by the rerun")
    return tuple(out)


def _irregular(left: _Side, right: _Side) -> tuple[str, ...]:
    notes = []
    for name, side in (("original", left), ("rerun", right)):
        if side.duplicates:
            notes.append(f"{side.duplicates} repeated steps in the {name}: the last value "
                         "logged for a step wins")
        if side.out_of_order:
            notes.append(f"steps logged out of order in the {name}: compared in step order")
        if side.skipped[0]:
            notes.append(f"{side.skipped[0]} points in the {name} skipped: step not an integer "
                         "or value not a number")
    return tuple(notes)


def _fmax(current: float, values: np.ndarray) -> float:
    """Largest of current and values, ignoring NaN (NaN when there is no number)."""
    if not len(values):
        return current
    top = float(np.fmax.reduce(values))
    return top if math.isnan(current) else current if math.isnan(top) else max(current, top)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def _opt(value: float | None) -> str | None:
    return None if value is None else _fmt(value)


def _fmt(value: float) -> str:
    """Short, exact enough to read: 6 significant digits, nan/inf spelled out."""
    return f"{float(value):.6g}"
