"""Content-addressed objects in remote storage by URL (``s3://bucket/prefix``) via fsspec.

The layout is the local one (``<prefix>/objects/sha256/ab/cdef…``), so a folder can be
synced to a bucket and back. Writes are create-only: the digest is computed first (a
stream is spooled to a local temp file, never held in memory), then the object is
uploaded under its final name with ``If-None-Match: *`` (s3fs ``mode="create"``),
multipart above ``2 * PART_SIZE``; an object that already exists is never overwritten
(an existing object of another size is an ``IntegrityError``). S3 makes an object
visible only when its upload completes, so a killed upload leaves nothing under the
digest's name. Every read streams the object through sha256 into the local cache
(a ``BlobStore``) and names the digest when the bytes do not match it.

Credentials come from where boto looks (``AWS_*`` variables, ``~/.aws`` files, instance
roles); the endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. A URL with
credentials in it is refused, so none ever reach a record, a log or a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from auditor.core.errors import IntegrityError, StoreError
from auditor.store.blobs import _HEX64, CHUNK, BlobStore, sha256_file

PART_SIZE = 8 << 20  # multipart part; at most MAX_CONCURRENCY parts in memory at once
MAX_CONCURRENCY = 2


def split_blob_url(url: str) -> tuple[str, str]:
    """(scheme, bucket/prefix) of a remote blob URL; StoreError for a malformed one."""
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise StoreError(
            f"artifact URL {parts.scheme}://…: credentials in the URL are refused",
            hint="give them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or in ~/.aws",
        )
    if not parts.scheme or not parts.netloc or parts.query or parts.fragment:
        raise StoreError(
            f"not an artifact URL: {url[:200]!r}", hint="use a folder, file:///path or s3://bucket/prefix"
        )
    return parts.scheme, (parts.netloc + parts.path).rstrip("/")


class RemoteBlobStore(BlobStore):
    """Objects named by sha256 under a remote URL; the inherited local ``BlobStore`` at
    ``cache_root`` is the verified read cache (``root`` stays the local working folder)."""

    def __init__(self, url: str, cache_root: Path) -> None:
        super().__init__(cache_root)
        scheme, base = split_blob_url(url)
        self.url = f"{scheme}://{base}"
        self.remote_objects = f"{self.url}/objects/sha256"
        self._base = base
        self.fs = _filesystem(scheme)

    # -- names --------------------------------------------------------------------------
    def key_for(self, sha256: str) -> str:
        """The remote key of the object with this digest."""
        if not _HEX64.fullmatch(sha256):
            raise IntegrityError(f"not a sha256 digest: {sha256[:80]!r}")
        return f"{self._base}/objects/sha256/{sha256[:2]}/{sha256[2:]}"

    def check_reachable(self) -> None:
        """Fail now, in one line, when the bucket is missing or the credentials wrong."""
        bucket = self._base.split("/", 1)[0]
        with self._errors("open"):
            if hasattr(self.fs, "call_s3"):  # s3fs: HEAD the bucket, so 403 is not "missing"
                try:
                    self.fs.call_s3("head_bucket", Bucket=bucket)
                except FileNotFoundError:
                    raise FileNotFoundError(f"bucket {bucket!r} does not exist") from None
            elif not self.fs.exists(bucket):
                raise FileNotFoundError(f"bucket {bucket!r} does not exist")

    def has(self, sha256: str) -> bool:
        """True when the object exists remotely (not verified)."""
        with self._errors("check"):
            return bool(self.fs.exists(self.key_for(sha256)))

    # -- writes -------------------------------------------------------------------------
    def put_file(self, path: Path, *, sha256: str | None = None) -> tuple[str, int]:
        """Upload a file under its digest unless that object exists; (sha256, size)."""
        try:
            digest = sha256 or sha256_file(path)
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
        key = self.key_for(digest)
        with self._errors(f"write sha256:{digest}"):
            if self._exists_with(key, digest, size):
                return digest, size
            try:
                self.fs.put_file(
                    str(path), key, mode="create", chunksize=PART_SIZE,
                    max_concurrency=MAX_CONCURRENCY,
                )
            except FileExistsError:  # another writer won the race with the same name
                self._exists_with(key, digest, size)
        return digest, size

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Spool a stream to a local temp file (hashing it), then ``put_file``."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="up-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            return self.put_file(Path(name), sha256=digest.hexdigest())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes; returns (sha256, size)."""
        digest = hashlib.sha256(data).hexdigest()
        key = self.key_for(digest)
        with self._errors(f"write sha256:{digest}"):
            if not self._exists_with(key, digest, len(data)):
                try:
                    self.fs.pipe_file(key, data, mode="create")
                except FileExistsError:
                    self._exists_with(key, digest, len(data))
        return digest, len(data)

    def put_many(self, items: Sequence[bytes]) -> list[tuple[str, int]]:
        """Store several objects held in memory, one after another."""
        return [self.put_bytes(data) for data in items]

    def _size_of(self, key: str) -> int | None:
        """The size of the object at ``key``; None when there is none. On S3 one HEAD:
        s3fs's ``info`` of a missing key also lists the key as a "folder", a request
        per new object whose cost grows with the bucket on some servers."""
        try:
            if hasattr(self.fs, "call_s3"):
                bucket, _, name = key.partition("/")
                head = self.fs.call_s3("head_object", self.fs.kwargs, Bucket=bucket, Key=name)
                return int(head["ContentLength"])
            return int(self.fs.info(key)["size"])
        except FileNotFoundError:
            return None

    def _exists_with(self, key: str, sha256: str, size: int) -> bool:
        found = self._size_of(key)
        if found is None:
            return False
        if found != size:
            raise IntegrityError(
                f"object sha256:{sha256} in {self.url} has {found} bytes, not {size}: "
                "it was altered; not overwritten",
                hint="run `audit fsck` to list affected runs",
            )
        return True

    # -- reads --------------------------------------------------------------------------
    def verified_path(self, sha256: str, name: str = "") -> Path:
        """A local copy of the object after re-hashing it; IntegrityError when altered."""
        if super().has(sha256):
            try:
                return super().verified_path(sha256, name)
            except IntegrityError:
                self._drop_cached(sha256)  # the remote object is the truth: fetch it again
        label = f"artifact {name!r} " if name else ""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="get-")
        try:
            with os.fdopen(fd, "wb") as out, self._errors(f"read sha256:{sha256}"):
                try:
                    remote = self._open(self.key_for(sha256))
                except FileNotFoundError:
                    raise IntegrityError(
                        f"{label}object sha256:{sha256} is missing from {self.remote_objects}",
                        hint="run `audit fsck` to list affected runs",
                    ) from None
                actual = _copy_hashing(remote, out)
            if actual != sha256:
                raise IntegrityError(
                    f"{label}object sha256:{sha256} in {self.url} was altered "
                    f"(its bytes hash to {actual[:16]}…)",
                    hint="run `audit fsck` to list affected runs",
                )
            with open(tmp_name, "rb") as fh:
                super().put_stream(fh)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return self.path_for(sha256)

    def read_bytes(self, sha256: str, name: str = "") -> bytes:
        """The object's bytes, verified."""
        return self.verified_path(sha256, name).read_bytes()

    def rehash(self, sha256: str) -> str | None:
        """What the remote object's bytes hash to now, streamed (None when missing)."""
        with self._errors(f"read sha256:{sha256}"):
            try:
                remote = self._open(self.key_for(sha256))
            except FileNotFoundError:
                return None
            return _copy_hashing(remote, None)

    # -- listing (fsck, push) -----------------------------------------------------------
    def digests(self) -> Iterator[str]:
        """Every object's name (claimed sha256)."""
        with self._errors("list"):
            try:
                keys = self.fs.find(f"{self._base}/objects/sha256")
            except FileNotFoundError:
                return
        for key in keys:
            parts = key.rsplit("/", 2)
            claimed = parts[-2] + parts[-1]
            if _HEX64.fullmatch(claimed):
                yield claimed

    def object_digests(self) -> Iterator[tuple[str, str]]:
        """(claimed, actual sha256) of every object, streamed through the hash."""
        for claimed in self.digests():
            with self._errors(f"read sha256:{claimed}"):
                actual = _copy_hashing(self._open(self.key_for(claimed)), None)
            yield claimed, actual

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        """Remote objects have no local path: use ``object_digests``."""
        raise StoreError(f"objects in {self.url} have no local paths")

    def _open(self, key: str) -> Any:
        self.fs.invalidate_cache(key)  # never trust a listing made before someone wrote
        return self.fs.open(key, "rb", block_size=CHUNK, cache_type="none")

    def _drop_cached(self, sha256: str) -> None:
        path = self.path_for(sha256)
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o644)
            path.unlink()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (IntegrityError, StoreError):
            raise
        except FileNotFoundError as exc:
            raise StoreError(f"artifact store {self.url}: cannot {doing}: {_first(exc)}",
                             hint="check that the bucket exists") from None
        except PermissionError as exc:
            raise StoreError(f"artifact store {self.url}: cannot {doing}: access denied "
                             f"({_first(exc)})", hint="check the AWS credentials") from None
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors have no common base
            raise StoreError(
                f"artifact store {self.url}: cannot {doing}: {type(exc).__name__}: {_first(exc)}",
                hint="check the endpoint (AWS_ENDPOINT_URL_S3) and the network",
            ) from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _copy_hashing(remote: Any, out: BinaryIO | None) -> str:
    digest = hashlib.sha256()
    with remote:
        while chunk := remote.read(CHUNK):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    return digest.hexdigest()


def _filesystem(scheme: str) -> Any:
    import fsspec

    options: dict[str, Any] = {}
    if scheme in ("s3", "s3a"):
        options = {
            "config_kwargs": {
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
            "skip_instance_cache": True,
        }
    try:
        return fsspec.filesystem(scheme, **options)
    except ImportError as exc:
        raise StoreError(
            f"no driver for {scheme}:// artifact URLs ({exc.name} is not installed)",
            hint="pip install 'auditor[s3]'",
        ) from None
    except ValueError as exc:
        raise StoreError(f"unknown artifact URL scheme {scheme!r}: {exc}") from None

