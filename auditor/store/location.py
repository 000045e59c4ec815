"""Where a store's metadata and its artifacts live: two locations, each a path or a URL.

Each is taken from the first of these that names it::

    metadata (runs, metrics, certificates)   artifacts (content-addressed objects)
    --store PATH|URL                         --blobs PATH|URL
    AUDITOR_STORE                            AUDITOR_BLOBS
    auditor.toml [store] url = "…"           auditor.toml [store] blobs = "…"
                                             the artifact URL the database remembers
    .auditor/ at the repository root         the store directory (or the SQLite file's)

``auditor.toml`` is read at the repository root (else the current directory). A store on
a database server remembers the artifact URL it was created with (``meta.blobs_url``), so
every engineer needs only the database URL; naming another one is refused. Passwords
belong in ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both); one in the URL is accepted
but shown as ``***`` everywhere. S3 credentials come from boto's usual places.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditor.core.errors import StoreError

CONFIG_NAME = "auditor.toml"


@dataclass(frozen=True)
class StoreConfig:
    """The ``[store]`` table of ``auditor.toml`` (both keys optional)."""

    url: str | None = None
    blobs: str | None = None


def read_config(root: Path) -> StoreConfig:
    """``[store]`` of ``root/auditor.toml``; empty when there is no such file or table."""
    path = root / CONFIG_NAME
    if not path.is_file():
        return StoreConfig()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise StoreError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("store", {})
    if not isinstance(table, dict) or set(table) - {"url", "blobs"}:
        raise StoreError(f"{path}: [store] takes only url and blobs")
    values = {k: v for k, v in table.items() if isinstance(v, str) and v}
    if len(values) != len(table):
        raise StoreError(f"{path}: [store] url and blobs must be non-empty strings")
    return StoreConfig(**values)


def is_url(location: str) -> bool:
    """True for ``scheme://…`` (a SQLAlchemy or fsspec URL), False for a plain path."""
    return "://" in location


def is_local_blobs(location: str) -> bool:
    """Folders and ``file://`` URLs are local (atomic rename works there)."""
    return not is_url(location) or location.startswith("file://")


def local_blob_dir(location: str) -> Path:
    """The folder of a local artifact location (``file:///mnt/team`` -> /mnt/team)."""
    path = location.removeprefix("file://") if location.startswith("file://") else location
    if not path or (location.startswith("file://") and not path.startswith("/")):
        raise StoreError(f"not an artifact location: {location!r}",
                         hint="file:// URLs need an absolute path: file:///mnt/team/auditor")
    return Path(path).expanduser().resolve()


def cache_dir_for(shown_url: str) -> Path:
    """A local working folder for a store with remote artifacts (temp files, read cache)."""
    if os.environ.get("AUDITOR_CACHE"):
        root = Path(os.environ["AUDITOR_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "auditor"
    return root.expanduser() / hashlib.sha256(shown_url.encode()).hexdigest()[:16]


def not_a_database(exc: BaseException, where: str) -> StoreError | None:
    """The error for a store file that is not an SQLite database (SQLITE_NOTADB): bad input
    the user fixes by pointing at the store (exit 2), not an outage; None for others."""
    if getattr(exc, "sqlite_errorname", None) != "SQLITE_NOTADB":
        return None
    return StoreError(f"{where} is not an auditor store: the file is not an SQLite database",
                      hint="point --store / AUDITOR_STORE at the store folder or its store.db")
