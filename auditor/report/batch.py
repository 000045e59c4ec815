"""One batch of verifications (``store/batches.py``) as one report, whatever ran it.

Contract:

- ``batch_rows(batch)`` gives one row per run: run, shard, state, verdict badge, where it
  ran (node, GPU), how long, reports; what ``audit batch show`` prints and the dashboard
  shows. Text from the store is escaped for a terminal by the caller.
- ``render_batch_junit(batch, results)``: the JUnit of every verified run (``report.junit``'s
  suites, so a shard's and the aggregate's testcases match), plus one suite per run that
  could not be verified (an ``error`` testcase with the message) and none for skipped runs
  (counted in the root's ``skipped``). One file for a whole sharded CI matrix.
- ``render_batch_markdown(batch, results)``: the counts and the rows above, then
  ``report.markdown``'s summary of the verified runs; bounded like it.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from auditor.certify.verdict import VerifyResult
from auditor.report.junit import testsuite, xml_text
from auditor.report.markdown import VERDICT_TEXT, escape_cell, render_markdown
from auditor.store.batches import Batch, BatchItem

BADGES = {**VERDICT_TEXT, "bad-input": "⚠️ bad input"}
STATE_TEXT = {"pending": "⏳ pending", "running": "🔄 running", "skipped": "⏭ skipped"}
ROW_HEADER = ("run", "shard", "verdict", "node", "gpu", "seconds", "reports")


def badge(item: BatchItem) -> str:
    """The item's verdict badge, or its state while it has none."""
    if item.state == "skipped":
        return STATE_TEXT["skipped"] + (f" ({item.message})" if item.message else "")
    if item.verdict:
        return BADGES.get(item.verdict, item.verdict)
    return STATE_TEXT.get(item.state, item.state)


def batch_rows(batch: Batch) -> list[tuple[str, ...]]:
    """One row per item (``ROW_HEADER``)."""
    return [(i.run_id, str(i.shard), badge(i), i.node or "", i.gpu or "",
             "" if i.seconds is None else f"{i.seconds:.1f}", " ".join(i.reports))
            for i in batch.items]


def counts_line(batch: Batch) -> str:
    """``3 runs: 2 done, 1 skipped; 2 reproduced-bitwise``."""
    info = batch.info
    states = ", ".join(f"{n} {s}" for s, n in sorted(info.states.items()))
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(info.verdicts.items()))
    return f"{len(batch.items)} runs" + (f": {states}" if states else "") + (
        f"; {verdicts}" if verdicts else "")


def render_batch_junit(batch: Batch, results: Sequence[VerifyResult]) -> str:
    """One JUnit document for the whole batch."""
    root = ET.Element("testsuites", name=xml_text(f"auditor batch {batch.info.id}"))
    suites = [testsuite(r) for r in results]
    verified = {r.original_run for r in results}
    for item in batch.items:
        if item.state == "failed" or (item.state == "done" and item.run_id not in verified):
            suites.append(_error_suite(item))
    root.extend(suites)
    for name in ("tests", "failures", "errors"):
        root.set(name, str(sum(int(s.get(name, "0")) for s in suites)))
    root.set("skipped", str(sum(1 for i in batch.items if i.state == "skipped")))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in suites):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _error_suite(item: BatchItem) -> ET.Element:
    suite = ET.Element("testsuite", name=xml_text(f"run {item.run_id}"), tests="1",
                       failures="0", errors="1", skipped="0",
                       time=f"{item.seconds or 0.0:.3f}")
    case = ET.SubElement(suite, "testcase", classname="auditor.verdict", name="verdict",
                         time=f"{item.seconds or 0.0:.3f}")
    kind = item.verdict or "could-not-verify"
    message = item.message or (f"the run was verified ({kind}) but its stored result is "
                               "missing" if item.verdict else kind)
    ET.SubElement(case, "error", type=kind, message=xml_text(message))
    return suite


def render_batch_markdown(batch: Batch, results: Sequence[VerifyResult]) -> str:
    """The batch's step summary: counts, one row per run, then the verified runs' summary."""
    lines = [f"## auditor batch {escape_cell(batch.info.id)}", "",
             escape_cell(counts_line(batch), 400), "",
             "| " + " | ".join(ROW_HEADER) + " |", "|" + "---|" * len(ROW_HEADER)]
    for row in batch_rows(batch)[:500]:
        lines.append("| " + " | ".join(escape_cell(c) for c in row) + " |")
    if len(batch.items) > 500:
        lines.append(f"\n{len(batch.items) - 500} more runs: `audit batch show {batch.info.id}`")
    return "\n".join(lines) + "\n\n" + (render_markdown(results, limit_bytes=600 * 1024)
                                        if results else "")
