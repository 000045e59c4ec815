"""Certificates: an in-toto Statement v1 in a DSSE envelope, signed (Ed25519 or ECDSA).

Contract:

- The statement's ``subject`` names the certified files by sha256; its predicate
  (``PREDICATE_TYPE``) carries the verdict and the evidence it rests on.
- Writers emit exactly the known fields, as canonical JSON (sorted keys, no spaces,
  UTF-8, no NaN/inf). Readers ignore unknown fields at every level (the in-toto rule),
  so a newer writer's additions never break an older reader.
- Signatures cover the DSSE pre-authentication encoding ``pae(payloadType, payload)``,
  never the parsed JSON, so the payload type is bound to the bytes
  (CVE-2022-35929 class) and verification needs no re-canonicalisation.
- ``open_envelope`` checks, in this order: the bytes are a DSSE envelope (else
  ``InputError``), the payload type is ours, at least one signature verifies under a
  trusted key (else ``IntegrityError``), and only then parses the statement. An unsigned
  envelope is accepted only with ``require_signature=False``; with no trusted keys and
  ``require_signature=False`` signatures are not checked at all (reading, not trusting).
- Certificates are written by ``core.safefile.write_target`` (refuses links and special
  files; temp + fsync + ``os.replace`` + directory fsync).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from auditor.certify.loosen import Loosening
from auditor.core.capped import read_capped
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import PrivateKey, PublicKey, keyid, sign, verifies
from auditor.core.safefile import write_target

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://auditor.dev/reproduction/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
CERT_SCHEMA_VERSION = 1
MAX_CERT_BYTES = 16 * 1024 * 1024

Verdict = Literal["reproduced-bitwise", "reproduced-within-tolerance", "not-reproduced"]

# Readers ignore unknown fields; aliases let Python names differ from the JSON names.
_READER = ConfigDict(frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True)


class Subject(BaseModel):
    """One certified artifact: a name (informational) and its digests (``{"sha256": hex}``)."""

    model_config = _READER
    name: str
    digest: dict[str, str] = Field(min_length=1)


class ReproductionPredicate(BaseModel):
    """What was reproduced, how well, and the evidence (records, image, policy) behind it."""

    model_config = _READER
    schema_version: int = CERT_SCHEMA_VERSION
    verdict: Verdict
    original_run: str
    rerun_run: str | None = None
    original_record_sha256: str
    rerun_record_sha256: str | None = None
    image: str | None = None  # image id/digest, or "venv:<digest>"
    environment_sha256: str | None = None
    policy: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict)
    causes: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    # how the rerun was isolated: "container" (docker), "venv" (a venv in bubblewrap,
    # weaker) or "none" (a venv as a host process: it could read the host's files)
    isolation: Literal["container", "venv", "none"] | None = None
    isolation_notes: list[str] = Field(default_factory=list)
    # what the policy accepted beyond the defaults, and the outputs it did not compare
    loosenings: list[Loosening] = Field(default_factory=list)
    not_compared: list[Subject] = Field(default_factory=list)
    issued_at: datetime
    auditor_version: str

    @field_validator("issued_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("issued_at must carry a time zone (UTC)")
        return value.astimezone(UTC)


class Statement(BaseModel):
    """An in-toto Statement v1 whose predicate is a ``ReproductionPredicate``."""

    model_config = _READER
    type_: str = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1)
    predicate_type: str = Field(alias="predicateType")
    predicate: ReproductionPredicate


class Signature(BaseModel):
    """One DSSE signature: ``sig`` is base64 of Ed25519 over the PAE; ``keyid`` a hint."""

    model_config = _READER
    keyid: str = ""
    sig: str


class Envelope(BaseModel):
    """A DSSE v1 envelope: base64 payload, its type, and zero or more signatures."""

    model_config = _READER
    payload: str
    payload_type: str = Field(alias="payloadType")
    signatures: list[Signature] = Field(default_factory=list)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the exact bytes that are signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def canonical_json(obj: object) -> bytes:
    """Sorted-key, space-free UTF-8 JSON; ``ValueError`` on NaN or infinity anywhere."""
    if isinstance(obj, BaseModel):
        _require_finite(obj.model_dump(mode="python", by_alias=True), "$")
        obj = obj.model_dump(mode="json", by_alias=True)
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def make_statement(subjects: list[Subject], predicate: ReproductionPredicate) -> Statement:
    """The statement certifying ``subjects`` with ``predicate``."""
    return Statement(
        _type=STATEMENT_TYPE, subject=subjects, predicateType=PREDICATE_TYPE, predicate=predicate
    )


def seal(statement: Statement, private_key: PrivateKey | None) -> Envelope:
    """Wrap ``statement`` in a DSSE envelope, signed when a key is given (else unsigned)."""
    return sign_payload(canonical_json(statement), PAYLOAD_TYPE, private_key)


def sign_payload(
    payload: bytes, payload_type: str, private_key: PrivateKey | None
) -> Envelope:
    """A DSSE envelope of any payload (the certificate log signs its head with this)."""
    signatures: list[Signature] = []
    if private_key is not None:
        sig = sign(private_key, pae(payload_type, payload))
        signatures.append(Signature(keyid=keyid(private_key.public_key()), sig=_b64(sig)))
    return Envelope(payload=_b64(payload), payloadType=payload_type, signatures=signatures)


def open_envelope(
    envelope_bytes: bytes,
    trusted: list[PublicKey] | None,
    *,
    require_signature: bool,
    source: str = "certificate",
) -> Statement:
    """Check a certificate's envelope and signatures, then return its statement."""
    envelope = parse_envelope(envelope_bytes, source)
    payload = verify_envelope(
        envelope, PAYLOAD_TYPE, trusted, require_signature=require_signature, source=source
    )
    return _parse_statement(payload, source)


def parse_envelope(envelope_bytes: bytes, source: str) -> Envelope:
    """The DSSE envelope in ``envelope_bytes``; ``InputError`` for anything else."""
    try:
        data = json.loads(envelope_bytes)
    except (ValueError, RecursionError):
        raise InputError(
            f"{source}: unknown certificate format: not JSON", hint="expected a DSSE envelope"
        ) from None
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            f"{source}: unknown certificate format: not a DSSE envelope ({_first_error(exc)})",
            hint="expected a JSON object with payload, payloadType and signatures",
        ) from None


def verify_envelope(
    envelope: Envelope,
    payload_type: str,
    trusted: list[PublicKey] | None,
    *,
    require_signature: bool,
    source: str,
) -> bytes:
    """The envelope's payload bytes, once its type and signatures pass (see module doc)."""
    if envelope.payload_type != payload_type:
        raise IntegrityError(
            f"{source}: payloadType changed: {envelope.payload_type!r} is not {payload_type!r}",
            hint="the envelope was altered or is not of this kind; do not trust it",
        )
    payload = _unb64(envelope.payload, source)
    if not envelope.signatures:
        if require_signature:
            raise IntegrityError(
                f"{source}: no signature",
                hint="only signed certificates are accepted; re-issue it with a key",
            )
        return payload
    if not trusted:
        if require_signature:
            raise InputError(
                f"{source}: no trusted public key given to check the signature",
                hint="pass the signer's .pub key",
            )
        return payload
    _check_signatures(envelope, pae(payload_type, payload), trusted, source)
    return payload


def subject_matches(statement: Statement, path: Path) -> bool:
    """True when the file at ``path`` is one of the statement's subjects (by sha256)."""
    digest = file_sha256(path)
    return any(s.digest.get("sha256", "").lower() == digest for s in statement.subject)


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in chunks (bounded memory)."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def envelope_bytes(envelope: Envelope) -> bytes:
    """The canonical bytes of an envelope: what is written, hashed and logged."""
    return canonical_json(envelope)


def write_certificate(envelope: Envelope, path: Path) -> str:
    """Write the envelope atomically to ``path`` (``-``: stdout); return its bytes' sha256."""
    data = envelope_bytes(envelope)
    write_target(path, data)
    return hashlib.sha256(data).hexdigest()


def read_certificate(path: Path) -> bytes:
    """The raw bytes of a certificate file; ``InputError`` if missing, unreadable or huge."""
    if not path.exists():
        raise InputError(f"{path}: certificate not found", hint="run `audit verify` to issue one")
    try:
        return read_capped(path, MAX_CERT_BYTES, "certificate")
    except InputError as exc:
        raise InputError(f"unknown certificate format: {exc.message}") from None


def _check_signatures(
    envelope: Envelope, signed: bytes, trusted: list[PublicKey], source: str
) -> None:
    for signature in envelope.signatures:
        raw = _try_unb64(signature.sig)
        if raw is not None and any(verifies(key, raw, signed) for key in trusted):
            return
    signers = ", ".join(s.keyid[:12] or "?" for s in envelope.signatures)
    known = ", ".join(keyid(k)[:12] for k in trusted)
    raise IntegrityError(
        f"{source}: signature does not verify with any trusted key "
        f"(signed by {signers}; trusted {known})",
        hint="the certificate was altered or signed by another key; do not trust it",
    )


def _parse_statement(payload: bytes, source: str) -> Statement:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise InputError(
            f"{source}: payload is not JSON", hint="expected an in-toto Statement"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: payload is not a JSON object", hint="expected an in-toto Statement"
        )
    _check_kind(data, source)
    try:
        statement = Statement.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: invalid statement: {_first_error(exc)}") from None
    version = statement.predicate.schema_version
    if version != CERT_SCHEMA_VERSION:
        raise InputError(
            f"{source}: certificate schema_version {version} is not supported "
            f"(this auditor reads {CERT_SCHEMA_VERSION})",
            hint="use the auditor version that issued it",
        )
    return statement


def _check_kind(data: dict[str, Any], source: str) -> None:
    if data.get("_type") != STATEMENT_TYPE:
        raise InputError(f"{source}: not an in-toto Statement v1 (_type {data.get('_type')!r})")
    if data.get("predicateType") != PREDICATE_TYPE:
        raise InputError(
            f"{source}: predicateType {data.get('predicateType')!r} is not {PREDICATE_TYPE!r}"
        )


def _require_finite(value: object, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite float {value!r} at {where}: convert NaN/inf to strings first")
    if isinstance(value, dict):
        for key, item in value.items():
            _require_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _require_finite(item, f"{where}[{index}]")


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    return f"{where}: {first['msg']}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _try_unb64(text: str) -> bytes | None:
    """Standard or URL-safe base64 (DSSE allows both); None when neither decodes."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(text.translate(str.maketrans("-_", "+/")), validate=True)
    except (binascii.Error, ValueError):
        return None


def _unb64(text: str, source: str) -> bytes:
    data = _try_unb64(text)
    if data is None:
        raise InputError(f"{source}: unknown certificate format: payload is not base64")
    return data
