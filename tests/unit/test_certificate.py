"""Certificates: DSSE conformance (T14), tamper evidence (T10), formats and files."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.certify.certificate import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Envelope,
    ReproductionPredicate,
    Signature,
    Statement,
    Subject,
    canonical_json,
    envelope_bytes,
    file_sha256,
    make_statement,
    open_envelope,
    pae,
    read_certificate,
    seal,
    subject_matches,
    write_certificate,
)
from auditor.core.errors import AuditorError, InputError, IntegrityError
from auditor.core.keys import keyid

WEIGHTS_SHA = "ab" * 32


def _predicate(**changes: Any) -> ReproductionPredicate:
    fields: dict[str, Any] = {
        "verdict": "not-reproduced",
        "original_run": "20240101-000000-aaaaaa",
        "rerun_run": "20240102-000000-bbbbbb",
        "original_record_sha256": "01" * 32,
        "rerun_record_sha256": "02" * 32,
        "image": "sha256:" + "03" * 32,
        "environment_sha256": "04" * 32,
        "policy": {"bitwise": False},
        "summary": {"differences": 3, "beyond_tolerance": 1},
        "causes": ["cudnn.benchmark enabled"],
        "notes": ["gpu mismatch allowed"],
        "issued_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "auditor_version": "0.1.0",
    }
    fields.update(changes)
    return ReproductionPredicate(**fields)


def _statement(**changes: Any) -> Statement:
    subject = Subject(name="model.safetensors", digest={"sha256": WEIGHTS_SHA})
    return make_statement([subject], _predicate(**changes))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _signed(statement: Statement, key: Ed25519PrivateKey) -> bytes:
    return envelope_bytes(seal(statement, key))


def _raw(envelope: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(envelope)
    return data


def _payload(envelope: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.b64decode(_raw(envelope)["payload"]))
    return data


def _with_payload(envelope: bytes, payload: dict[str, Any]) -> bytes:
    raw = _raw(envelope)
    raw["payload"] = base64.b64encode(canonical_json(payload)).decode()
    return canonical_json(raw)


def _resigned(payload: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    body = canonical_json(payload)
    sig = base64.b64encode(key.sign(pae(PAYLOAD_TYPE, body))).decode()
    return canonical_json(
        {
            "payload": base64.b64encode(body).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": keyid(key.public_key()), "sig": sig}],
        }
    )


# -- T14: DSSE conformance ------------------------------------------------------------


def test_pae_matches_the_dsse_spec_vector() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 " + "é".encode()


def test_ed25519_round_trip_and_one_bit_change_raises(key: Ed25519PrivateKey) -> None:
    message = pae(PAYLOAD_TYPE, b'{"a":1}')
    sig = key.sign(message)
    key.public_key().verify(sig, message)
    flipped = bytes([message[0] ^ 1]) + message[1:]
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig, flipped)


def test_seal_and_open_round_trip(key: Ed25519PrivateKey) -> None:
    statement = _statement()
    opened = open_envelope(_signed(statement, key), [key.public_key()], require_signature=True)
    assert opened == statement
    assert opened.type_ == STATEMENT_TYPE
    assert opened.predicate_type == PREDICATE_TYPE


def test_envelope_has_the_dsse_shape(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key))
    assert set(raw) == {"payload", "payloadType", "signatures"}
    assert raw["payloadType"] == PAYLOAD_TYPE
    assert raw["signatures"][0]["keyid"] == keyid(key.public_key())
    assert set(_payload(_signed(_statement(), key))) == {
        "_type",
        "subject",
        "predicateType",
        "predicate",
    }


def test_one_bit_flip_anywhere_in_the_payload_fails(key: Ed25519PrivateKey) -> None:
    envelope = _signed(_statement(), key)
    body = base64.b64decode(_raw(envelope)["payload"])
    for index in range(len(body)):
        tampered = bytearray(body)
        tampered[index] ^= 1 << (index % 8)
        raw = _raw(envelope) | {"payload": base64.b64encode(bytes(tampered)).decode()}
        with pytest.raises(IntegrityError, match="signature does not verify"):
            open_envelope(canonical_json(raw), [key.public_key()], require_signature=True)


# -- T10: tampering -------------------------------------------------------------------


def test_edited_predicate_field_fails(key: Ed25519PrivateKey) -> None:
    envelope = _signed(_statement(), key)
    payload = _payload(envelope)
    payload["predicate"]["verdict"] = "reproduced-bitwise"
    with pytest.raises(IntegrityError, match="signature does not verify") as info:
        open_envelope(_with_payload(envelope, payload), [key.public_key()], require_signature=True)
    assert info.value.exit_code == 3


def test_changed_payload_type_fails(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key)) | {"payloadType": "application/json"}
    for required in (True, False):
        with pytest.raises(IntegrityError, match="payloadType changed"):
            open_envelope(canonical_json(raw), [key.public_key()], require_signature=required)


def test_signature_of_another_statement_fails(key: Ed25519PrivateKey) -> None:
    victim = _raw(_signed(_statement(verdict="not-reproduced"), key))
    other = _raw(_signed(_statement(verdict="reproduced-bitwise"), key))
    victim["signatures"] = other["signatures"]
    with pytest.raises(IntegrityError, match="signature does not verify"):
        open_envelope(canonical_json(victim), [key.public_key()], require_signature=True)


def test_removed_signature_fails_when_required(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key)) | {"signatures": []}
    with pytest.raises(IntegrityError, match="no signature"):
        open_envelope(canonical_json(raw), [key.public_key()], require_signature=True)
    assert (
        open_envelope(canonical_json(raw), [key.public_key()], require_signature=False)
        == _statement()
    )


def test_unsigned_certificate_is_accepted_only_when_allowed() -> None:
    envelope = envelope_bytes(seal(_statement(), None))
    assert _raw(envelope)["signatures"] == []
    assert open_envelope(envelope, None, require_signature=False) == _statement()
    with pytest.raises(IntegrityError, match="no signature"):
        open_envelope(envelope, None, require_signature=True)


def test_unknown_fields_are_ignored_after_resigning(key: Ed25519PrivateKey) -> None:
    payload = _payload(_signed(_statement(), key))
    payload["futureField"] = {"x": 1}
    payload["predicate"]["new_metric"] = 0.5
    payload["subject"][0]["annotations"] = {"k": "v"}
    opened = open_envelope(_resigned(payload, key), [key.public_key()], require_signature=True)
    assert opened == _statement()
    assert "futureField" not in _payload(_signed(opened, key))
    assert "new_metric" not in _payload(_signed(opened, key))["predicate"]


def test_unknown_envelope_fields_are_ignored(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key)) | {"extra": True}
    assert (
        open_envelope(canonical_json(raw), [key.public_key()], require_signature=True)
        == _statement()
    )


def test_wrong_key_fails(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(IntegrityError, match="signature does not verify"):
        open_envelope(_signed(_statement(), key), [other], require_signature=True)


def test_any_trusted_key_may_verify_and_keyid_is_only_a_hint(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key))
    raw["signatures"] = [
        Signature(keyid="bogus", sig="AAAA").model_dump(),
        raw["signatures"][0] | {"keyid": ""},
    ]
    trusted = [Ed25519PrivateKey.generate().public_key(), key.public_key()]
    assert open_envelope(canonical_json(raw), trusted, require_signature=True) == _statement()


def test_signature_required_without_trusted_keys_is_input_error(key: Ed25519PrivateKey) -> None:
    with pytest.raises(InputError, match="no trusted public key"):
        open_envelope(_signed(_statement(), key), [], require_signature=True)


def test_signed_but_not_checked_when_reading_without_keys(key: Ed25519PrivateKey) -> None:
    assert open_envelope(_signed(_statement(), key), None, require_signature=False) == _statement()


# -- unknown formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"not json",
        b"[]",
        b'"text"',
        b"{}",
        b'{"payload": 1}',
        b"[" * 100_000,
    ],
)
def test_unknown_certificate_format_is_input_error(data: bytes) -> None:
    with pytest.raises(InputError, match="unknown certificate format") as info:
        open_envelope(data, None, require_signature=False)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_payload_that_is_not_base64_is_input_error() -> None:
    envelope = canonical_json({"payload": "***", "payloadType": PAYLOAD_TYPE, "signatures": []})
    with pytest.raises(InputError, match="not base64"):
        open_envelope(envelope, None, require_signature=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"_type": "https://in-toto.io/Statement/v0.1"}, "not an in-toto Statement v1"),
        ({"predicateType": "https://slsa.dev/provenance/v1"}, "predicateType"),
        ({"subject": []}, "invalid statement: subject"),
    ],
)
def test_signed_payload_of_another_kind_is_input_error(
    key: Ed25519PrivateKey, change: dict[str, Any], message: str
) -> None:
    payload = _payload(_signed(_statement(), key)) | change
    with pytest.raises(InputError, match=message):
        open_envelope(_resigned(payload, key), [key.public_key()], require_signature=True)


def test_newer_schema_version_is_refused(key: Ed25519PrivateKey) -> None:
    payload = _payload(_signed(_statement(), key))
    payload["predicate"]["schema_version"] = 2
    with pytest.raises(InputError, match="schema_version 2"):
        open_envelope(_resigned(payload, key), [key.public_key()], require_signature=True)


def test_url_safe_base64_payload_is_accepted(key: Ed25519PrivateKey) -> None:
    raw = _raw(_signed(_statement(), key))
    body = base64.b64decode(raw["payload"])
    raw["payload"] = base64.urlsafe_b64encode(body).decode()
    assert (
        open_envelope(canonical_json(raw), [key.public_key()], require_signature=True)
        == _statement()
    )


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_auditor_errors(data: bytes) -> None:
    with pytest.raises(AuditorError):
        open_envelope(data, None, require_signature=False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    payload=st.one_of(st.binary(max_size=64), _json.map(lambda v: json.dumps(v).encode())),
    extra=st.dictionaries(
        st.sampled_from(["_type", "predicateType", "subject", "predicate"]), _json
    ),
    signatures=st.lists(
        st.fixed_dictionaries({"keyid": st.text(max_size=8), "sig": st.text(max_size=90)})
    ),
    key_given=st.booleans(),
)
def test_arbitrary_envelopes_raise_only_auditor_errors(
    payload: bytes, extra: dict[str, Any], signatures: list[dict[str, str]], key_given: bool
) -> None:
    if extra:
        payload = json.dumps(
            {"_type": STATEMENT_TYPE, "predicateType": PREDICATE_TYPE} | extra
        ).encode()
    envelope = json.dumps(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": signatures,
        }
    ).encode()
    trusted = [Ed25519PrivateKey.generate().public_key()] if key_given else None
    with contextlib.suppress(AuditorError):
        open_envelope(envelope, trusted, require_signature=False)


# -- canonical JSON and the predicate -------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", 2.5]}) == '{"a":["é",2.5],"b":1}'.encode()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_canonical_json_refuses_non_finite_floats(bad: float) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_json({"x": [bad]})
    with pytest.raises(ValueError, match="summary"):
        canonical_json(_statement(summary={"loss": bad}))


def test_canonical_json_of_a_model_uses_json_names() -> None:
    text = canonical_json(_statement()).decode()
    assert text.startswith('{"_type":')
    assert '"predicateType":' in text
    assert '"issued_at":"2024-05-01T12:00:00Z"' in text


def test_issued_at_must_be_aware_and_is_stored_in_utc() -> None:
    with pytest.raises(ValueError, match="time zone"):
        _predicate(issued_at=datetime(2024, 5, 1, 12, 0))
    plus_two = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert _predicate(issued_at=plus_two).issued_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert _predicate(issued_at=plus_two).issued_at.utcoffset() == timedelta(0)


def test_envelope_model_reads_its_json_names() -> None:
    envelope = Envelope.model_validate(
        {"payload": "", "payloadType": "t", "signatures": [{"sig": ""}]}
    )
    assert envelope.payload_type == "t"
    assert envelope.signatures[0].keyid == ""


# -- files ----------------------------------------------------------------------------


def test_subject_matches_by_sha256(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    statement = make_statement(
        [Subject(name="renamed.bin", digest={"sha256": hashlib.sha256(b"weights v1").hexdigest()})],
        _predicate(),
    )
    assert subject_matches(statement, weights)
    weights.write_bytes(b"weights v2")
    assert not subject_matches(statement, weights)


def test_file_sha256_streams_and_reports_missing_files(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024 + 7))
    assert file_sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="file not found"):
        file_sha256(tmp_path / "absent")


def test_write_and_read_certificate(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "certs" / "run.dsse.json"
    envelope = seal(_statement(), key)
    digest = write_certificate(envelope, path)
    assert digest == file_sha256(path)
    assert read_certificate(path) == envelope_bytes(envelope)
    assert (
        open_envelope(read_certificate(path), [key.public_key()], require_signature=True)
        == _statement()
    )
    assert [p.name for p in path.parent.iterdir()] == ["run.dsse.json"]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_certificate_replaces_atomically(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "cert.json"
    write_certificate(seal(_statement(verdict="not-reproduced"), key), path)
    write_certificate(seal(_statement(verdict="reproduced-bitwise"), key), path)
    opened = open_envelope(read_certificate(path), [key.public_key()], require_signature=True)
    assert opened.predicate.verdict == "reproduced-bitwise"


def test_read_missing_certificate_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="certificate not found"):
        read_certificate(tmp_path / "absent.json")
