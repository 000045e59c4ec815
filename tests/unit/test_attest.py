"""Certificates other tools verify (issue 20 item 5), checked by independent implementations:
securesystemslib's DSSE ``Envelope`` verifies our envelopes signed with either key type,
and the real ``model_signing`` library's own signature of a folder carries the digest
``certify.attest.model_digest`` computes from per-file digests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from model_signing import signing
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from auditor.certify.attest import (
    VSA_PREDICATE,
    certificate_of_vsa,
    folder_files,
    is_vsa,
    model_digest,
    seal_vsa,
    vsa_statement,
)
from auditor.certify.certificate import (
    ReproductionPredicate,
    Subject,
    envelope_bytes,
    make_statement,
    open_envelope,
    seal,
)
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import (
    KEY_TYPES,
    generate_keypair,
    keyid,
    load_private_key,
    load_public_key,
)


def _statement(sha: str = "ab" * 32, verdict: str = "reproduced-bitwise") -> object:
    predicate = ReproductionPredicate(
        verdict=verdict, original_run="20260101-000000-aaaaaa", original_record_sha256="01" * 32,
        policy={"bitwise": False}, issued_at=datetime.now(UTC), auditor_version="test")
    return make_statement([Subject(name="model/w.safetensors", digest={"sha256": sha})],
                          predicate)


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_securesystemslib_verifies_our_envelope(tmp_path: Path, kind: str) -> None:
    private, public = generate_keypair(tmp_path, "k", kind)
    key, pub = load_private_key(private), load_public_key(public)
    data = envelope_bytes(seal(_statement(), key))  # type: ignore[arg-type]
    open_envelope(data, [pub], require_signature=True)  # ours accepts it
    theirs = sslib_key(pub)
    envelope = SslibEnvelope.from_dict(json.loads(data))
    assert theirs.keyid in envelope.verify([theirs], 1)
    # one flipped byte of the payload: securesystemslib refuses it too
    parsed = json.loads(data)
    payload = bytearray(base64.b64decode(parsed["payload"]))
    payload[10] ^= 1
    parsed["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(VerificationError):
        SslibEnvelope.from_dict(json.loads(json.dumps(parsed))).verify([theirs], 1)
    with pytest.raises(IntegrityError):
        open_envelope(json.dumps(parsed).encode(), [pub], require_signature=True)


def sslib_key(pub: object) -> SSlibKey:
    return SSlibKey.from_crypto(pub, keyid=keyid(pub))  # type: ignore[arg-type]


def test_unsupported_key_types_are_one_line(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(rsa)], check=True,
                   capture_output=True)
    with pytest.raises(InputError, match=r"unsupported private key type \(RSA\)"):
        load_private_key(rsa)
    k1 = tmp_path / "k1.key"
    pem = subprocess.run(["openssl", "ecparam", "-name", "secp256k1", "-genkey", "-noout"],
                         check=True, capture_output=True).stdout
    k1.write_bytes(subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt"], input=pem,
                                  check=True, capture_output=True).stdout)
    with pytest.raises(InputError, match=r"ECDSA secp256k1"):
        load_private_key(k1)
    with pytest.raises(InputError, match="key type 'dsa' is not supported"):
        generate_keypair(tmp_path, "x", "dsa")


def _tree(root: Path) -> None:
    for rel, data in {"w.safetensors": b"w" * 100, "a/b.json": b"{}", "a-b/c.txt": b"c",
                      "sub/deep/x.bin": os.urandom(64), "Z.md": b"z"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_model_digest_is_model_signings_subject(tmp_path: Path) -> None:
    """The real library signs the folder; its signed subject is our digest of the files
    (names where string order and path order differ: ``a-b/`` and ``a/``)."""
    model = tmp_path / "model"
    _tree(model)
    (model / ".gitignore").write_text("*.tmp\n")  # model_signing leaves git files out
    private, _ = generate_keypair(tmp_path, "ec", "ecdsa-p256")
    sig = tmp_path / "model.sig"
    signing.Config().use_elliptic_key_signer(private_key=private).sign(model, sig)
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    files = [(rel, hashlib.sha256(f.read_bytes()).hexdigest()) for rel, f in folder_files(model)]
    assert {rel for rel, _ in files} == {"w.safetensors", "a/b.json", "a-b/c.txt",
                                         "sub/deep/x.bin", "Z.md"}
    assert statement["subject"][0]["digest"]["sha256"] == model_digest(files)
    names = [r["name"] for r in statement["predicate"]["resources"]]
    assert sorted(names) == sorted(rel for rel, _ in files)


def test_a_model_folder_with_a_link_or_fifo_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    _tree(model)
    (model / "outside").symlink_to(tmp_path)
    with pytest.raises(InputError, match="a symbolic link in the model folder"):
        folder_files(model)
    (model / "outside").unlink()
    (model / "leak.safetensors").symlink_to("/etc/hostname")
    with pytest.raises(InputError, match="a symbolic link in the model folder"):
        folder_files(model)
    (model / "leak.safetensors").unlink()
    os.mkfifo(model / "pipe")
    with pytest.raises(InputError, match="not a regular file"):
        folder_files(model)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_vsa_round_trip_and_refusals(tmp_path: Path, kind: str) -> None:
    private, public = generate_keypair(tmp_path, "k", kind)
    key, pub = load_private_key(private), load_public_key(public)
    statement = _statement()
    data = envelope_bytes(seal_vsa(vsa_statement(statement, "cd" * 32,  # type: ignore[arg-type]
                                                 datetime.now(UTC)), key))
    assert is_vsa(data)
    payload = json.loads(base64.b64decode(json.loads(data)["payload"]))
    assert payload["predicateType"] == VSA_PREDICATE
    assert payload["predicate"]["verificationResult"] == "PASSED"
    assert payload["predicate"]["verifiedLevels"] == ["AUDITOR_REPRODUCED_BITWISE"]
    assert payload["subject"] == [{"name": "model/w.safetensors", "digest": {"sha256": "ab" * 32}}]
    assert certificate_of_vsa(data, [pub], "vsa") == "cd" * 32
    assert SslibEnvelope.from_dict(json.loads(data)).verify([sslib_key(pub)], 1)
    _, other_public = generate_keypair(tmp_path, "other", kind)
    with pytest.raises(IntegrityError, match="does not verify"):
        certificate_of_vsa(data, [load_public_key(other_public)], "vsa")
    failed = envelope_bytes(seal_vsa(vsa_statement(_statement(verdict="not-reproduced"),  # type: ignore[arg-type]
                                                   "cd" * 32, datetime.now(UTC)), key))
    with pytest.raises(IntegrityError, match="says 'FAILED'"):
        certificate_of_vsa(failed, [pub], "vsa")
