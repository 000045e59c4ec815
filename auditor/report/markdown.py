"""Markdown summary of many verifications, for ``$GITHUB_STEP_SUMMARY`` and PR comments.

Contract:

- ``render_markdown(results)`` returns a heading, one line of counts per verdict, then
  first of all every policy loosening of each result (``loosen.shown_loosenings``: ignored
  outputs, wider tolerances, logs left out; never the default policy's own settings), then
  a table (run, name, verdict, first divergence, top cause) with the failures first, then
  for each spot-check or resume check what it replayed and one row per segment (segment,
  replayed steps, verdict, first difference), then the likely causes of the first
  failures while room remains.
- Every cell is escaped: ``|`` cannot split a cell, newlines cannot end a row, and
  Markdown/HTML punctuation (``* _ [ ] < > ` $ @ ~ & # !``) is backslash-escaped so a
  run name cannot format, link, mention, inject HTML or start math. Cells are cut to
  ``MAX_CELL`` characters.
- The output never exceeds ``limit_bytes`` UTF-8 bytes (default 900 KiB: GitHub aborts a
  step summary over 1 MiB). Rows that do not fit are dropped whole and a truncation note
  says how many results are not shown and where the full reports are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from auditor.certify.loosen import shown_loosenings
from auditor.certify.verdict import LEVEL_RANK, Cause, VerifyResult
from auditor.report.grouping import SEGMENT_HEADER, cause_line, check_line, segment_rows

DEFAULT_LIMIT = 900 * 1024
MAX_CELL = 160
MAX_CAUSE_SECTIONS = 20
MAX_LOOSENINGS = 50
HEADER = ("run", "name", "verdict", "first divergence", "top cause")
VERDICT_TEXT = {
    "reproduced-bitwise": "✅ reproduced (bitwise)",
    "reproduced-within-tolerance": "✅ reproduced (within tolerance)",
    "not-reproduced": "❌ not reproduced",
    "could-not-verify": "⚠️ could not verify",
}
_NOTE_RESERVE = 400  # bytes kept free for the truncation note
_SPECIAL = re.compile(r"([\\`*_\[\]<>|$@~&#!])")
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def escape_cell(text: str, limit: int = MAX_CELL) -> str:
    """``text`` as one inert Markdown table cell."""
    flat = _CONTROL.sub("", _BREAKS.sub(" ", text)).strip()
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return _SPECIAL.sub(r"\\\1", flat)


def render_markdown(results: Sequence[VerifyResult], *, limit_bytes: int = DEFAULT_LIMIT) -> str:
    """The summary of ``results``, at most ``limit_bytes`` bytes long."""
    ordered = sorted(results, key=lambda r: (LEVEL_RANK[r.verdict.level], r.verdict.level))
    budget = _Budget(limit_bytes - _NOTE_RESERVE)
    budget.add_all(_heading(results))
    shown = sum(1 for row in map(table_row, ordered) if budget.add(row))
    budget.add("")
    if shown == len(ordered):
        _add_segments(budget, ordered)
        _add_causes(budget, ordered)
    if shown < len(ordered):  # room for these two lines was reserved
        budget.lines += ["", truncation_note(len(ordered) - shown, len(ordered))]
    return "\n".join(budget.lines) + "\n"


class _Budget:
    """Lines collected while their UTF-8 size stays within a byte limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.lines = limit, 0, list[str]()
        self.full = False

    def add(self, line: str) -> bool:
        size = len(line.encode("utf-8")) + 1
        if self.full or self.used + size > self.limit:
            self.full = True
            return False
        self.lines.append(line)
        self.used += size
        return True

    def add_all(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.add(line)


def _heading(results: Sequence[VerifyResult]) -> list[str]:
    counts = {level: 0 for level in VERDICT_TEXT}
    for result in results:
        counts[result.verdict.level] += 1
    tally = " · ".join(f"{VERDICT_TEXT[level]}: {n}" for level, n in counts.items() if n)
    return [f"## auditor: {len(results)} run{'s' if len(results) != 1 else ''} verified", "",
            tally or "nothing verified", "", *_loosenings(results), _row(HEADER),
            _row(("---",) * len(HEADER))]


def _loosenings(results: Sequence[VerifyResult]) -> list[str]:
    """The policy loosenings of every result, before anything else is shown."""
    lines = [f"> ⚠️ **Policy loosened** for {escape_cell(r.original_name)} "
             f"(`{r.original_run}`): {escape_cell(line, 400)}"
             for r in results for line in shown_loosenings(r.verdict)]
    return [*(f"{line}  " for line in lines[:MAX_LOOSENINGS]),
            *([f"> … and {len(lines) - MAX_LOOSENINGS} more"]
              if len(lines) > MAX_LOOSENINGS else []),
            *([""] if lines else [])]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_row(result: VerifyResult) -> str:
    """One summary row; every cell escaped."""
    verdict = result.verdict
    cause = cause_line(verdict.causes[0]) if verdict.causes else ""
    return _row((f"`{result.original_run}`", escape_cell(result.original_name),
                 VERDICT_TEXT[verdict.level], escape_cell(verdict.first_divergence or ""),
                 escape_cell(cause)))


def _add_segments(budget: _Budget, ordered: Sequence[VerifyResult]) -> None:
    """Each partial check: what it replayed, then one row per segment."""
    for result in ordered:
        line = check_line(result)
        if line is None:
            continue
        lines = [f"### Segments: {escape_cell(result.original_name)} "
                 f"(`{result.original_run}`)", "", escape_cell(line, 400), "",
                 _row(SEGMENT_HEADER), _row(("---",) * len(SEGMENT_HEADER)),
                 *(_row(tuple(escape_cell(c) for c in row)) for row in segment_rows(result))]
        if result.spot_check and result.spot_check.restored:
            lines += ["", *(f"- restored state: {escape_cell(r, 300)}"
                            for r in result.spot_check.restored)]
        if not all(budget.add(line) for line in [*lines, ""]):
            return


def _add_causes(budget: _Budget, ordered: Sequence[VerifyResult]) -> None:
    failing = [r for r in ordered if r.verdict.causes and LEVEL_RANK[r.verdict.level] == 0]
    for result in failing[:MAX_CAUSE_SECTIONS]:
        lines = [f"### Likely causes: {escape_cell(result.original_name)} "
                 f"(`{result.original_run}`)", ""]
        lines += [f"{i}. {escape_cell(_cause_text(c), 300)}"
                  for i, c in enumerate(result.verdict.causes[:5], 1)]
        if not all(budget.add(line) for line in [*lines, ""]):
            return


def _cause_text(cause: Cause) -> str:
    why = f" — {cause.explanation}" if cause.explanation else ""
    return f"{cause.what} ({cause.category}){_sides(cause)}{why}"


def _sides(cause: Cause) -> str:
    return f": {cause.left} → {cause.right}" if (cause.left, cause.right) != (None, None) else ""


def truncation_note(hidden: int, total: int) -> str:
    """The line that says rows were left out to stay under the summary limit."""
    return (f"> **Truncated:** {hidden} of {total} results are not shown to keep this "
            "summary under the job-summary size limit; the full results are in the "
            "uploaded reports (`junit.xml`, HTML).")
