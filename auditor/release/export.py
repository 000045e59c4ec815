"""`audit certificate export`: a stored certificate as attestations other tools verify.

Contract of ``export(store, ref, key_path, trusted, ...)``:

- ``ref`` is a run id (its newest certificate) or a certificate's sha256 (or a unique
  prefix of at least 8 hex digits). The certificate is read from the store, its signature
  checked under ``trusted`` when given, and its evidence checked against the store
  (``tamper.evidence_problems``: record, rerun, subjects) before anything is written;
  a problem is ``IntegrityError`` (exit 3), an unknown reference ``InputError`` (exit 2).
- ``certificate``: the certificate's envelope bytes as stored (byte for byte).
- ``vsa``: the SLSA Verification Summary Attestation of ``certify.attest``, signed with
  ``key_path`` (Ed25519 or ECDSA) in a DSSE envelope.
- ``model_signature``: a signature of the certificate's ``model:<folder>`` subject in
  OpenSSF ``model_signing``'s format (a sigstore bundle, key-based), made by the
  ``model_signing`` library itself over a private copy of the certified outputs of that
  folder, each re-read from the store and checked against its digest; the key must be
  ECDSA (``model_signing verify key`` accepts only EC keys). ``model_signing verify key
  FOLDER --signature SIG --public_key KEY.pub`` then accepts the folder exactly when it
  holds those bytes, and the subject digest it signs is the certificate's model digest.
- Every file is written through ``core.safefile`` (never through a link or a device);
  all targets are checked before anything is signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from auditor.certify.attest import (
    MODEL_PREFIX,
    in_folder,
    model_digest,
    seal_vsa,
    vsa_statement,
)
from auditor.certify.certificate import (
    Statement,
    envelope_bytes,
    open_envelope,
)
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import PrivateKey, PublicKey, load_private_key, type_of
from auditor.core.safefile import check_target, write_target
from auditor.release.tamper import evidence_problems, raise_first
from auditor.store.base import CertificateReader, CertificateRow, EvidenceReader, RecordReader

EC_HINT = "generate one with `audit keys generate --type ecdsa-p256`"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote, and the digests a pipeline chains on."""

    certificate_sha256: str
    run_id: str
    verdict: str
    model_subject: str | None  # "model:<folder>" when the certificate names one
    model_sha256: str | None
    written: tuple[tuple[str, Path], ...]  # (kind, path)


def export(store: EvidenceReader, ref: str, key_path: Path | None, trusted: list[PublicKey], *,
           certificate: Path | None = None, vsa: Path | None = None,
           model_signature: Path | None = None) -> Exported:
    """Write the attestations asked for (see the module contract)."""
    targets = [p for p in (certificate, vsa, model_signature) if p is not None]
    if not targets:
        raise InputError("nothing to export",
                         hint="name --certificate, --vsa and/or --model-signature")
    for target in targets:
        check_target(target)
    key = _signing_key(key_path, vsa is not None, model_signature is not None)
    row = _row_of(store, ref)
    data = store.blobs.read_bytes(row.sha256, f"certificate {row.sha256[:12]}")
    source = f"certificate sha256:{row.sha256[:12]}…"
    statement = open_envelope(data, trusted or None, require_signature=bool(trusted),
                              source=source)
    raise_first(evidence_problems(store, statement, source), "export")
    model = next((s for s in statement.subject if s.name.startswith(MODEL_PREFIX)), None)
    if model_signature is not None and model is None:
        raise InputError(f"{source} names no model folder (no weights outputs in a folder "
                         "of their own, or an output there was not compared)",
                         hint="write the model's files into a folder of their own")
    written: list[tuple[str, Path]] = []
    if certificate is not None:
        write_target(certificate, data)
        written.append(("certificate", certificate))
    if vsa is not None:
        assert key is not None
        envelope = seal_vsa(vsa_statement(statement, row.sha256, datetime.now(UTC)), key)
        write_target(vsa, envelope_bytes(envelope))
        written.append(("vsa", vsa))
    if model_signature is not None and model is not None:
        assert key_path is not None
        _sign_model(store, statement, model.name.removeprefix(MODEL_PREFIX),
                    model.digest["sha256"], key_path, model_signature)
        written.append(("model-signature", model_signature))
    return Exported(row.sha256, statement.predicate.original_run, statement.predicate.verdict,
                    model.name if model else None, model.digest["sha256"] if model else None,
                    tuple(written))


def _signing_key(key_path: Path | None, vsa: bool, model: bool) -> PrivateKey | None:
    if not (vsa or model):
        return None
    if key_path is None:
        raise InputError("signing needs a private key", hint="pass --key KEY (a .key file)")
    key = load_private_key(key_path)
    if model and type_of(key) == "ed25519":
        raise InputError(f"{key_path}: an Ed25519 key cannot sign in model_signing's format "
                         "(model_signing verifies only ECDSA P-256/384/521 keys)", hint=EC_HINT)
    return key


def _row_of(store: CertificateReader, ref: str) -> CertificateRow:
    text = ref.strip().lower()
    rows = store.certificates(run_id=ref)
    if rows:
        return rows[0]  # newest first
    if len(text) >= 8 and all(c in "0123456789abcdef" for c in text):
        matches = [r for r in store.certificates() if r.sha256.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(f"certificate prefix {ref!r} is ambiguous ({len(matches)} match)",
                             hint="give more digits")
    raise InputError(f"no certificate for {ref!r} in this store",
                     hint="give a run id or a certificate's sha256; `audit verify` issues one")


def _sign_model(store: RecordReader, statement: Statement, folder: str, digest: str,
                key_path: Path, out: Path) -> None:
    try:
        from model_signing import signing
    except ImportError:
        raise InputError("model_signing is not installed",
                         hint="pip install 'auditor[attest]'") from None
    record = store.get_record(statement.predicate.original_run)
    members = in_folder(record.outputs(), folder)
    if model_digest((rel, art.sha256) for rel, art in members) != digest:
        raise IntegrityError(f"the outputs of run {record.identity.id} under {folder}/ no "
                             "longer hash to the certificate's model digest")
    with tempfile.TemporaryDirectory(prefix="auditor-model-") as tmp:
        root = Path(tmp) / Path(folder).name
        for rel, art in members:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.blobs.verified_path(art.sha256, art.name).open("rb") as src, \
                    target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        sig = Path(tmp) / "model.sig"
        config = signing.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_signer(private_key=key_path).sign(root, sig)
        data = sig.read_bytes()
    _check_signed_digest(data, digest)
    write_target(out, data)


def _check_signed_digest(bundle: bytes, digest: str) -> None:
    """The signature's statement subject is the certificate's model digest."""
    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        payload = json.loads(base64.b64decode(envelope["payload"]))
        signed = payload["subject"][0]["digest"]["sha256"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise IntegrityError("model_signing wrote a signature this auditor cannot read") \
            from None
    if signed != digest:
        raise IntegrityError(f"model_signing signed sha256:{signed[:16]}…, not the "
                             f"certificate's model digest sha256:{digest[:16]}…")


def attestation_certificate(data: bytes, trusted: list[PublicKey], source: str) -> str:
    """The sha256 of the certificate an attestation file stands for: the file itself when
    it is our certificate (signature checked), the one it summarises when it is a VSA."""
    from auditor.certify.attest import certificate_of_vsa, is_vsa

    if is_vsa(data):
        return certificate_of_vsa(data, trusted, source)
    open_envelope(data, trusted or None, require_signature=True, source=source)
    return hashlib.sha256(data).hexdigest()
