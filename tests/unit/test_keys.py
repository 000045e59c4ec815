"""Key files: generation, permissions, refusal to overwrite, and wrong formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.core.errors import InputError
from auditor.core.keys import generate_keypair, keyid, load_private_key, load_public_key


def test_generate_and_load_round_trip(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    assert (private_path.name, public_path.name) == ("auditor.key", "auditor.pub")
    private = load_private_key(private_path)
    public = load_public_key(public_path)
    assert keyid(private.public_key()) == keyid(public)
    public.verify(private.sign(b"message"), b"message")


def test_private_key_file_is_0600_and_pem_pkcs8(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path, "signer")
    assert private_path.stat().st_mode & 0o777 == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_overwrite_is_refused_and_files_are_kept(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    before = (private_path.read_bytes(), public_path.read_bytes())
    with pytest.raises(InputError, match="already exists"):
        generate_keypair(tmp_path)
    assert (private_path.read_bytes(), public_path.read_bytes()) == before


def test_existing_public_key_alone_blocks_generation(tmp_path: Path) -> None:
    (tmp_path / "auditor.pub").write_text("kept")
    with pytest.raises(InputError, match="already exists"):
        generate_keypair(tmp_path)
    assert not (tmp_path / "auditor.key").exists()
    assert (tmp_path / "auditor.pub").read_text() == "kept"


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_key_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="plain file name"):
        generate_keypair(tmp_path, name)


def test_keyid_is_sha256_of_raw_public_bytes() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keyid(public) == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_wrong_format_private_key_is_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a PEM private key") as info:
        load_private_key(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content", [b"", b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]
)
def test_wrong_format_public_key_is_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(path)


def test_halves_of_the_pair_are_not_interchangeable(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    with pytest.raises(InputError, match="is a public key"):
        load_private_key(public_path)
    with pytest.raises(InputError, match="is a private key"):
        load_public_key(private_path)


def test_keys_of_another_algorithm_are_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256K1())  # EC, but no NIST curve: unsupported
    private_path, public_path = tmp_path / "ec.key", tmp_path / "ec.pub"
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(InputError, match=r"unsupported private key type \(ECDSA secp256k1\)"):
        load_private_key(private_path)
    with pytest.raises(InputError, match=r"unsupported public key type \(ECDSA secp256k1\)"):
        load_public_key(public_path)


def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InputError, match="encrypted"):
        load_private_key(path)


def test_missing_key_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="private key file not found"):
        load_private_key(tmp_path / "absent.key")
    with pytest.raises(InputError, match="public key file not found"):
        load_public_key(tmp_path / "absent.pub")
