"""How progress is drawn: the ``Reporter`` a command hands its stages
(``auditor.core.progress``), chosen once by ``reporter_for``:

- on a terminal, ``TerminalReporter``: each line dim on stderr as before; a running stage
  starts with ``… stage`` and ends with ``✓ stage (12.3 s)``; a counter is a
  rich progress bar (done/total, bytes, the current item, the time left: for the rerun's
  ``step 120/200`` the original run's duration per step);
- elsewhere (CI logs), ``PlainReporter``: each line once, and one line per stage with its
  time when it ends (``building the image: 52.1 s``) — no bars, no carriage returns;
- under ``-q``, a silent ``Reporter``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from auditor.core.progress import Counter, Reporter


def reporter_for(*, quiet: bool, stream: IO[str] | None = None) -> Reporter:
    """The reporter for a command's stderr (``stream``: default ``sys.stderr``)."""
    if quiet:
        return Reporter()
    out = stream or sys.stderr
    return TerminalReporter(out) if _is_terminal(out) else PlainReporter(out)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainReporter(Reporter):
    """One line each, one line per finished stage with its time: for logs."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(self._write)
        self._stream = stream

    def _write(self, line: str) -> None:
        print(f"· {line}", file=self._stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self._write(f"{name}: failed after {time.monotonic() - started:.1f} s")
            raise
        self._write(f"{name}: {time.monotonic() - started:.1f} s")

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        return _SummaryCounter(self._write, label, total, unit)


class _SummaryCounter(Counter):
    """Counts silently; one line when closed (for logs)."""

    def __init__(self, write: Any, label: str, total: int, unit: str) -> None:
        self._write, self._label, self._total, self._unit = write, label, total, unit
        self._done, self._bytes, self._closed = 0, 0, False

    def advance(self, *, current: str = "", nbytes: int = 0, steps: int = 1) -> None:
        self._done += steps
        self._bytes += nbytes

    def update(self, *, done: int, current: str = "") -> None:
        self._done = done

    def close(self) -> None:
        if self._closed or not self._done:
            return
        self._closed = True
        size = f", {_mb(self._bytes)}" if self._bytes else ""
        self._write(f"{self._label}: {self._done}/{self._total} {self._unit}{size}")


class TerminalReporter(Reporter):
    """Dim lines, spinners for stages and rich progress bars for counters."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console

        self._console = Console(file=stream, highlight=False, soft_wrap=True,
                                no_color=bool(os.environ.get("NO_COLOR")) or None)
        super().__init__(lambda line: self._console.print(f"[dim]·[/] {line}", markup=True))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self._console.print(f"[dim]…[/] {name}")  # no spinner: stages nest, live views may not
        try:
            yield
        except BaseException:
            self._console.print(f"[red]✗[/] {name} ({time.monotonic() - started:.1f} s)")
            raise
        self._console.print(f"[green]✓[/] {name} ({time.monotonic() - started:.1f} s)")

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        return _BarCounter(self._console, label, total, total_bytes, unit, eta_s)


class _BarCounter(Counter):
    """A rich progress bar: done/total, bytes, the current item, time left."""

    def __init__(self, console: Any, label: str, total: int, total_bytes: int, unit: str,
                 eta_s: float | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bytes_total, self._bytes, self._unit = total_bytes, 0, unit
        self._total, self._eta_s = total, eta_s
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[size]}"), TimeElapsedColumn(),
            *([] if eta_s else [TimeRemainingColumn()]), TextColumn("{task.fields[current]}"),
            console=console, transient=False)
        self._task = self._progress.add_task(label, total=total or None, size="", current="")
        self._progress.start()

    def advance(self, *, current: str = "", nbytes: int = 0, steps: int = 1) -> None:
        self._bytes += nbytes
        size = _mb(self._bytes) + (f"/{_mb(self._bytes_total)}" if self._bytes_total else "")
        self._progress.update(self._task, advance=steps, current=current,
                              size=size if self._bytes else "")

    def update(self, *, done: int, current: str = "") -> None:
        self._progress.update(self._task, completed=done, current=current,
                              size=self._eta(done))

    def _eta(self, done: int) -> str:
        """Time left as the original run took it (its duration over its steps)."""
        if not self._eta_s or not self._total:
            return ""
        left = self._eta_s * max(0, self._total - done) / self._total
        return f"ETA {left:.0f} s"

    def close(self) -> None:
        self._progress.stop()


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"
