"""The Markdown summary: escaping (T44) and the job-summary size cap (T45)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from auditor.certify.verdict import Cause, Verdict, VerifyResult
from auditor.report.markdown import DEFAULT_LIMIT, escape_cell, render_markdown, table_row

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"


def load(name: str) -> VerifyResult:
    return VerifyResult.model_validate_json((FIXTURES / f"{name}.json").read_text())


def unescaped_pipes(line: str) -> int:
    count, escaped = 0, False
    for char in line:
        if char == "|" and not escaped:
            count += 1
        escaped = char == "\\" and not escaped
    return count


def test_pipes_and_newlines_cannot_break_the_table() -> None:
    row = table_row(load("not_reproduced"))
    assert "\n" not in row
    assert unescaped_pipes(row) == 6  # five cells
    assert r"\<b\>mlp\</b\> \| nightly \`x\` \*y\* \@team \#12" in row


def test_hostile_strings_are_inert() -> None:
    text = render_markdown([load("not_reproduced")])
    assert re.search(r"(?<!\\)[<>]", text) is None  # every angle bracket escaped
    assert r"\<img src=x onerror=alert(1)\>" in text


@given(st.text(max_size=300))
def test_any_cell_stays_one_cell(value: str) -> None:
    cell = escape_cell(value)
    assert "\n" not in cell and "\r" not in cell
    assert unescaped_pipes(cell) == 0
    assert len(cell) <= 2 * 160


def test_summary_counts_and_failures_first() -> None:
    results = [load("bitwise"), load("not_reproduced"), load("within_tolerance")]
    text = render_markdown(results)
    assert "## auditor: 3 runs verified" in text
    assert "❌ not reproduced: 1" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert "not reproduced" in rows[0] and "bitwise" in rows[-1]
    assert "### Likely causes" in text and "Truncated" not in text


def many_results(n: int, name_size: int) -> list[VerifyResult]:
    base = load("not_reproduced")
    cause = Cause(category="seed", what="PYTHONHASHSEED" * 4, left="0", right="random")
    return [base.model_copy(update={
        "original_name": f"run-{i}-" + "|x" * name_size,
        "verdict": Verdict(level="not-reproduced", first_divergence=f"metrics/loss@step {i}",
                           causes=[cause])}) for i in range(n)]


def test_5000_results_stay_under_900_kib_with_a_note() -> None:
    results = many_results(5000, 200)
    text = render_markdown(results)
    assert len(text.encode("utf-8")) <= DEFAULT_LIMIT
    assert "**Truncated:**" in text
    shown = sum(1 for line in text.splitlines() if line.startswith("| `"))
    assert f"{5000 - shown} of 5000 results are not shown" in text
    assert 500 < shown < 5000


def test_5000_short_results_fit_without_truncation() -> None:
    text = render_markdown(many_results(5000, 0))
    assert len(text.encode("utf-8")) <= DEFAULT_LIMIT
    assert "Truncated" not in text
    assert sum(1 for line in text.splitlines() if line.startswith("| `")) == 5000


def test_small_limit_is_honoured_in_bytes() -> None:
    results = many_results(300, 5)
    for limit in (2_000, 10_000, 50_000):
        text = render_markdown(results, limit_bytes=limit)
        assert len(text.encode("utf-8")) <= limit
        assert "**Truncated:**" in text
