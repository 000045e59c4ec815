"""Issue the certificate of a verification and keep the result.

The certificate is an in-toto Statement v1 (subjects: the original run's *compared* output
artifacts by sha256, its record digest as ``record:<run id>``, and, when the weights sit in
a folder whose every output was compared, ``model:<folder>`` with the digest OpenSSF
model signing signs over that folder: ``certify/attest.py``) with auditor's
reproduction predicate (verdict, evidence digests, the rerun's isolation level, every
loosening the policy made and the outputs it did not compare), wrapped in a DSSE
envelope (Ed25519-signed when a key is given). Its bytes are
stored content-addressed, indexed in the ``certificates`` table, appended to the
hash-chain log (``certlog.log_of``: ``log/certs.jsonl`` in a SQLite store's folder, the
database of a server store) and, with ``--certificate PATH``, written there. The
whole ``VerifyResult`` is stored as the rerun's ``verify/result.json`` artifact so reports
can be rendered later without rerunning.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from auditor.certify import log as certlog
from auditor.certify.attest import model_subject
from auditor.certify.certificate import (
    PartialCheck,
    ReproductionPredicate,
    SegmentRow,
    Subject,
    envelope_bytes,
    make_statement,
    seal,
    write_certificate,
)
from auditor.certify.loosen import certified_outputs, from_verdict, uncertified_outputs
from auditor.certify.verdict import Verdict, VerifyResult
from auditor.core.errors import CorruptRecord, CouldNotVerify
from auditor.core.keys import load_private_key
from auditor.core.schema import ArtifactRef, RunRecord, record_sha256
from auditor.core.version import __version__
from auditor.rerun.record import isolation_level
from auditor.store import CertificateRow
from auditor.store.base import Certifier, HasBlobs, RecordWriter

RESULT_ARTIFACT = "verify/result.json"


def subjects_of(original: RunRecord, verdict: Verdict) -> list[Subject]:
    """What a certificate certifies: every output whose differences counted, and the record.

    An output the policy's ``ignore_outputs`` took out of the comparison (or a log whose
    differences were only reported) is never a subject (``loosen.certified_outputs``): it
    goes to the predicate's ``not_compared``, so it can never pass a gate.
    """
    outputs = certified_outputs(list(original.artifacts), verdict)  # logs as evidence too
    subjects = [Subject(name=a.name, digest={"sha256": a.sha256}) for a in outputs]
    model = model_subject(original.outputs(), outputs)  # model_signing's folder digest
    if model is not None:
        subjects.append(model)
    subjects.append(
        Subject(name=f"record:{original.identity.id}", digest={"sha256": record_sha256(original)})
    )
    return subjects


def partial_subjects(original: RunRecord, result: VerifyResult) -> list[Subject]:
    """What a spot-check certifies: the run's outputs (every ``output`` artifact the policy
    does not ignore) and its record, on the evidence of the replayed segments; the
    predicate's ``check`` says so, and gates refuse it unless they accept spot-checks. A
    resume check certifies the record only: it says the script resumes equivalently."""
    subjects = []
    if result.check == "spot-check":
        from auditor.core.policy import Policy

        policy = Policy.from_table(dict(result.policy)).compare
        subjects = [Subject(name=a.name, digest={"sha256": a.sha256})
                    for a in original.outputs() if not policy.is_ignored(a.name)]
    subjects.append(
        Subject(name=f"record:{original.identity.id}", digest={"sha256": record_sha256(original)})
    )
    return subjects


def partial_of(result: VerifyResult) -> PartialCheck | None:
    """The certificate's statement of a spot-check or resume check."""
    spot = result.spot_check
    if result.check == "full" or spot is None:
        return None
    rows = [SegmentRow(index=s.index, start=s.start, end=s.end, verdict=s.level,
                       first_difference=s.first_difference) for s in result.segments]
    return PartialCheck(**spot.model_dump(), segments=rows)


def issue_certificate(
    store: Certifier,
    result: VerifyResult,
    original: RunRecord,
    rerun: RunRecord,
    key_path: Path | None,
    out_path: Path | None,
) -> VerifyResult:
    """Seal, store, log and (optionally) write the certificate; store the result."""
    level = result.verdict.level
    if level == "could-not-verify":  # never certified: verify raises before it gets here
        why = result.verdict.notes[-1] if result.verdict.notes else "see the notes"
        raise CouldNotVerify(f"run {original.identity.id} could not be verified: {why}")
    subjects = (subjects_of(original, result.verdict) if result.check == "full"
                else partial_subjects(original, result))
    predicate = ReproductionPredicate(
        verdict=level,
        original_run=original.identity.id,
        rerun_run=rerun.identity.id,
        original_record_sha256=record_sha256(original),
        rerun_record_sha256=record_sha256(rerun),
        image=result.image,
        environment_sha256=result.environment_sha256,
        policy=result.policy,
        summary=dict(result.verdict.summary)
        | {"first_divergence": result.verdict.first_divergence},
        causes=[f"{c.what}: {c.explanation}" for c in result.verdict.causes[:5]],
        notes=list(result.verdict.notes),
        isolation=isolation_level(result.backend, result.verdict.notes),  # type: ignore[arg-type]
        isolation_notes=[n for n in result.verdict.notes
                         if n.startswith(("venv backend:", "docker backend:"))],
        loosenings=from_verdict(result.verdict),
        not_compared=[Subject(name=a.name, digest={"sha256": a.sha256})
                      for a in uncertified_outputs(original.outputs(), result.verdict)],
        issued_at=datetime.now(UTC),
        auditor_version=__version__,
        check=result.check,
        partial=partial_of(result),
    )
    key = load_private_key(key_path) if key_path else None
    envelope = seal(make_statement(subjects, predicate), key)
    data = envelope_bytes(envelope)
    sha, _ = store.blobs.put_bytes(data)
    store.put_certificate(
        CertificateRow(
            sha256=sha,
            run_id=original.identity.id,
            rerun_id=rerun.identity.id,
            verdict=level,
            issued_at=predicate.issued_at,
            subjects=tuple(s.digest["sha256"] for s in subjects),
        )
    )
    certlog.append(certlog.log_of(store), sha, original.identity.id, key,
                   read_certificate=lambda cert: store.blobs.read_bytes(cert, "certificate"))
    if out_path is not None:
        write_certificate(envelope, out_path)
    final = result.model_copy(
        update={"certificate_sha256": sha, "certificate_path": str(out_path) if out_path else None}
    )
    _store_result(store, rerun, final)
    return final


def _store_result(store: RecordWriter, rerun: RunRecord, result: VerifyResult) -> None:
    sha, size = store.blobs.put_bytes(result.model_dump_json(indent=1).encode())
    ref = ArtifactRef(name=RESULT_ARTIFACT, sha256=sha, size=size, kind="report")
    current = store.get_record(rerun.identity.id)
    kept = tuple(a for a in current.artifacts if a.name != RESULT_ARTIFACT)
    store.put_record(current.model_copy(update={"artifacts": (*kept, ref)}))


def stored_result(store: HasBlobs, rerun: RunRecord) -> VerifyResult:
    """The VerifyResult stored with a rerun."""
    ref = rerun.artifact(RESULT_ARTIFACT)
    if ref is None:
        raise CorruptRecord(f"run {rerun.identity.id} has no stored verification result")
    return VerifyResult.model_validate_json(store.blobs.read_bytes(ref.sha256, ref.name))
