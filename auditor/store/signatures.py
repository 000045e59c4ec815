"""Record signatures: with a key configured, every record is signed when it is written.

A record's digest sits in the same row as the record, so someone who can write the
database can rewrite both consistently (issue 8, finding 5). With ``AUDITOR_SIGN_KEY``
naming an Ed25519 private key (``audit keys generate``), every ``put_record`` also writes
a DSSE-style signature of the record's sha256 into the store's key/value ``meta`` table
(key ``record-sig:<run id>``) in the same transaction. A rewrite without the key then
leaves a signature for another version of the record (``state``), and
``audit fsck --key`` verifies every signature.
``audit show`` and ``audit list`` say when a record is unsigned.

No schema change: the ``meta`` table exists in every store revision.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from auditor.store.base import MetaStore, RecordReader

if TYPE_CHECKING:  # cryptography is imported only when a key is used (fast start-up)
    import sqlalchemy as sa

    from auditor.core.keys import PrivateKey, PublicKey
    from auditor.core.schema import RunRecord

PAYLOAD_TYPE = "application/vnd.auditor.record-sha256"
KEY_ENV = "AUDITOR_SIGN_KEY"
PREFIX = "record-sig:"  # rows of the store's key/value ``meta`` table: no schema change


@dataclass(frozen=True)
class RecordSignature:
    """The stored signature of one run's record."""

    run_id: str
    record_sha256: str
    keyid: str
    sig: str



class SignedRecords(RecordReader, MetaStore, Protocol):
    """Records and the signatures beside them in ``meta``."""

def _pae(digest: str) -> bytes:
    kind, payload = PAYLOAD_TYPE.encode(), digest.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def configured_key() -> PrivateKey | None:
    """The signing key named by ``AUDITOR_SIGN_KEY`` (``InputError`` when unusable)."""
    from auditor.core.keys import load_private_key

    path = os.environ.get(KEY_ENV)
    return load_private_key(Path(path)) if path else None


def signer(key: PrivateKey) -> Callable[[sa.Connection, RunRecord], None]:
    """A ``SqlStore.on_record`` hook that signs each record in its write transaction."""
    from auditor.core.keys import keyid
    from auditor.core.keys import sign as sign_with
    from auditor.core.schema import record_sha256
    from auditor.store.sql_schema import t_meta

    ident = keyid(key.public_key())

    def sign(conn: sa.Connection, record: RunRecord) -> None:
        digest = record_sha256(record)
        sig = base64.b64encode(sign_with(key, _pae(digest))).decode()
        value = json.dumps({"record_sha256": digest, "keyid": ident, "sig": sig})
        where = t_meta.c.key == PREFIX + record.identity.id
        conn.execute(t_meta.delete().where(where))
        conn.execute(t_meta.insert().values(key=PREFIX + record.identity.id, value=value))

    return sign


def _parse(key: str, value: str) -> RecordSignature | None:
    try:
        data = json.loads(value)
        return RecordSignature(key.removeprefix(PREFIX), str(data["record_sha256"]),
                               str(data["keyid"]), str(data["sig"]))
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable signature row counts as no signature


def signature_of(store: MetaStore, run_id: str) -> RecordSignature | None:
    """The stored signature of a run's record, if any."""
    value = store.get_meta(PREFIX + run_id)
    return None if value is None else _parse(PREFIX + run_id, value)


def all_signatures(store: MetaStore) -> Iterator[RecordSignature]:
    """Every stored record signature."""
    for key, value in store.meta_items(PREFIX):
        sig = _parse(key, value)
        if sig is not None:
            yield sig


def signed_run_ids(store: SignedRecords) -> set[str]:
    """Runs whose current record digest is the one that was signed."""
    sigs = {s.run_id: s.record_sha256 for s in all_signatures(store)}
    if not sigs:
        return set()
    return {run_id for run_id, sha in store.run_versions().items() if sigs.get(run_id) == sha}


def state(record: RunRecord, sig: RecordSignature | None) -> str:
    """One line for ``audit show``: signed, unsigned, or signed for another version."""
    from auditor.core.schema import record_sha256

    if sig is None:
        return (f"none: this record is unsigned (set {KEY_ENV} to a key from `audit keys "
                "generate` to sign records when they are written)")
    if sig.record_sha256 != record_sha256(record):
        return ("for another version of this record: it was rewritten after it was signed "
                "(run `audit fsck --key KEY.pub`)")
    return f"signed, keyid {sig.keyid[:16]}… (check it with `audit fsck --key KEY.pub`)"


def problems(store: SignedRecords, trusted: list[PublicKey]) -> list[str]:
    """Signatures that do not match their record, or (with keys) do not verify."""
    from auditor.core.schema import record_sha256

    found = []
    for sig in all_signatures(store):
        try:
            record = store.get_record(sig.run_id)
        except Exception:  # noqa: BLE001 - fsck reports a bad record on its own
            continue
        if sig.record_sha256 != record_sha256(record):
            found.append(f"run {sig.run_id}: record changed after it was signed (signed "
                         f"sha256:{sig.record_sha256[:16]}…)")
        elif trusted and not verifies(sig, trusted):
            found.append(f"run {sig.run_id}: record signature does not verify with any "
                         f"trusted key (signed by {sig.keyid[:12]})")
    return found


def verifies(sig: RecordSignature, trusted: list[PublicKey]) -> bool:
    """True when the signature verifies with one of the trusted keys."""
    from auditor.core.keys import verifies as checks

    try:
        raw = base64.b64decode(sig.sig, validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(checks(key, raw, _pae(sig.record_sha256)) for key in trusted)
