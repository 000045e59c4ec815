"""Ed25519 signing keys for certificates and the certificate log.

Contract:

- ``generate_keypair(dir, name)`` writes ``<name>.key`` (PEM PKCS#8, unencrypted, mode
  0600) and ``<name>.pub`` (PEM SubjectPublicKeyInfo) and returns both paths. It never
  overwrites: if either file exists it raises ``InputError`` and writes nothing. ``dir``
  must be missing or a real folder (``core.safefile``: a device, FIFO or link is refused);
  each file is written whole (temp file, fsync, hard link: never over anything).
- ``load_private_key`` / ``load_public_key`` return Ed25519 keys or raise a one-line
  ``InputError`` for a missing file, a file that is not PEM, the other half of the pair,
  an encrypted private key, or a key of another algorithm.
- ``keyid(public_key)`` is the sha256 hex of the 32 raw public key bytes: the DSSE
  ``keyid`` hint we write. It is a hint only; verification tries every trusted key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
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


def generate_keypair(dir: Path, name: str = "auditor") -> tuple[Path, Path]:
    """Create a new Ed25519 key pair under ``dir``; return (private_path, public_path)."""
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
    key = Ed25519PrivateKey.generate()
    write_new(private_path, _private_pem(key), 0o600)
    try:
        write_new(public_path, _public_pem(key.public_key()), 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)  # no half pair left behind
        raise
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM PKCS#8 Ed25519 private key."""
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
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(
            f"{path}: not an Ed25519 private key ({_algorithm(key)})", hint=KEYGEN_HINT
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM SubjectPublicKeyInfo Ed25519 public key."""
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
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key ({_algorithm(key)})", hint=KEYGEN_HINT)
    return key


def keyid(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: {kind} key file not found", hint=KEYGEN_HINT)
    return read_capped(path, KEY_LIMIT, f"{kind} key")  # /dev/zero, a FIFO: refused


def _algorithm(key: object) -> str:
    return (
        type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
        or "unknown"
    )
