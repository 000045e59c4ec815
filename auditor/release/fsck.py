"""``audit fsck``: check the store end to end.

SQLite's ``PRAGMA integrity_check``; every record parses and matches its stored digest;
every object re-hashes to its name (naming the runs that reference a bad one); every
artifact a record names exists; the certificate log (chain, head, and the signed head when
keys are given) and the certificates table against it; every certified record and subject
against the digests its certificate signed (``tamper``); leftovers of interrupted writes
in ``tmp/`` (removed with ``--repair``); every curve preview (derived, display-only data)
against what the run's digest-checked series gives (rebuilt with ``--repair``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from auditor.core.errors import AuditorError
from auditor.core.keys import PublicKey
from auditor.release.tamper import (
    evidence_problems,
    index_problems,
    logged_certificates,
    series_problems,
)
from auditor.store import signatures
from auditor.store.base import EvidenceReader, RecordReader, RunReader, StoreAudit
from auditor.store.records import parse_record


@dataclass
class FsckReport:
    """What was checked and what was wrong."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        """Record one problem."""
        self.problems.append(message)
        self.lines.append(f"BAD  {message}")


def check_store(store: StoreAudit, *, repair: bool = False,
                keys: Sequence[PublicKey] = ()) -> FsckReport:
    """Check everything; with ``repair`` remove stray temp files."""
    report = FsckReport()
    result = store.integrity_check()
    if result != "ok":
        report.bad(f"database integrity_check: {result}")
    runs = _check_records(store, report, repair)
    objects = _check_objects(store, report)
    certs = _check_certificates(store, report, list(keys) or None)
    for problem in signatures.problems(store, list(keys)):
        report.bad(problem)
    strays = store.blobs.stray_temp_files()
    for path in strays:
        if repair:
            path.unlink()
        else:
            report.bad(f"leftover of an interrupted write: {path} (remove with --repair)")
    report.lines.append(
        f"ok   {runs} runs, {objects} objects, {certs} certificates checked"
        + (f", {len(strays)} leftovers removed" if repair and strays else "")
    )
    return report


def _check_records(store: RunReader, report: FsckReport, repair: bool = False) -> int:
    count = 0
    for run_id, text, sha in list(store.all_records()):  # no nested read transactions
        count += 1
        try:
            record = parse_record(run_id, text, sha)
        except AuditorError as exc:
            report.bad(str(exc))
            continue
        broken = series_problems(store, record)
        for problem in broken:
            report.bad(problem)
        if not broken:  # previews are derived from the series: checked against it
            for problem in store.preview_problems(run_id, repair=repair):
                if repair:
                    report.lines.append(f"fixed {problem.split(' (derived')[0]}: rebuilt")
                else:
                    report.bad(problem)
        for art in record.artifacts:
            if not store.blobs.has(art.sha256):
                report.bad(f"run {run_id}: artifact {art.name} (sha256:{art.sha256}) is missing")
    return count


def _check_objects(store: RecordReader, report: FsckReport) -> int:
    count = 0
    for claimed, actual in store.blobs.object_digests():
        count += 1
        if actual != claimed:
            users = ", ".join(f"{r}:{n}" for r, n in store.runs_with_artifact(claimed)) or "none"
            report.bad(f"object sha256:{claimed} does not hash to its name (referenced by {users})")
    return count



def _check_certificates(store: EvidenceReader, report: FsckReport,
                        keys: list[PublicKey] | None) -> int:
    for problem in index_problems(store, keys):
        report.bad(problem)
    logged, _ = logged_certificates(store, None)
    for item in logged:
        for problem in evidence_problems(store, item.statement,
                                         f"certificate sha256:{item.sha256[:12]}…"):
            report.bad(problem)
    return len(logged)
