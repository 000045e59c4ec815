"""The five-second terminal summary of a verification, with rich.

Contract:

- ``print_result(result)`` prints one compact table: first each way the policy loosened
  the comparison (``loosen.shown_loosenings``: ignored outputs, wider tolerances, logs
  left out; never the default policy's own settings), then the verdict (coloured by level)
  and exit code, both runs (id and name), compared counts in words, logs that differed
  without counting (the default policy's note), the environment changes by name when no
  likely cause names them (a bitwise verdict), the first divergence, the top three likely
  causes, the certificate and the time per stage. A spot-check or resume check adds what it
  replayed (``grouping.check_line``), one row per segment and the restored-state
  differences. ``print_summary(results)`` prints one row per
  verification (``audit verify --all``).
- Output goes through ``auditor.report.records.console``: no ANSI escapes when stdout is not a
  terminal (CI logs, pipes), no colour when ``NO_COLOR`` is set.
- User strings (names, causes, paths) are passed as ``rich.text.Text``, never parsed as
  rich markup, so ``[red]`` or ``[/]`` in a run name prints literally and cannot raise.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.certify.loosen import log_notes, shown_loosenings
from auditor.certify.verdict import Cause, VerifyResult
from auditor.report.grouping import (
    cause_line,
    check_line,
    counts_text,
    environment_line,
    segment_rows,
)
from auditor.report.records import console

LEVEL_STYLE = {"reproduced-bitwise": "bold green", "reproduced-within-tolerance": "bold cyan",
               "not-reproduced": "bold red", "could-not-verify": "bold yellow"}
TOP_CAUSES = 3


def print_result(result: VerifyResult, *, out: Console | None = None) -> None:
    """The summary of one verification."""
    out = out or console()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for label, value in result_rows(result):
        table.add_row(label, value)
    out.print(table)


def result_rows(result: VerifyResult) -> list[tuple[str, Text]]:
    """(label, value) rows of the summary; values are plain ``Text``."""
    verdict = result.verdict
    rows = [("policy loosened" if i == 0 else "", Text(line, style="yellow"))
            for i, line in enumerate(shown_loosenings(verdict))]
    rows += [("verdict", verdict_text(result)),
             ("original", Text(f"{result.original_run}  {result.original_name}")),
             ("rerun", Text(f"{result.rerun_run}  {result.rerun_name or ''}".rstrip()
                            if result.rerun_run else "(none)")),
             ("compared", Text(counts_text(verdict.summary)))]
    checked = check_line(result)
    if checked:
        rows.append(("check", Text(checked)))
    for i, (label, steps, level, first) in enumerate(segment_rows(result)):
        shown = f"{label}: steps {steps}  {level}" + (f"  first difference {first}"
                                                      if first != "-" else "")
        rows.append(("segments" if i == 0 else "",
                     Text(shown, style=LEVEL_STYLE.get(level, ""))))
    if result.spot_check is not None:
        rows += [("restored state" if i == 0 else "", Text(line, style="yellow"))
                 for i, line in enumerate(result.spot_check.restored)]
    rows += [("logs" if i == 0 else "", Text(line)) for i, line in enumerate(log_notes(verdict))]
    changes = environment_line(verdict.differences.get("environment", []))
    if changes and not verdict.causes:
        rows.append(("environment", Text(changes)))
    if verdict.first_divergence:
        rows.append(("first divergence", Text(verdict.first_divergence)))
    for index, cause in enumerate(verdict.causes[:TOP_CAUSES], 1):
        rows.append(("likely causes" if index == 1 else "", Text(f"{index}. {cause_text(cause)}")))
    if result.certificate_path:
        rows.append(("certificate", Text(result.certificate_path)))
    if result.seconds:
        rows.append(("time", Text(" · ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))))
    return rows


def verdict_text(result: VerifyResult) -> Text:
    """The verdict and its exit code, styled by level."""
    level = result.verdict.level
    return Text(f"{level} (exit {result.verdict.exit_code})", style=LEVEL_STYLE[level])


def cause_text(cause: Cause) -> str:
    """``PYTHONHASHSEED (seed): 0 → random`` (``grouping.cause_line``)."""
    return cause_line(cause)


def print_summary(results: Sequence[VerifyResult], *, out: Console | None = None) -> None:
    """One row per verification: run, name, verdict, first divergence, top cause."""
    out = out or console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("run", "name", "verdict", "first divergence", "top cause"):
        table.add_column(column, no_wrap=column in ("run", "verdict"))
    for result in results:
        causes = result.verdict.causes
        table.add_row(Text(result.original_run), Text(result.original_name),
                      verdict_text(result), Text(result.verdict.first_divergence or "-"),
                      Text(cause_text(causes[0]) if causes else "-"))
    out.print(table)
