"""JUnit XML of verifications, so any CI shows a run that did not reproduce as a failure.

Contract (the Jenkins ``junit-10.xsd`` dialect every CI reads):

- ``<testsuites>`` holds one ``<testsuite>`` per verified run, named
  ``"<run name> (<run id>)"``, with ``<properties>``: first one ``policy_loosening`` per
  way the policy loosened the comparison (``loosen.shown_loosenings``), one ``log_note``
  per note of the default ``compare_logs = "informational"`` (logs that differed without
  counting: the default policy, not a loosening), then both run ids, the verdict, the
  first divergence and the certificate. The verdict testcase's text starts with the same
  loosenings and notes.
- Each suite has a testcase ``verdict`` that fails for ``not-reproduced`` and errors for
  ``could-not-verify``; one testcase per difference a comparer reported (failing when
  beyond tolerance, passing when within); and one passing testcase per comparer for what
  it found identical; many package changes are one testcase (``grouping.grouped``); a
  spot-check or resume check has one testcase per replayed segment instead of its
  segments' comparer cases (``auditor.segments``, failing when it did not reach its
  checkpoint). So
  failures per suite = 1 + differences beyond tolerance when the verdict failed, and 0
  when it reproduced.
- ``tests``/``failures``/``errors``/``skipped``/``time`` are filled on every suite and
  summed on the root. Text goes through ElementTree (escaped); characters XML 1.0
  forbids (NUL, most control characters) are replaced with ``?`` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from xml.etree import ElementTree as ET

from auditor.certify.loosen import log_notes, shown_loosenings
from auditor.certify.verdict import VerifyResult
from auditor.compare.difference import Difference
from auditor.report.grouping import check_line, grouped, segment_label

_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_TEXT = 4000


def xml_text(value: object) -> str:
    """``value`` as text XML 1.0 can hold."""
    text = _XML_FORBIDDEN.sub("?", str(value))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def render_junit(results: Sequence[VerifyResult]) -> str:
    """The JUnit XML document for ``results``."""
    root = ET.Element("testsuites", name="auditor")
    suites = [testsuite(result) for result in results]
    root.extend(suites)
    for field in ("tests", "failures", "errors"):
        root.set(field, str(sum(int(s.get(field, "0")) for s in suites)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in suites):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def testsuite(result: VerifyResult) -> ET.Element:
    """One run's suite: properties, the verdict testcase, then each comparer's cases."""
    suite = ET.Element("testsuite", name=xml_text(f"{result.original_name} "
                                                   f"({result.original_run})"))
    suite.append(_properties(result))
    cases = [_verdict_case(result), *_segment_cases(result), *_comparer_cases(result)]
    suite.extend(cases)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", "0")
    suite.set("time", f"{result.seconds.get('total', sum(result.seconds.values())):.3f}")
    suite.set("timestamp", result.started_at.replace(microsecond=0).isoformat())
    return suite


def _properties(result: VerifyResult) -> ET.Element:
    props = ET.Element("properties")
    for line in shown_loosenings(result.verdict):
        ET.SubElement(props, "property", name="policy_loosening", value=xml_text(line))
    for line in log_notes(result.verdict):
        ET.SubElement(props, "property", name="log_note", value=xml_text(line))
    values = {"original_run": result.original_run, "rerun_run": result.rerun_run,
              "verdict": result.verdict.level,
              "first_divergence": result.verdict.first_divergence,
              "check": check_line(result),
              "certificate": result.certificate_path,
              "certificate_sha256": result.certificate_sha256}
    for name, value in values.items():
        if value is not None:
            ET.SubElement(props, "property", name=name, value=xml_text(value))
    return props


def _case(classname: str, name: str, seconds: float = 0.0) -> ET.Element:
    return ET.Element("testcase", classname=xml_text(classname), name=xml_text(name),
                      time=f"{seconds:.3f}")


def _verdict_case(result: VerifyResult) -> ET.Element:
    verdict = result.verdict
    case = _case("auditor.verdict", "verdict", result.seconds.get("total", 0.0))
    if verdict.level == "not-reproduced":
        where = verdict.first_divergence or "unknown"
        cause = f"; likely cause: {verdict.causes[0].what}" if verdict.causes else ""
        failure = ET.SubElement(case, "failure", type="not-reproduced",
                                message=xml_text(f"not reproduced: first divergence at "
                                                 f"{where}{cause}"))
        failure.text = xml_text("\n".join([*_loosened(result), *_cause_lines(result)]))
    elif verdict.level == "could-not-verify":
        message = verdict.notes[-1] if verdict.notes else "the environment could not be rebuilt"
        error = ET.SubElement(case, "error", type="could-not-verify", message=xml_text(message))
        error.text = xml_text("\n".join(_loosened(result))) or None
    else:
        _system_out(case, "\n".join([*_loosened(result),
                                     f"{verdict.level}: {_summary_text(result)}"]))
    return case


def _loosened(result: VerifyResult) -> list[str]:
    return [*(f"policy loosened: {line}" for line in shown_loosenings(result.verdict)),
            *(f"logs: {line}" for line in log_notes(result.verdict))]


def _cause_lines(result: VerifyResult) -> Iterator[str]:
    for cause in result.verdict.causes:
        yield (f"{cause.score:.2f} {cause.category}/{cause.what}: {cause.left} -> "
               f"{cause.right} {cause.explanation}".rstrip())


def _summary_text(result: VerifyResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.verdict.summary.items()) or "no counts"


def _segment_cases(result: VerifyResult) -> Iterator[ET.Element]:
    """One testcase per replayed segment: failing when it did not reach its checkpoint."""
    for seg in result.segments:
        name = f"{segment_label(seg)}: steps {seg.start} -> {seg.end}"
        case = _case("auditor.segments", name, seg.seconds)
        if seg.level == "not-reproduced":
            failure = ET.SubElement(case, "failure", type="not-reproduced", message=xml_text(
                f"not reproduced: first difference at {seg.first_difference or 'unknown'}"))
            failure.text = xml_text("\n".join(
                f"{d.where}: {d.kind}: {d.left} vs {d.right}" for d in seg.differences[:50]))
        else:
            _system_out(case, f"{seg.level}: replayed steps {seg.start} -> {seg.end}")
        yield case


def _comparer_cases(result: VerifyResult) -> Iterator[ET.Element]:
    for comparer, diffs in result.verdict.differences.items():
        if comparer.startswith("segment"):  # one testcase per segment says it
            continue
        classname = f"auditor.{comparer}"
        for diff in grouped(diffs):
            yield _difference_case(classname, diff)
        identical = _case(classname, f"{comparer}: identical")
        _system_out(identical, f"everything else {comparer} compared was identical")
        yield identical


def _difference_case(classname: str, diff: Difference) -> ET.Element:
    case = _case(classname, diff.where)
    sides = f"{diff.left} vs {diff.right}" if diff.left or diff.right else "values differ"
    detail = "\n".join(_detail_lines(diff))
    if diff.within_tolerance:
        _system_out(case, f"within tolerance: {diff.kind}: {sides}\n{detail}".rstrip())
    else:
        failure = ET.SubElement(case, "failure", type=diff.kind,
                                message=xml_text(f"{diff.kind}: {sides}"))
        failure.text = xml_text(detail)
    return case


def _detail_lines(diff: Difference, depth: int = 0) -> Iterator[str]:
    pad = "  " * depth
    if diff.magnitude is not None:
        yield f"{pad}magnitude {diff.magnitude:.6g}"
    for key, value in sorted(diff.stats.items()):
        yield f"{pad}{key}: {value}"
    yield from (f"{pad}{comment}" for comment in diff.comments)
    for child in diff.details:
        yield f"{pad}{child.where}: {child.kind}: {child.left} vs {child.right}"
        yield from _detail_lines(child, depth + 1)


def _system_out(case: ET.Element, text: str) -> None:
    ET.SubElement(case, "system-out").text = xml_text(text)
