"""Report noise (issue 18 item 8): the default policy's own log setting is never shown as
"policy loosened" (a real loosening still is); the compared counts are words, not the JSON
keys; a bitwise report names its environment changes near the top. Real verdicts from
``decide``, rendered by every human-readable format."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from auditor.certify.decide import decide
from auditor.certify.verdict import VerifyResult
from auditor.compare import environment
from auditor.compare.difference import Difference
from auditor.core.policy import Policy
from auditor.core.schema import Environment, Seeds
from auditor.report.grouping import environment_line
from auditor.report.html import render_html
from auditor.report.junit import render_junit
from auditor.report.markdown import render_markdown
from auditor.report.terminal import print_result
from tests.unit.test_verdict import PY, metric, record

LOG = Difference(where="files/logs/stdout.txt", kind="text", left="loss 0.5", right="loss 0.6",
                 stats={"informational": True, "first_line": 3})


def result_of(left: Any, right: Any, diffs: dict[str, list[Difference]],
              policy: Policy | None = None) -> VerifyResult:
    found = {**diffs, "environment": environment.compare_records(left, right)}
    verdict = decide(found, left, right, policy or Policy())
    return VerifyResult(original_run=left.identity.id, original_name="mlp", rerun_run="01hrerun",
                        rerun_name="mlp-rerun", verdict=verdict,
                        started_at=datetime(2026, 12, 1, tzinfo=UTC))


def terminal(result: VerifyResult) -> str:
    out = io.StringIO()
    print_result(result, out=Console(file=out, width=400, color_system=None))
    return out.getvalue()


def failing_with_log_note(policy: Policy | None = None) -> VerifyResult:
    left = record()
    return result_of(left, record(), {"metrics": [metric("loss", 0, False)], "files": [LOG]},
                     policy)


def test_the_default_log_setting_is_a_note_not_a_loosening_in_every_format() -> None:
    result = failing_with_log_note()
    assert result.verdict.loosenings[0].startswith('compare_logs = "informational"')  # kept
    text = terminal(result)
    assert "policy loosened" not in text
    assert "logs" in text and "1 log file(s) differ and were not counted" in text
    page = render_html(result)
    assert 'id="loosenings"' not in page and "Policy loosened" not in page
    assert "1 log file(s) differ and were not counted" in page
    assert "Policy loosened" not in render_markdown([result])
    root = ET.fromstring(render_junit([result]))
    names = [p.get("name") for p in root.iter("property")]
    assert "policy_loosening" not in names and "log_note" in names
    failure = root.find("testsuite/testcase[@name='verdict']/failure")
    assert failure is not None and "policy loosened" not in str(failure.text)


def test_a_real_loosening_is_still_shown_beside_the_log_note() -> None:
    result = failing_with_log_note(Policy(ignore_outputs=("outputs/noise*",)))
    lines = terminal(result).splitlines()
    assert lines[0].startswith("policy loosened") and "ignore_outputs" in lines[0]
    assert not any("policy loosened" in line and "compare_logs" in line for line in lines)
    assert render_markdown([result]).count("Policy loosened") == 1
    page = render_html(result)
    assert 'id="loosenings"' in page and "ignore_outputs" in page
    root = ET.fromstring(render_junit([result]))
    assert [p.get("name") for p in root.iter("property")][:2] == ["policy_loosening",
                                                                  "log_note"]


def test_the_compared_counts_are_words_not_json_keys() -> None:
    result = failing_with_log_note()
    assert "compared_metrics" in result.verdict.summary  # the JSON keeps its keys
    text = terminal(result)
    compared = next(line for line in text.splitlines() if line.startswith("compared"))
    assert "2 metrics compared · 1 file compared" in compared
    assert "1 difference beyond tolerance" in compared and "1 difference not counted" in compared
    assert "_" not in compared  # no snake_case key left
    assert "compared_logs" not in render_html(result)
    page = render_html(result)
    summary = page[page.index('id="summary"'):page.index('id="timings"')]
    assert "metrics compared" in summary and "beyond_tolerance" not in summary


def test_a_bitwise_report_names_its_environment_changes_near_the_top() -> None:
    left = record(environment=Environment(python=PY), seeds=Seeds(seed=1, pythonhashseed="0"))
    newer = PY.model_copy(update={"version": "3.11.9",
                                  "packages": {**PY.packages, "numpy": "2.0.0"}})
    right = record(environment=Environment(python=newer, env_vars={"TRAIN_LR": "0.1"}),
                   seeds=Seeds(seed=1, pythonhashseed="0"))
    result = result_of(left, right, {"metrics": []})
    assert result.verdict.level == "reproduced-bitwise" and not result.verdict.causes
    lines = terminal(result).splitlines()
    env = next(i for i, line in enumerate(lines) if line.startswith("environment"))
    assert lines[env].split(None, 1)[1].strip() == (
        "3 changes (python 3.11.7 → 3.11.9, numpy 1.26.4 → 2.0.0, TRAIN_LR (none) → 0.1)")
    assert env <= 5  # among the first rows: verdict, runs, counts, then this
    page = render_html(result)
    assert page.index("python 3.11.7 → 3.11.9") < page.index('id="runs"')
    many = [*result.verdict.differences["environment"],
            Difference(where="environment/os/kernel", kind="changed", left="6.1", right="6.8")]
    assert environment_line(many) == ("4 changes (python 3.11.7 → 3.11.9, numpy 1.26.4 → "
                                      "2.0.0, kernel 6.1 → 6.8, …)")


def test_a_report_with_causes_does_not_repeat_the_environment_line() -> None:
    left = record()
    right = record(environment=Environment(python=PY.model_copy(update={"version": "3.12.1"})))
    result = result_of(left, right, {"metrics": [metric("loss", 0, False)]})
    assert result.verdict.causes
    assert not any(line.startswith("environment") for line in terminal(result).splitlines())
