"""The certificate log: an append-only hash chain of issued certificates.

Files in the log directory:

- ``certs.jsonl``: one canonical-JSON line per certificate,
  ``{"seq", "prev_sha256", "cert_sha256", "run_id", "time"}``. ``seq`` counts from 1;
  ``prev_sha256`` is the sha256 of the previous line's bytes without its newline (64
  zeros for the first line), so deleting, reordering or editing a line breaks the next
  link.
- ``certs.head.json``: ``{"seq", "line_sha256", "size"}`` of the log after the last
  append: the last line's number and hash and the file's byte size. It catches what a
  chain cannot: a truncated tail or an edited last line.
- ``certs.head.dsse.json``: the same head bytes in a DSSE envelope (payloadType
  ``application/vnd.auditor.loghead+json``), written when ``append`` is given a key and
  removed when it is not, so an unsigned append never leaves a stale signed head.
- ``certs.lock``: ``flock`` target; appends are serialised across processes, and
  ``verify_log`` takes a shared lock so it never sees a half-finished append.

``append`` refuses (``IntegrityError``) to extend a log whose tail does not match its
head, so an append can never bless a truncated or edited log with a fresh signed head.
``verify_log`` raises ``IntegrityError`` naming the first broken line. A rollback of
log and signed head together to an older signed state is only detectable against a
copy of the latest head kept elsewhere (RFC 6962 gossip); keep one in CI artifacts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auditor.certify.certificate import (
    Envelope,
    atomic_write,
    canonical_json,
    envelope_bytes,
    sign_payload,
    verify_envelope,
)
from auditor.core.errors import AuditorError, InputError, IntegrityError
from auditor.store.blobs import fsync_dir

LOG_NAME = "certs.jsonl"
HEAD_NAME = "certs.head.json"
SIGNED_HEAD_NAME = "certs.head.dsse.json"
LOCK_NAME = "certs.lock"
HEAD_PAYLOAD_TYPE = "application/vnd.auditor.loghead+json"
GENESIS = "0" * 64
_SHA256 = r"^[0-9a-f]{64}$"
_VERIFY_HINT = "run verify_log to find the first broken line; restore the log from a copy"


class LogEntry(BaseModel):
    """One line of ``certs.jsonl``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    seq: int = Field(ge=1)
    prev_sha256: str = Field(pattern=_SHA256)
    cert_sha256: str = Field(pattern=_SHA256)
    run_id: str = Field(min_length=1)
    time: str


class LogHead(BaseModel):
    """The state of the log after its last append."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    seq: int = Field(ge=0)
    line_sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)


EMPTY_HEAD = LogHead(seq=0, line_sha256=GENESIS, size=0)


def append(
    dir: Path, cert_sha256: str, run_id: str, key: Ed25519PrivateKey | None = None
) -> LogEntry:
    """Append one certificate to the log in ``dir`` and rewrite (and sign) its head."""
    if not re.fullmatch(_SHA256, cert_sha256):
        raise InputError(f"certificate sha256 {cert_sha256!r} is not 64 lowercase hex digits")
    if not run_id:
        raise InputError("cannot log a certificate without a run id")
    _make_dir(dir)
    with _locked(dir, exclusive=True):
        tail = _checked_tail(dir, key)
        entry = LogEntry(
            seq=tail.seq + 1,
            prev_sha256=tail.line_sha256,
            cert_sha256=cert_sha256,
            run_id=run_id,
            time=_now(),
        )
        line = canonical_json(entry)
        size = _append_line(dir / LOG_NAME, line)
        _write_head(dir, LogHead(seq=entry.seq, line_sha256=_sha256(line), size=size), key)
    return entry


def verify_log(dir: Path, trusted: list[Ed25519PublicKey] | None = None) -> int:
    """Check the chain and the head (signed, when ``trusted`` is given); return the entry count."""
    if not dir.is_dir():
        raise InputError(f"{dir}: certificate log directory not found", hint="check the path")
    with _locked(dir, exclusive=False):
        data = _read(dir / LOG_NAME)
        head = _trusted_head(dir, trusted)
    lines = _split_lines(dir / LOG_NAME, data)
    _verify_chain(dir / LOG_NAME, lines)
    _check_head(dir, lines, len(data), head)
    return len(lines)


def read_entries(dir: Path) -> list[LogEntry]:
    """The log's entries, after ``verify_log`` (unsigned head) has passed."""
    verify_log(dir)
    lines = _split_lines(dir / LOG_NAME, _read(dir / LOG_NAME))
    return [LogEntry.model_validate_json(line) for line in lines]


# -- appending ---------------------------------------------------------------------


def _checked_tail(log_dir: Path, key: Ed25519PrivateKey | None) -> LogHead:
    """The head of the log as its last line says; it must agree with the head files."""
    log = log_dir / LOG_NAME
    last = _last_line(log)
    actual = EMPTY_HEAD
    if last is not None:
        entry = _parse_entry(log, 0, last)
        actual = LogHead(seq=entry.seq, line_sha256=_sha256(last), size=log.stat().st_size)
    recorded = _read_head(log_dir / HEAD_NAME) or EMPTY_HEAD
    if recorded != actual:
        raise IntegrityError(
            f"{log}: refusing to append: the log ends at seq {actual.seq}, {HEAD_NAME} records "
            f"seq {recorded.seq} (or their hashes or sizes differ)",
            hint=_VERIFY_HINT,
        )
    signed = log_dir / SIGNED_HEAD_NAME
    if (
        key is not None
        and signed.exists()
        and _open_signed_head(signed, [key.public_key()]) != recorded
    ):
        raise IntegrityError(
            f"{signed}: refusing to append: the signed head differs from {HEAD_NAME}",
            hint=_VERIFY_HINT,
        )
    return actual


def _append_line(path: Path, line: bytes) -> int:
    """Append ``line`` and a newline durably in one write; return the new file size."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with os.fdopen(fd, "ab", closefd=False) as handle:
            handle.write(line + b"\n")
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return size


def _write_head(log_dir: Path, head: LogHead, key: Ed25519PrivateKey | None) -> None:
    data = canonical_json(head)
    atomic_write(log_dir / HEAD_NAME, data)
    signed = log_dir / SIGNED_HEAD_NAME
    if key is None:
        signed.unlink(missing_ok=True)
        return
    atomic_write(signed, envelope_bytes(sign_payload(data, HEAD_PAYLOAD_TYPE, key)))


def _last_line(path: Path) -> bytes | None:
    """The last line (without newline) read backwards from the end; None for an empty log."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return None
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            raise IntegrityError(
                f"{path}: the last line is incomplete (no newline)", hint=_VERIFY_HINT
            )
        pos, buf = end - 1, b""
        while pos > 0 and b"\n" not in buf:
            step = min(65536, pos)
            pos -= step
            handle.seek(pos)
            buf = handle.read(step) + buf
        return buf.rsplit(b"\n", 1)[-1]


# -- verifying ---------------------------------------------------------------------


def _split_lines(path: Path, data: bytes) -> list[bytes]:
    if not data:
        return []
    if not data.endswith(b"\n"):
        number = data.count(b"\n") + 1
        raise IntegrityError(
            f"{path}: line {number}: incomplete (no newline): the file was cut", hint=_VERIFY_HINT
        )
    return data[:-1].split(b"\n")


def _verify_chain(path: Path, lines: list[bytes]) -> None:
    prev = GENESIS
    for number, line in enumerate(lines, start=1):
        _check_line(path, number, line, prev)
        prev = _sha256(line)


def _check_line(path: Path, number: int, line: bytes, prev: str) -> None:
    entry = _parse_entry(path, number, line)
    if entry.prev_sha256 != prev:
        before = f"line {number - 1}" if number > 1 else "the genesis hash"
        raise IntegrityError(
            f"{path}: line {number}: prev_sha256 does not match {before}: "
            "a line was edited, deleted or reordered here",
            hint=_VERIFY_HINT,
        )
    if entry.seq != number:
        raise IntegrityError(
            f"{path}: line {number}: seq is {entry.seq}: lines were deleted or reordered",
            hint=_VERIFY_HINT,
        )
    if canonical_json(entry) != line:
        raise IntegrityError(
            f"{path}: line {number}: not in canonical form: the line was edited", hint=_VERIFY_HINT
        )


def _check_head(log_dir: Path, lines: list[bytes], size: int, head: LogHead | None) -> None:
    log, count = log_dir / LOG_NAME, len(lines)
    if head is None:
        if count:
            raise IntegrityError(
                f"{log_dir / HEAD_NAME}: missing, but the log has {count} lines", hint=_VERIFY_HINT
            )
        return
    if head.seq > count:
        raise IntegrityError(
            f"{log}: line {count + 1}: missing: the log ends after {count} lines but the head "
            f"records {head.seq}: the tail was truncated",
            hint=_VERIFY_HINT,
        )
    if head.seq < count:
        raise IntegrityError(
            f"{log}: line {head.seq + 1}: beyond the head (seq {head.seq}): "
            "appended outside `append`",
            hint=_VERIFY_HINT,
        )
    if head.line_sha256 != (_sha256(lines[-1]) if lines else GENESIS):
        raise IntegrityError(
            f"{log}: line {count}: does not match the head's hash: the last line was edited",
            hint=_VERIFY_HINT,
        )
    if head.size != size:
        raise IntegrityError(
            f"{log}: size {size} bytes, but the head records {head.size}", hint=_VERIFY_HINT
        )


def _trusted_head(log_dir: Path, trusted: list[Ed25519PublicKey] | None) -> LogHead | None:
    """The unsigned head, or, with trusted keys, the signed head (which must equal it)."""
    head = _read_head(log_dir / HEAD_NAME)
    if not trusted:
        return head
    signed_path = log_dir / SIGNED_HEAD_NAME
    if not signed_path.exists():
        if head is None:
            return None
        raise IntegrityError(
            f"{signed_path}: missing: the log head is not signed", hint="append with a signing key"
        )
    signed = _open_signed_head(signed_path, trusted)
    if signed != head:
        raise IntegrityError(
            f"{log_dir / HEAD_NAME}: differs from the signed head in {SIGNED_HEAD_NAME}",
            hint=_VERIFY_HINT,
        )
    return signed


def _open_signed_head(path: Path, trusted: list[Ed25519PublicKey]) -> LogHead:
    try:
        envelope = Envelope.model_validate_json(_read(path))
        payload = verify_envelope(
            envelope, HEAD_PAYLOAD_TYPE, trusted, require_signature=True, source=str(path)
        )
    except ValidationError:
        raise IntegrityError(f"{path}: not a DSSE envelope", hint=_VERIFY_HINT) from None
    except IntegrityError:
        raise
    except AuditorError as exc:
        raise IntegrityError(exc.message, hint=_VERIFY_HINT) from None
    return _parse_head(path, payload)


# -- small parts -------------------------------------------------------------------


def _read_head(path: Path) -> LogHead | None:
    data = _read(path)
    return _parse_head(path, data) if data else None


def _parse_head(path: Path, data: bytes) -> LogHead:
    try:
        return LogHead.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(f"{path}: not a valid log head", hint=_VERIFY_HINT) from None


def _parse_entry(path: Path, number: int, line: bytes) -> LogEntry:
    where = f"line {number}" if number else "last line"
    try:
        return LogEntry.model_validate_json(line)
    except ValidationError:
        raise IntegrityError(
            f"{path}: {where}: not a log entry: the line was edited or corrupted", hint=_VERIFY_HINT
        ) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _make_dir(log_dir: Path) -> None:
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{log_dir}: cannot create the certificate log directory: {exc.strerror}"
        ) from None


@contextmanager
def _locked(log_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on the lock file; a reader of a read-only copy goes without."""
    fd = _open_lock(log_dir / LOCK_NAME, exclusive)
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _open_lock(path: Path, exclusive: bool) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exclusive:
            raise InputError(f"{path}: cannot open the log lock: {exc.strerror}") from None
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
