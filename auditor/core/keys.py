"""Signing keys for certificates, records and the certificate log: Ed25519 or ECDSA.

Contract:

- ``generate_keypair(dir, name, key_type)`` writes ``<name>.key`` (PEM PKCS#8,
  unencrypted, mode 0600) and ``<name>.pub`` (PEM SubjectPublicKeyInfo) and returns both
  paths. ``key_type`` is one of ``KEY_TYPES``: ``ed25519`` (the default) or
  ``ecdsa-p256`` / ``ecdsa-p384`` / ``ecdsa-p521`` (NIST curves: the only keys OpenSSF
  model signing verifies, so a team that signs models with ``model_signing`` can use one
  key for both). It never overwrites: if either file exists it raises ``InputError`` and
  writes nothing. ``dir`` must be missing or a real folder (``core.safefile``: a device,
  FIFO or link is refused); each file is written whole (temp file, fsync, hard link).
- ``load_private_key`` / ``load_public_key`` return a supported key or raise a one-line
  ``InputError`` for a missing file, a file that is not PEM, the other half of the pair,
  an encrypted private key, or a key of another algorithm or curve (RSA, secp256k1, ...).
- ``sign(key, data)`` signs: Ed25519 as such; ECDSA over SHA-256 (P-256), SHA-384 (P-384)
  or SHA-512 (P-521), DER-encoded (what DSSE, sigstore and model_signing use).
  ``verifies(public_key, signature, data)`` is its check and never raises.
- ``keyid(public_key)`` is the DSSE ``keyid`` hint we write: for Ed25519 the sha256 hex
  of the 32 raw public key bytes (unchanged since 0.1), for ECDSA the sha256 hex of the
  DER SubjectPublicKeyInfo. It is a hint only; verification tries every trusted key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from auditor.core.capped import KEY_LIMIT, read_capped
from auditor.core.errors import InputError
from auditor.core.safefile import check_folder, write_new

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
KEYGEN_HINT = "generate a key pair with `audit keys generate`"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
# key type name -> the NIST curve and the hash its ECDSA signatures use (None: Ed25519)
_CURVES: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm]]] = {
    "ecdsa-p256": (ec.SECP256R1, hashes.SHA256),
    "ecdsa-p384": (ec.SECP384R1, hashes.SHA384),
    "ecdsa-p521": (ec.SECP521R1, hashes.SHA512),
}
KEY_TYPES = ("ed25519", *_CURVES)


def generate_keypair(dir: Path, name: str = "auditor",
                     key_type: str = "ed25519") -> tuple[Path, Path]:
    """Create a new key pair under ``dir``; return (private_path, public_path)."""
    if key_type not in KEY_TYPES:
        raise InputError(f"key type {key_type!r} is not supported",
                         hint=f"use one of: {', '.join(KEY_TYPES)}")
    if not _NAME.fullmatch(name):
        raise InputError(
            f"key name {name!r} is not a plain file name", hint="use letters, digits, '.', '_', '-'"
        )
    private_path = dir / f"{name}{PRIVATE_SUFFIX}"
    public_path = dir / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise InputError(
                f"{path}: key file already exists",
                hint="choose another name or directory; keys are never overwritten",
            )
    check_folder(dir)  # /dev/full, a link, a FIFO: refused, nothing made
    key: PrivateKey = (Ed25519PrivateKey.generate() if key_type == "ed25519"
                       else ec.generate_private_key(_CURVES[key_type][0]()))
    write_new(private_path, _private_pem(key), 0o600)
    try:
        write_new(public_path, _public_pem(key.public_key()), 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)  # no half pair left behind
        raise
    return private_path, public_path


def load_private_key(path: Path) -> PrivateKey:
    """Read an unencrypted PEM PKCS#8 private key of a supported type."""
    data = _read_key_file(path, "private")
    if b"PUBLIC KEY-----" in data:
        raise InputError(
            f"{path}: is a public key, not a private key", hint=f"give the {PRIVATE_SUFFIX} file"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(
            f"{path}: encrypted private keys are not supported", hint=KEYGEN_HINT
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not a PEM private key", hint=KEYGEN_HINT) from None
    if not isinstance(key, Ed25519PrivateKey) and not _supported_curve(key):
        raise InputError(
            f"{path}: unsupported private key type ({_algorithm(key)})",
            hint=f"keys must be one of {', '.join(KEY_TYPES)}; {KEYGEN_HINT}",
        )
    return key  # type: ignore[return-value]  # narrowed by the checks above


def load_public_key(path: Path) -> PublicKey:
    """Read a PEM SubjectPublicKeyInfo public key of a supported type."""
    data = _read_key_file(path, "public")
    if b"PRIVATE KEY-----" in data:
        raise InputError(
            f"{path}: is a private key, not a public key",
            hint=f"give the {PUBLIC_SUFFIX} file; never share the private key",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path}: not a PEM public key", hint=KEYGEN_HINT) from None
    if not isinstance(key, Ed25519PublicKey) and not _supported_curve(key):
        raise InputError(
            f"{path}: unsupported public key type ({_algorithm(key)})",
            hint=f"keys must be one of {', '.join(KEY_TYPES)}; {KEYGEN_HINT}",
        )
    return key  # type: ignore[return-value]  # narrowed by the checks above


def type_of(key: PrivateKey | PublicKey) -> str:
    """The ``KEY_TYPES`` name of a key."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return "ed25519"
    return next(name for name, (curve, _) in _CURVES.items() if isinstance(key.curve, curve))


def sign(key: PrivateKey, data: bytes) -> bytes:
    """A signature of ``data``: Ed25519, or DER ECDSA over the curve's hash."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(_CURVES[type_of(key)][1]()))


def verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature of ``data``."""
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(_CURVES[type_of(key)][1]()))
    except InvalidSignature:
        return False
    return True


def keyid(public_key: PublicKey) -> str:
    """Ed25519: sha256 hex of the raw 32-byte key; ECDSA: of the DER SubjectPublicKeyInfo."""
    if isinstance(public_key, Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public_key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(raw).hexdigest()


def _supported_curve(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and any(
        isinstance(key.curve, curve) for curve, _ in _CURVES.values())


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: {kind} key file not found", hint=KEYGEN_HINT)
    return read_capped(path, KEY_LIMIT, f"{kind} key")  # /dev/zero, a FIFO: refused


def _algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return (
        type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
        or "unknown"
    )
