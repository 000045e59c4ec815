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
import itertools
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from auditor.core.errors import IntegrityError, StoreError
from auditor.core.safefile import fsync_dir

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SERIAL = itertools.count()  # temp names unique within the process (pid before it)


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


def _new_temp(folder: str) -> tuple[int, str]:
    """A new file in ``folder`` (open for writing, mode 0400) and its name: the process id
    and a counter, another counter value past a stray name an earlier process left."""
    while True:
        name = os.path.join(folder, f"obj-{os.getpid()}-{next(_SERIAL)}")
        with contextlib.suppress(FileExistsError):
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), name


class BlobStore:
    """Objects named by sha256 under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        """Where the object with this digest lives (whether or not it exists)."""
        return Path(self._object_name(sha256))

    def _object_name(self, sha256: str) -> str:
        """``path_for`` as a string, for the hot paths (no pathlib objects)."""
        if not _HEX64.fullmatch(sha256):
            raise IntegrityError(f"not a sha256 digest: {sha256[:80]!r}")
        return f"{self.objects}/{sha256[:2]}/{sha256[2:]}"

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write that fails (read-only, full) as one StoreError naming the folder."""
        try:
            yield
        except OSError as exc:
            where = exc.filename or self.root
            raise StoreError(
                f"cannot write to the store: {where}: {exc.strerror or exc}"
            ) from None

    def _shard(self, folder: str) -> None:
        """The object folder ``folder`` (``objects/sha256/ab``), private, made when missing
        (by another writer at the same time, too)."""
        if not os.path.isdir(folder):
            _private_dir(self.root / "objects")
            _private_dir(self.objects)
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)

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
        with self._writing():
            return self._put_stream(stream)

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
        self._shard(os.fspath(final.parent))
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
        return self.put_many([data])[0]

    def put_many(self, items: Sequence[bytes]) -> list[tuple[str, int]]:
        """Store several small objects held in memory, with one durability barrier for
        all of them: every new object is written to ``tmp/`` and fsynced, then all are
        renamed into place and each folder renamed into is fsynced once. The guarantee
        is ``put_stream``'s, object by object; a checkpoint's files cost one pass over
        the store's folders instead of one per file. Returns (sha256, size) per item."""
        with self._writing():
            return self._put_many(items)

    def _put_many(self, items: Sequence[bytes]) -> list[tuple[str, int]]:
        out = [(hashlib.sha256(data).hexdigest(), len(data)) for data in items]
        todo = {sha: data for (sha, _), data in zip(out, items, strict=True)
                if not os.path.isfile(self._object_name(sha))}
        if not todo:
            return out
        if not self.tmp.is_dir():
            self.make_private()
        tmp_dir = os.fspath(self.tmp)
        written: list[tuple[str, str]] = []
        try:
            for sha, data in todo.items():
                fd, tmp_name = _new_temp(tmp_dir)
                written.append((tmp_name, sha))
                try:
                    os.fchmod(fd, 0o400)  # exact, whatever the umask
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            folders: set[str] = set()
            for tmp_name, sha in written:
                final = self._object_name(sha)
                folder = os.path.dirname(final)
                self._shard(folder)
                os.replace(tmp_name, final)
                folders.add(folder)
            for folder in sorted(folders):
                fsync_dir(Path(folder))
        finally:
            for tmp_name, _ in written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
        return out

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
