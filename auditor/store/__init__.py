"""Open the run store named by ``--store``, ``AUDITOR_STORE``, ``auditor.toml`` or the default.

The default is ``.auditor/`` at the root of the git repository that holds the current
directory (the current directory itself outside git). A plain path names a store
directory (``store.db`` + ``objects/``); anything with ``://`` is a SQLAlchemy URL
(``sqlite:////abs/path.db``, ``postgresql+psycopg://…``). Artifacts go to the folder or
URL of ``--blobs`` / ``AUDITOR_BLOBS`` / ``[store] blobs``, else beside a SQLite store,
else where a server store remembers them (``store/location.py`` has the whole order).
SQLite in WAL mode is refused on network filesystems, where its locking is unsafe.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.core.errors import StoreError
from auditor.store.base import CertificateRow, HasBlobs, MetricPoint, RunStore, RunSummary
from auditor.store.blobs import BlobStore, sha256_file
from auditor.store.location import cache_dir_for, is_local_blobs, local_blob_dir, read_config
from auditor.store.records import parse_record, validate_run_ref

if TYPE_CHECKING:  # SQLAlchemy and fsspec load on first use: `audit list` needs neither
    from auditor.store.remote import RemoteBlobStore
    from auditor.store.sql import SqlStore

_LAZY = {"SqlStore": "auditor.store.sql", "RemoteBlobStore": "auditor.store.remote"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlobStore",
    "CertificateRow",
    "MetricPoint",
    "RemoteBlobStore",
    "RunStore",
    "RunSummary",
    "SqlStore",
    "default_store_dir",
    "open_store",
    "open_store_at",
    "parse_record",
    "repo_root",
    "server_location",
    "sha256_file",
    "store_dir_of",
    "validate_run_ref",
]

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "sshfs", "9p", "afs", "ceph", "glusterfs", "lustre"}
)


def repo_root(start: Path) -> Path | None:
    """The git work tree holding ``start``, or None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def default_store_dir(cwd: Path | None = None) -> Path:
    """``.auditor`` at the repository root, else in the current directory."""
    here = (cwd or Path.cwd()).resolve()
    return (repo_root(here) or here) / ".auditor"


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount point in /proc/mounts)."""
    target, best, kind = str(path.resolve()), "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _guard_local(directory: Path) -> None:
    kind = filesystem_type(directory)
    if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse"):
        raise StoreError(
            f"store {directory} is on a {kind} filesystem, where SQLite's WAL locking is unsafe",
            hint="put the store on a local disk or use a PostgreSQL URL with --store",
        )


def keep_out_of_git(directory: Path) -> None:
    """A new store's ``.gitignore`` (``*``, as DVC writes ``.dvc/.gitignore``): ``git add
    -A`` never commits the store, whose files would otherwise join the recorded tree."""
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# written by auditor: the run store stays out of git\n*\n")


def store_dir_of(store: HasBlobs) -> Path:
    """The directory that holds the store's blobs (and, for SQLite, its database)."""
    return store.blobs.root


def open_store(
    location: str | None = None, *, blobs: str | None = None, create: bool = True
) -> RunStore:
    """Open (and by default create) the store at ``location`` with artifacts at ``blobs``
    (see ``store/location.py`` for where each comes from when not given). With
    ``AUDITOR_SIGN_KEY`` set, every record the store writes is signed (``signatures``)."""
    from auditor.store import signatures

    store = _open_store(location, blobs=blobs, create=create)
    key = signatures.configured_key()
    if key is not None:
        store.on_record = signatures.signer(key)
    return store


def _locate(location: str | None, blobs: str | None) -> tuple[str, str | None]:
    """The store location and artifact location in force (``store/location.py``)."""
    location = location or os.environ.get("AUDITOR_STORE")
    blobs = blobs or os.environ.get("AUDITOR_BLOBS")
    if not location or (not blobs and "://" in location and not location.startswith("sqlite")):
        config = read_config(repo_root(Path.cwd()) or Path.cwd())  # one git call: only if needed
        location = location or config.url or str(default_store_dir())
        blobs = blobs or config.blobs
    return location, blobs


def _open_store(location: str | None, *, blobs: str | None, create: bool) -> SqlStore:
    location, blobs = _locate(location, blobs)
    return _open_at(location, blobs=blobs, create=create)


def local_database(location: str | None, blobs: str | None = None) -> Path | None:
    """The SQLite file of an existing local store at ``location`` (resolved as
    ``open_store`` resolves it, network filesystems refused the same way); None for a
    server store or a store that does not exist yet."""
    location, _ = _locate(location, blobs)
    if location.startswith("sqlite:///"):
        db = Path(location.removeprefix("sqlite:///")).resolve()
    elif "://" in location:
        return None
    else:
        db = Path(location).expanduser().resolve() / "store.db"
    if not db.is_file():
        return None
    _guard_local(db.parent)
    return db


def server_location(location: str | None, blobs: str | None = None
                    ) -> tuple[str, str | None] | None:
    """(URL, artifact location or None) of a PostgreSQL store at ``location``, resolved as
    ``open_store`` resolves it; None for a local store."""
    location, blobs = _locate(location, blobs)
    return (location, blobs) if location.startswith("postgresql") else None


def open_store_at(location: str, *, blobs: str | None = None, create: bool = True) -> RunStore:
    """The store at exactly ``location`` (and ``blobs``): no ``AUDITOR_STORE``,
    ``AUDITOR_BLOBS`` or ``auditor.toml`` fallback and no signer (push/pull's other side)."""
    return _open_at(location, blobs=blobs, create=create)


def _open_at(location: str, *, blobs: str | None, create: bool) -> SqlStore:
    from auditor.store.sql import SqlStore

    if "://" in location:
        return _open_url(location, blobs)
    directory = Path(location).expanduser().resolve()
    db = directory / "store.db"
    if not db.exists() and not create:
        raise StoreError(
            f"no store at {directory}", hint="record a run first (`audit record`) or pass --store"
        )
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"store path {directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not db.exists():
            keep_out_of_git(directory)
    except OSError as exc:
        raise StoreError(f"cannot create store {directory}: {exc.strerror}") from None
    _guard_local(directory)
    store = SqlStore(f"sqlite:///{db}", BlobStore(directory))
    return _attach_blobs(store, blobs) if blobs else store


def _open_url(location: str, blobs: str | None) -> SqlStore:
    from auditor.store.sql import SqlStore

    if location.startswith("sqlite:///") and not blobs:
        directory = Path(location.removeprefix("sqlite:///")).resolve().parent
        return SqlStore(location, BlobStore(directory))
    store = SqlStore(location, BlobStore(Path(".")))  # placeholder until the URL is known
    blobs = blobs or store.get_meta("blobs_url")
    if not blobs:
        store.close()
        raise StoreError(
            f"store {store.url} has no artifact location",
            hint="pass --blobs PATH|URL (or AUDITOR_BLOBS) once, when the store is created",
        )
    return _attach_blobs(store, blobs)


def _attach_blobs(store: SqlStore, blobs: str) -> SqlStore:
    """Point the store at its artifacts; a server store remembers them the first time."""
    if is_local_blobs(blobs):
        directory = local_blob_dir(blobs)
        store.blobs = BlobStore(directory)
        canonical = f"file://{directory}"
    else:
        from auditor.store.remote import RemoteBlobStore

        remote = RemoteBlobStore(blobs, cache_dir_for(store.url))
        remote.check_reachable()
        store.blobs = remote
        canonical = remote.url
    if not store.is_sqlite:
        known = store.remember_meta("blobs_url", canonical)
        if known != canonical:
            store.close()
            raise StoreError(
                f"store {store.url} keeps its artifacts at {known}, not {canonical}",
                hint="omit --blobs / AUDITOR_BLOBS for this store",
            )
    return store
