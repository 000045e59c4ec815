"""JUnit XML (T46): valid against the junit-10 structure, re-parsable, counts = verdicts."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import xmlschema
from junitparser import Error, Failure, JUnitXml

from auditor.certify.verdict import Verdict, VerifyResult
from auditor.compare.difference import Difference
from auditor.report.junit import render_junit, xml_text

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"
NAMES = ("bitwise", "within_tolerance", "not_reproduced")


def load(name: str) -> VerifyResult:
    return VerifyResult.model_validate_json((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def results() -> list[VerifyResult]:
    could_not = load("bitwise").model_copy(update={"verdict": Verdict(
        level="could-not-verify", notes=["no docker engine answers\x00 <here>"])})
    return [*(load(n) for n in NAMES), could_not]


@pytest.fixture(scope="module")
def xml_text_out(results: list[VerifyResult]) -> str:
    return render_junit(results)


def test_validates_against_the_junit_schema(xml_text_out: str) -> None:
    schema = xmlschema.XMLSchema(FIXTURES / "junit.xsd")
    schema.validate(xml_text_out.encode("utf-8"))


def test_reparses_with_junitparser_and_counts_equal_the_verdicts(
        xml_text_out: str, results: list[VerifyResult]) -> None:
    suites = list(JUnitXml.fromstring(xml_text_out.encode("utf-8")))
    assert len(suites) == len(results)
    for suite, result in zip(suites, results, strict=True):
        cases = list(suite)
        verdict_case = next(c for c in cases if c.name == "verdict")
        failed = any(isinstance(r, Failure) for r in verdict_case.result)
        errored = any(isinstance(r, Error) for r in verdict_case.result)
        assert failed == (result.verdict.level == "not-reproduced")
        assert errored == (result.verdict.level == "could-not-verify")
        beyond = sum(not d.within_tolerance for ds in result.verdict.differences.values()
                     for d in ds)
        assert suite.tests == len(cases)
        assert suite.failures == failed + beyond
        assert suite.errors == errored
        assert suite.failures == sum(any(isinstance(r, Failure) for r in c.result) for c in cases)


def test_one_case_per_difference_and_a_passing_case_per_comparer(xml_text_out: str) -> None:
    suites = list(JUnitXml.fromstring(xml_text_out.encode("utf-8")))
    failed = suites[2]
    names = [c.name for c in failed]
    result = load("not_reproduced")
    for comparer, diffs in result.verdict.differences.items():
        assert f"{comparer}: identical" in names
        assert all(d.where in names for d in diffs)
    identical = [c for c in failed if c.name.endswith(": identical")]
    assert all(c.is_passed for c in identical)
    within = next(c for c in failed if c.name.endswith("{{ 7*7 }}"))
    assert within.is_passed


def test_totals_on_the_root(xml_text_out: str, results: list[VerifyResult]) -> None:
    root = ET.fromstring(xml_text_out)
    suites = root.findall("testsuite")
    for field in ("tests", "failures", "errors"):
        assert int(root.get(field, "-1")) == sum(int(s.get(field, "0")) for s in suites)
    assert root.get("skipped") is None  # not allowed on <testsuites> by junit-10


def test_hostile_text_is_escaped_and_xml_safe(xml_text_out: str) -> None:
    assert "<script>" not in xml_text_out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in xml_text_out
    assert "\x00" not in xml_text_out
    ET.fromstring(xml_text_out)  # well formed despite NUL and control characters


def test_failure_message_names_first_divergence_and_cause(xml_text_out: str) -> None:
    suites = list(JUnitXml.fromstring(xml_text_out.encode("utf-8")))
    verdict_case = next(c for c in suites[2] if c.name == "verdict")
    failure = verdict_case.result[0]
    assert "metrics/loss@step 0" in failure.message
    assert "PYTHONHASHSEED" in failure.message


def test_xml_text_replaces_forbidden_characters() -> None:
    assert xml_text("a\x00b\x1bc\td\ufffe") == "a?b?c\td?"


def test_empty_input_is_a_valid_document() -> None:
    text = render_junit([])
    xmlschema.XMLSchema(FIXTURES / "junit.xsd").validate(text.encode("utf-8"))
    assert ET.fromstring(text).get("tests") == "0"


def test_nested_details_reach_the_failure_text() -> None:
    inner = Difference(where="files/log:3", kind="text", left="a", right="b")
    outer = Difference(where="files/log", kind="text", details=(inner,), stats={"lines": 1})
    result = load("bitwise").model_copy(update={"verdict": Verdict(
        level="not-reproduced", differences={"files": [outer]})})
    text = render_junit([result])
    assert "files/log:3: text: a vs b" in text and "lines: 1" in text


@pytest.mark.parametrize("bad", [
    '<testsuites skipped="0"/>',
    '<testsuites><testsuite name="x"/></testsuites>',
    '<testsuites><testsuite tests="1"><testcase classname="c"/></testsuite></testsuites>',
])
def test_the_schema_has_teeth(bad: str) -> None:
    assert not xmlschema.XMLSchema(FIXTURES / "junit.xsd").is_valid(bad)
