"""Reports group what belongs together and show policy loosenings first (issues 8 and 10):
a run recorded outside its lockfile is one package line, not 97 rows, in every format; the
HTML names both runs and puts the curves before the long tables."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from rich.console import Console

from auditor.certify.decide import decide
from auditor.certify.verdict import VerifyResult
from auditor.compare import environment
from auditor.core.policy import Policy
from auditor.core.schema import Environment, LockRef
from auditor.report.grouping import cause_line, grouped
from auditor.report.html import render_html
from auditor.report.junit import render_junit
from auditor.report.markdown import render_markdown
from auditor.report.terminal import print_result
from tests.unit.test_verdict import PY, metric, record

LOOSE = Policy(ignore_outputs=("outputs/noise*",))


@pytest.fixture(scope="module")
def result() -> VerifyResult:
    installed = {f"pkg{i:02d}": "1.0" for i in range(95)} | {"numpy": "2.4.6", "torch": "2.12.0"}
    locked = {f"pkg{i:02d}": "2.0" for i in range(95)} | {"numpy": "2.2.6", "torch": "2.13.0"}
    lock = LockRef(artifact="lock/requirements.lock", sha256="b" * 64, origin="project",
                   drift=("numpy",))
    left = record(environment=Environment(python=PY.model_copy(
        update={"packages": installed, "lock": lock})))
    right = record(environment=Environment(python=PY.model_copy(update={"packages": locked})),
                   identity=left.identity.model_copy(update={"id": "01hyyyyyyyyyyyyyyyyyyyyyyy",
                                                             "name": "mlp-rerun"}))
    diffs = {"metrics": [metric("loss", 0, False)],
             "environment": environment.compare_records(left, right)}
    verdict = decide(diffs, left, right, LOOSE)
    return VerifyResult(original_run=left.identity.id, original_name="mlp-seeded",
                        rerun_run=right.identity.id, rerun_name="mlp-rerun", verdict=verdict,
                        started_at=datetime(2026, 12, 1, tzinfo=UTC),
                        metric_series={"original": {"loss": [(0, 1.0), (1, 0.5)]},
                                       "rerun": {"loss": [(0, 1.1), (1, 0.6)]}})


def test_the_verdict_has_one_package_cause_and_the_loosening(result: VerifyResult) -> None:
    packages = [c for c in result.verdict.causes if c.category == "packages"]
    assert len(packages) == 1
    assert cause_line(packages[0]).startswith(
        "97 packages (packages): 97 installed packages differ from the lockfile; top: "
        "numpy 2.4.6 → 2.2.6")
    assert result.verdict.loosenings[0].startswith("ignore_outputs: outputs matching")
    env = result.verdict.differences["environment"]
    assert len(env) == 97 and len(grouped(env)) == 1


def test_terminal_shows_the_loosening_first_and_one_package_line(result: VerifyResult) -> None:
    out = io.StringIO()
    print_result(result, out=Console(file=out, width=400, color_system=None))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("policy loosened") and "ignore_outputs" in lines[0]
    assert sum("packages" in line for line in lines) == 1
    assert any("mlp-rerun" in line for line in lines)


def test_markdown_shows_the_loosening_before_the_table(result: VerifyResult) -> None:
    text = render_markdown([result])
    assert text.index("Policy loosened") < text.index("| run |")
    assert "97 installed packages differ from the lockfile" in text
    assert "pkg01" not in text  # pkg00 is named in the top three; no rows of the others


def test_junit_has_the_loosening_as_the_first_property_and_one_package_case(
        result: VerifyResult) -> None:
    root = ET.fromstring(render_junit([result]))
    props = root.find("testsuite/properties")
    assert props is not None and props[0].get("name") == "policy_loosening"
    cases = [c.get("name") for c in root.iter("testcase")]
    assert "environment/packages" in cases
    assert not any(str(c).startswith("environment/packages/") for c in cases)
    failure = root.find("testsuite/testcase[@name='verdict']/failure")
    assert failure is not None and str(failure.text).startswith("policy loosened: ignore_outputs")


def test_html_names_the_runs_and_puts_curves_before_tables(result: VerifyResult) -> None:
    page = render_html(result)
    assert page.index('id="loosenings"') < page.index('id="runs"')
    assert "mlp-seeded" in page and "mlp-rerun" in page
    assert page.index('id="metrics"') < page.index('id="differences"')
    assert page.count("environment/packages/pkg") <= 25  # folded, a bounded list of details
    assert "97 installed packages differ" in page
