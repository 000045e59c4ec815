"""Curve previews: a shape-keeping, downsampled copy of every metric series of a run.

Reading a 100,000-point series out of the store costs far more than drawing it, so the
store keeps, per run and metric key, at most ``PREVIEW_POINTS`` points picked by LTTB
(tsdownsample) out of the series as it stood at the run's metric sequence number
``upto_seq``. A preview is derived data, for the dashboard only:

* it is written by ``add_metrics`` once enough new points arrived since the last one
  (``due``: geometric, so a run logging in small flushes pays O(n) in all), and when a
  run's final record is stored, and recomputed on the receiving side by push/pull;
* a reader takes the preview plus the points logged after ``upto_seq`` (the tail), so a
  growing run is shown whole; a preview claiming more points than the run has is
  ignored (the full series is read instead);
* nothing that verifies (the comparers, ``series_sha256``, the gate) ever reads one;
  ``audit fsck`` recomputes each preview from the digest-checked series and reports
  (``--repair``: rebuilds) one that differs.

LTTB picks points of the series itself: every previewed value is a logged value, bit
for bit.
"""

from __future__ import annotations

import math
import struct
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

PREVIEW_POINTS = 4000


def lttb(steps: np.ndarray, values: np.ndarray, points: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` (step, value) pairs keeping the curve's shape (LTTB); NaN and
    infinities are dropped before downsampling (they cannot be drawn); steps in order."""
    import numpy as np

    finite = np.isfinite(values)
    if not bool(finite.all()):
        steps, values = steps[finite], values[finite]
    if len(steps) > 1 and bool(np.any(np.diff(steps) < 0)):  # LTTB needs x in order
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    if len(values) > points:
        from tsdownsample import LTTBDownsampler

        sampler = LTTBDownsampler()  # type: ignore[no-untyped-call]
        index = sampler.downsample(steps.astype(np.float64), values, n_out=points)
        steps, values = steps[index], values[index]
    return steps, values


_BITS = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


def small_preview(points: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """``encode(*lttb(steps, values, PREVIEW_POINTS))`` of a series of at most
    ``PREVIEW_POINTS`` (step, IEEE-754 bits) points, byte for byte, without numpy: a
    short run's recorder (most runs) does not pay numpy's import for its preview."""
    if len(points) > PREVIEW_POINTS:
        raise ValueError(f"{len(points)} points: more than a small preview holds")
    pairs = [(step, _DOUBLE.unpack(_BITS.pack(bits))[0]) for step, bits in points]
    kept = [(step, value) for step, value in pairs if math.isfinite(value)]
    if any(b[0] < a[0] for a, b in pairwise(kept)):  # LTTB needs x in order (stable)
        kept.sort(key=itemgetter(0))
    return (struct.pack(f"<{len(kept)}q", *(step for step, _ in kept)),
            struct.pack(f"<{len(kept)}d", *(value for _, value in kept)))


def due(upto_seq: int, mark: int) -> bool:
    """Whether a run whose preview covers ``upto_seq`` should be re-previewed at ``mark``:
    when the points after the preview are more than ``PREVIEW_POINTS`` and more than a
    quarter of those it covers."""
    tail = mark - upto_seq
    return tail > PREVIEW_POINTS and tail * 4 > upto_seq + 1


def encode(steps: np.ndarray, values: np.ndarray) -> tuple[bytes, bytes]:
    """Little-endian int64 steps and float64 values as bytes."""
    import numpy as np

    return (np.ascontiguousarray(steps, dtype="<i8").tobytes(),
            np.ascontiguousarray(values, dtype="<f8").tobytes())


def decode(steps: bytes, values: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Inverse of ``encode``; None for bytes that are not two arrays of one length."""
    import numpy as np

    if len(steps) % 8 or len(steps) != len(values):
        return None
    return (np.frombuffer(steps, dtype="<i8").astype(np.int64),
            np.frombuffer(values, dtype="<f8").astype(np.float64))
