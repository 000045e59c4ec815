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
- ``certs.head.dsse.json``: the head of the last *signed* append in a DSSE envelope
  (payloadType ``application/vnd.auditor.loghead+json``). An unsigned append never removes
  or rewrites it: it then covers a prefix of the log (its ``seq`` line hashes to its
  ``line_sha256``, and the lines up to it are ``size`` bytes), and the lines after it are
  the unsigned tail, held by the chain and ``certs.head.json`` only.
- ``certs.lock``: ``flock`` target; appends are serialised across processes, and
  ``verify_log`` takes a shared lock so it never sees a half-finished append.

``append`` refuses (``IntegrityError``) to extend a log whose tail does not match its
head, or whose lines no longer match the signed head (signature unchecked without a key,
checked with one), so an append never blesses a truncated, edited or re-chained log. A
signed append onto a log that has lines but no signed head, while the log holds a
certificate signed by that same key (``read_certificate`` reads them), refuses too: such
a log had a signed head (every signed ``audit verify`` signs one and nothing removes it),
so its absence is tampering. ``verify_log`` raises ``IntegrityError`` naming the first
broken line; a signed head present is checked against the lines it covers even without
trusted keys (its signature only with them). A rollback of the log and its signed head
together to an older signed state, or a cut of the unsigned tail back to the signed head,
is only detectable against a copy of the latest head kept elsewhere (RFC 6962 gossip);
keep one in CI artifacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auditor.certify.certificate import (
    Envelope,
    canonical_json,
    envelope_bytes,
    sign_payload,
    verify_envelope,
)
from auditor.core.errors import AuditorError, InputError, IntegrityError
from auditor.core.keys import PrivateKey, PublicKey
from auditor.core.safefile import atomic_write, fsync_dir
from auditor.store import store_dir_of
from auditor.store.base import CertificateReader, LogParts

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


class FileLog:
    """The log's parts as files in one folder (``LogParts``; SQLite stores, exported logs)."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir

    def label(self, name: str) -> str:
        return str(self.dir / name)

    @contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold ``flock`` on the lock file; a reader of a read-only copy goes without."""
        if exclusive:
            _make_dir(self.dir)
        fd = _open_lock(self.dir / LOCK_NAME, exclusive)
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def read(self, name: str) -> bytes:
        return _read(self.dir / name)

    def exists(self, name: str) -> bool:
        return (self.dir / name).exists()

    def append_line(self, line: bytes) -> int:
        return _append_line(self.dir / LOG_NAME, line)

    def write(self, name: str, data: bytes | None) -> None:
        if data is None:
            (self.dir / name).unlink(missing_ok=True)
        else:
            atomic_write(self.dir / name, data)


def parts(where: Path | LogParts) -> LogParts:
    """The log's parts: a folder's files, or a store's own log as given."""
    return FileLog(where) if isinstance(where, Path) else where


ADOPTED_SUFFIX = ".in-database"  # a folder log a server store has taken in, kept aside


def log_of(store: CertificateReader) -> LogParts:
    """The store's certificate log: in its database (a server store, shared by every machine
    that uses it), else files in the store folder (``log/``).

    A server store made before its log moved into the database (schema revision 0003) kept
    it in ``log/`` of this machine's store folder: an empty database log takes that one in,
    byte for byte (so its chain and signed head stay valid), and the folder is renamed
    ``log.in-database``. With both present, the database's log is the store's.
    """
    folder = FileLog(store_dir_of(store) / "log")
    table = store.certificate_log()
    if table is None:
        return folder
    if has_log(folder):
        _adopt(folder, table)
    return table


def _adopt(folder: FileLog, table: LogParts) -> None:
    with table.locked(exclusive=True), folder.locked(exclusive=False):
        if has_log(table):
            return
        data = folder.read(LOG_NAME)
        for line in _split_lines(folder.label(LOG_NAME), data):
            table.append_line(line)
        for name in (HEAD_NAME, SIGNED_HEAD_NAME):
            if folder.exists(name):
                table.write(name, folder.read(name))
    with contextlib.suppress(OSError):
        folder.dir.rename(folder.dir.with_name(folder.dir.name + ADOPTED_SUFFIX))


def has_log(log: LogParts) -> bool:
    """Whether anything of the log exists (lines or a head)."""
    return log.exists(LOG_NAME) or log.exists(HEAD_NAME)


def append(
    where: Path | LogParts,
    cert_sha256: str,
    run_id: str,
    key: PrivateKey | None = None,
    *,
    read_certificate: Callable[[str], bytes] | None = None,
) -> LogEntry:
    """Append one certificate to the log and rewrite its head; with ``key``, sign the new
    head too. ``read_certificate(sha256)`` gives a logged certificate's envelope bytes: a
    signed append then refuses a log that lost its signed head (see the module doc)."""
    if not re.fullmatch(_SHA256, cert_sha256):
        raise InputError(f"certificate sha256 {cert_sha256!r} is not 64 lowercase hex digits")
    if not run_id:
        raise InputError("cannot log a certificate without a run id")
    log = parts(where)
    with log.locked(exclusive=True):
        tail = _checked_tail(log, key, read_certificate)
        entry = LogEntry(
            seq=tail.seq + 1,
            prev_sha256=tail.line_sha256,
            cert_sha256=cert_sha256,
            run_id=run_id,
            time=_now(),
        )
        line = canonical_json(entry)
        size = log.append_line(line)
        _write_head(log, LogHead(seq=entry.seq, line_sha256=_sha256(line), size=size), key)
    return entry


def verify_log(where: Path | LogParts, trusted: list[PublicKey] | None = None) -> int:
    """Check the chain, the head, and the signed head against the lines it covers (its
    signature too, and that it exists, when ``trusted`` is given); return the entry count."""
    if isinstance(where, Path) and not where.is_dir():
        raise InputError(f"{where}: certificate log directory not found", hint="check the path")
    log = parts(where)
    with log.locked(exclusive=False):
        data = log.read(LOG_NAME)
        head = _read_head(log)
        signed = _signed_head(log, trusted, head)
    lines = _split_lines(log.label(LOG_NAME), data)
    _verify_chain(log.label(LOG_NAME), lines)
    _check_head(log, lines, len(data), head)
    if signed is not None:
        _check_signed_prefix(log, lines, signed, "")
    return len(lines)


def log_head(store: CertificateReader) -> str:
    """The sha256 of the store's certificate log's last line (``GENESIS`` when empty), after
    the chain is checked: what a spot-check's segment seed is derived from."""
    log = log_of(store)
    if not has_log(log):
        return GENESIS
    verify_log(log)
    head = _read_head(log)
    return head.line_sha256 if head else GENESIS


def read_entries(where: Path | LogParts) -> list[LogEntry]:
    """The log's entries, after ``verify_log`` (unsigned head) has passed."""
    verify_log(where)
    log = parts(where)
    lines = _split_lines(log.label(LOG_NAME), log.read(LOG_NAME))
    return [LogEntry.model_validate_json(line) for line in lines]


# -- appending ---------------------------------------------------------------------


def _checked_tail(log: LogParts, key: PrivateKey | None,
                  read_certificate: Callable[[str], bytes] | None) -> LogHead:
    """The head of the log as its lines say (the whole chain checked, so an append never
    extends an edited or reordered log); it must agree with the head part, and the lines
    must still be those the last signed head covers."""
    where = log.label(LOG_NAME)
    data = log.read(LOG_NAME)
    lines = _split_lines(where, data)
    _verify_chain(where, lines)
    actual = EMPTY_HEAD
    if lines:
        entry = _parse_entry(where, 0, lines[-1])
        actual = LogHead(seq=entry.seq, line_sha256=_sha256(lines[-1]), size=len(data))
    recorded = _read_head(log) or EMPTY_HEAD
    if recorded != actual:
        raise IntegrityError(
            f"{where}: refusing to append: the log ends at seq {actual.seq}, {HEAD_NAME} records "
            f"seq {recorded.seq} (or their hashes or sizes differ)",
            hint=_VERIFY_HINT,
        )
    if log.exists(SIGNED_HEAD_NAME):
        trusted = [key.public_key()] if key is not None else None
        signed = _open_signed_head(log, trusted)
        _check_signed_prefix(log, lines, signed, "refusing to append: ")
    elif key is not None and lines and read_certificate is not None:
        _refuse_lost_signed_head(log, lines, key, read_certificate)
    return actual


def _refuse_lost_signed_head(log: LogParts, lines: list[bytes], key: PrivateKey,
                             read_certificate: Callable[[str], bytes]) -> None:
    """A log holding a certificate signed with ``key`` had a head signed with it: signing
    over it now, without that head, would bless whatever was done to the log meanwhile."""
    public = [key.public_key()]
    for number, line in enumerate(lines, start=1):
        entry = _parse_entry(log.label(LOG_NAME), number, line)
        try:
            envelope = Envelope.model_validate_json(read_certificate(entry.cert_sha256))
            verify_envelope(envelope, envelope.payload_type, public, require_signature=True,
                            source=f"certificate sha256:{entry.cert_sha256[:12]}")
        except (ValidationError, AuditorError):
            continue  # unsigned, signed by another key, or unreadable: no proof of a head
        raise IntegrityError(
            f"{log.label(SIGNED_HEAD_NAME)}: missing, but line {number} logs a certificate "
            "signed with this key, so the log had a signed head: it was removed behind "
            "auditor's back; refusing to sign over the log as it is now",
            hint="restore certs.head.dsse.json from a copy (CI artifact) and run `audit fsck`",
        )


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


def _write_head(log: LogParts, head: LogHead, key: PrivateKey | None) -> None:
    data = canonical_json(head)
    log.write(HEAD_NAME, data)
    if key is not None:  # unsigned: the last signed head stays, covering a prefix
        log.write(SIGNED_HEAD_NAME, envelope_bytes(sign_payload(data, HEAD_PAYLOAD_TYPE, key)))


# -- verifying ---------------------------------------------------------------------


def _split_lines(path: str, data: bytes) -> list[bytes]:
    if not data:
        return []
    if not data.endswith(b"\n"):
        number = data.count(b"\n") + 1
        raise IntegrityError(
            f"{path}: line {number}: incomplete (no newline): the file was cut", hint=_VERIFY_HINT
        )
    return data[:-1].split(b"\n")


def _verify_chain(path: str, lines: list[bytes]) -> None:
    prev = GENESIS
    for number, line in enumerate(lines, start=1):
        _check_line(path, number, line, prev)
        prev = _sha256(line)


def _check_line(path: str, number: int, line: bytes, prev: str) -> None:
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


def _check_head(parts: LogParts, lines: list[bytes], size: int, head: LogHead | None) -> None:
    log, count = parts.label(LOG_NAME), len(lines)
    if head is None:
        if count:
            raise IntegrityError(
                f"{parts.label(HEAD_NAME)}: missing, but the log has {count} lines",
                hint=_VERIFY_HINT,
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


def _signed_head(log: LogParts, trusted: list[PublicKey] | None,
                 head: LogHead | None) -> LogHead | None:
    """The signed head (its signature checked with trusted keys; with them it must exist
    once the log has a head)."""
    if not log.exists(SIGNED_HEAD_NAME):
        if trusted and head is not None:
            raise IntegrityError(
                f"{log.label(SIGNED_HEAD_NAME)}: missing: the log head is not signed",
                hint="append with a signing key",
            )
        return None
    return _open_signed_head(log, trusted or None)


def _check_signed_prefix(log: LogParts, lines: list[bytes], signed: LogHead,
                         doing: str) -> None:
    """The lines the signed head covers must be those it signed: the same count up to its
    ``seq``, the same last line, the same bytes."""
    where = log.label(SIGNED_HEAD_NAME)
    if signed.seq > len(lines):
        raise IntegrityError(
            f"{where}: {doing}the signed head covers {signed.seq} lines but the log has "
            f"{len(lines)}: signed lines were deleted", hint=_VERIFY_HINT)
    covered = lines[:signed.seq]
    last = _sha256(covered[-1]) if covered else GENESIS
    size = sum(len(line) + 1 for line in covered)
    if last != signed.line_sha256 or size != signed.size:
        raise IntegrityError(
            f"{where}: {doing}line {signed.seq} of the log is not the line the signed head "
            "signed: lines it covers were edited, deleted or re-chained", hint=_VERIFY_HINT)


def _open_signed_head(log: LogParts, trusted: list[PublicKey] | None) -> LogHead:
    """The signed head's payload; its signature is checked only with ``trusted`` keys."""
    path = log.label(SIGNED_HEAD_NAME)
    try:
        envelope = Envelope.model_validate_json(log.read(SIGNED_HEAD_NAME))
        payload = verify_envelope(
            envelope, HEAD_PAYLOAD_TYPE, trusted, require_signature=trusted is not None,
            source=path
        )
    except ValidationError:
        raise IntegrityError(f"{path}: not a DSSE envelope", hint=_VERIFY_HINT) from None
    except IntegrityError:
        raise
    except AuditorError as exc:
        raise IntegrityError(exc.message, hint=_VERIFY_HINT) from None
    return _parse_head(path, payload)


# -- small parts -------------------------------------------------------------------


def _read_head(log: LogParts) -> LogHead | None:
    data = log.read(HEAD_NAME)
    return _parse_head(log.label(HEAD_NAME), data) if data else None


def _parse_head(path: str, data: bytes) -> LogHead:
    try:
        return LogHead.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(f"{path}: not a valid log head", hint=_VERIFY_HINT) from None


def _parse_entry(path: str, number: int, line: bytes) -> LogEntry:
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
