"""Open the run store named by ``--store``, ``AUDITOR_STORE`` or the default location.

The default is ``.auditor/`` at the root of the git repository that holds the current
directory (the current directory itself outside git). A plain path names a store
directory (``store.db`` + ``objects/``); anything with ``://`` is a SQLAlchemy URL
(``sqlite:////abs/path.db``, ``postgresql+psycopg://…``) whose blobs go to
``AUDITOR_BLOBS`` or the default directory. SQLite in WAL mode is refused on network
filesystems, where its locking is unsafe.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from auditor.errors import StoreError
from auditor.store.base import CertificateRow, MetricPoint, RunStore, RunSummary
from auditor.store.blobs import BlobStore, sha256_file
from auditor.store.sql import SqlStore, validate_run_ref

__all__ = [
    "BlobStore",
    "CertificateRow",
    "MetricPoint",
    "RunStore",
    "RunSummary",
    "SqlStore",
    "default_store_dir",
    "open_store",
    "repo_root",
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


def store_dir_of(store: SqlStore) -> Path:
    """The directory that holds the store's blobs (and, for SQLite, its database)."""
    return store.blobs.root


def open_store(location: str | None = None, *, create: bool = True) -> SqlStore:
    """Open (and by default create) the store at ``location``."""
    location = location or os.environ.get("AUDITOR_STORE") or str(default_store_dir())
    if "://" in location:
        blob_dir = Path(os.environ.get("AUDITOR_BLOBS") or default_store_dir())
        if location.startswith("sqlite:///"):
            blob_dir = Path(location.removeprefix("sqlite:///")).resolve().parent
        return SqlStore(location, BlobStore(blob_dir))
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
    except OSError as exc:
        raise StoreError(f"cannot create store {directory}: {exc.strerror}") from None
    _guard_local(directory)
    return SqlStore(f"sqlite:///{db}", BlobStore(directory))
