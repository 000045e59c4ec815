"""Content-addressed blob store: ``objects/sha256/ab/cdef…`` under the store root.

Writes stream into ``tmp/`` on the same filesystem, fsync, then ``os.replace`` into the
final name and fsync the directory, so no object ever exists under a digest its bytes do
not hash to (a crash leaves at most a stray temp file, which ``audit fsck --repair``
removes). Reads re-hash the bytes and raise ``IntegrityError`` naming the object on a
mismatch. The store is private to its owner: folders 0700, objects 0400 (another user,
such as a venv rerun's uid 1000, can read nothing in it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from auditor.core.errors import IntegrityError, StoreError
from auditor.core.safefile import fsync_dir

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    """Streamed sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _private_dir(path: Path, *, create: bool = True) -> None:
    """``path`` as a folder only its owner can enter (made when missing and ``create``)."""
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours (a shared store): leave its mode alone
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            # drop group/other bits only: an owner bit the user removed stays removed
            os.chmod(path, st.st_mode & 0o700)


class BlobStore:
    """Objects named by sha256 under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        """Where the object with this digest lives (whether or not it exists)."""
        if not _HEX64.fullmatch(sha256):
            raise IntegrityError(f"not a sha256 digest: {sha256[:80]!r}")
        return self.objects / sha256[:2] / sha256[2:]

    def make_private(self) -> None:
        """Close the store to other users: ``objects/`` and ``tmp/`` 0700, and the store
        folder itself when it is ours and holds only a store (its ``store.db``)."""
        for path in (self.root / "objects", self.objects, self.tmp):
            _private_dir(path)
        if (self.root / "store.db").exists():
            _private_dir(self.root, create=False)

    def has(self, sha256: str) -> bool:
        """True when the object is present (not verified)."""
        return self.path_for(sha256).is_file()

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Store bytes from a stream; returns (sha256, size). StoreError names the folder
        when the store cannot be written (read-only, full)."""
        try:
            return self._put_stream(stream)
        except OSError as exc:
            where = exc.filename or self.root
            raise StoreError(
                f"cannot write to the store: {where}: {exc.strerror or exc}"
            ) from None

    def _put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        if not self.tmp.is_dir():
            self.make_private()
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="obj-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._commit(Path(tmp_name), digest.hexdigest())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return digest.hexdigest(), size

    def _commit(self, tmp_path: Path, sha256: str) -> None:
        final = self.path_for(sha256)
        if final.is_file():
            tmp_path.unlink()
            return
        if not final.parent.is_dir():
            _private_dir(self.root / "objects")
            _private_dir(self.objects)
            final.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(tmp_path, 0o400)
        os.replace(tmp_path, final)
        fsync_dir(final.parent)

    def put_file(self, path: Path) -> tuple[str, int]:
        """Store a file's bytes; returns (sha256, size)."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below; read errors named apart
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
        with fh:
            return self.put_stream(fh)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes; returns (sha256, size)."""
        import io

        return self.put_stream(io.BytesIO(data))

    def verified_path(self, sha256: str, name: str = "") -> Path:
        """The object's path after re-hashing it; IntegrityError when missing or altered."""
        path = self.path_for(sha256)
        label = f"artifact {name!r} " if name else ""
        if not path.is_file():
            raise IntegrityError(f"{label}object sha256:{sha256} is missing from {self.objects}")
        actual = sha256_file(path)
        if actual != sha256:
            raise IntegrityError(
                f"{label}object sha256:{sha256} was altered (its bytes hash to {actual[:16]}…)",
                hint="run `audit fsck` to list affected runs",
            )
        return path

    def read_bytes(self, sha256: str, name: str = "") -> bytes:
        """The object's bytes, verified."""
        return self.verified_path(sha256, name).read_bytes()

    def rehash(self, sha256: str) -> str | None:
        """What the stored object's bytes hash to now (None when it is missing)."""
        path = self.path_for(sha256)
        return sha256_file(path) if path.is_file() else None

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        """Every stored object as (claimed sha256, path)."""
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            for obj in sorted(sub.iterdir()):
                yield sub.name + obj.name, obj

    def object_digests(self) -> Iterator[tuple[str, str]]:
        """(claimed, actual sha256) of every stored object."""
        for claimed, path in self.iter_objects():
            yield claimed, sha256_file(path)

    def stray_temp_files(self) -> list[Path]:
        """Leftovers of interrupted writes."""
        return sorted(self.tmp.iterdir()) if self.tmp.is_dir() else []
