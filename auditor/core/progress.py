"""Progress any stage may report, without knowing how it is shown.

A stage is handed a ``say`` callable (one line each). When that callable is a
``Reporter`` it can also time a stage (``stage(say, name)``) and count items with bytes
and the current one (``counter(say, ...)``); with a plain callable both are silent, so
stages and tests that pass ``print`` or a lambda keep working. How a reporter draws (a
rich progress bar on a terminal, one line per stage in CI logs, nothing under ``-q``) is
``auditor.report.progress``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

Say = Callable[[str], None]


class Counter:
    """Items done of a known total (packages, steps); this base draws nothing."""

    def advance(self, *, current: str = "", nbytes: int = 0, steps: int = 1) -> None:
        """``steps`` more items done (``current`` names the latest, ``nbytes`` its size)."""

    def update(self, *, done: int, current: str = "") -> None:
        """Set the count of items done (a step counter read from a stream)."""

    def close(self) -> None:
        """The count is over (also when it stopped early)."""


class Reporter:
    """A ``say`` callable that can also time stages and show counters; this base prints
    lines through ``line_sink`` (none: silent) and draws no stages or counters."""

    def __init__(self, line_sink: Say | None = None) -> None:
        self._line_sink = line_sink

    def __call__(self, line: str) -> None:
        if self._line_sink is not None:
            self._line_sink(line)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time ``name`` (a drawing reporter shows it running and its seconds after)."""
        yield

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        """A counter of ``total`` items (``total_bytes`` when known; ``eta_s``: the
        expected seconds for all of them, e.g. the original run's duration)."""
        return Counter()


def stage(say: Say, name: str) -> AbstractContextManager[None]:
    """``say.stage(name)`` when ``say`` is a ``Reporter``, else nothing."""
    return say.stage(name) if isinstance(say, Reporter) else contextlib.nullcontext()


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str, say: Say, label: str) -> Iterator[None]:
    """``stage(say, label)``, its wall time kept in ``timings[key]`` (also when it fails)."""
    start = time.monotonic()
    try:
        with stage(say, label):
            yield
    finally:
        timings[key] = time.monotonic() - start


def counter(say: Say, label: str, total: int, total_bytes: int = 0, *,
            unit: str = "packages", eta_s: float | None = None) -> Counter:
    """``say.counter(...)`` when ``say`` is a ``Reporter``, else a silent counter."""
    if isinstance(say, Reporter):
        return say.counter(label, total, total_bytes, unit=unit, eta_s=eta_s)
    return Counter()


def metric_steps(shown: Counter) -> Callable[[int, str], None]:
    """A stdout-line feed that counts the metric lines (JSON objects, one per step) a
    training prints, as steps of ``shown``."""
    seen = [0]

    def feed(_lineno: int, line: str) -> None:
        text = line.strip()
        if text.startswith('{"') and text.endswith("}"):
            seen[0] += 1
            shown.update(done=seen[0])

    return feed


def tee(*feeds: Callable[[int, str], None]) -> Callable[[int, str], None]:
    """One stdout-line feed that passes each line to every feed, in order."""

    def feed(lineno: int, line: str) -> None:
        for one in feeds:
            one(lineno, line)

    return feed
