"""Derived locks, compiled once: a run recorded without its own lockfile is rebuilt from
its installed set, which pip-compile must hash first (minutes for a real environment).

Contract:

- ``derived_lock_key(derived_sha256, python)`` names one compilation: the sha256 of the
  recorded installed set (the derived lock's text), the recorded Python version and the
  major.minor of the interpreter that compiles (pip-compile resolves markers for it).
- ``compiled_lock(store, record)`` returns the hashed lock of a derived run: from the
  store when this key was compiled before (the lock's text is a content-addressed object,
  re-hashed on read; the index ``<store>/locks/derived/<key>.json`` names it), else it
  runs ``lock_from_packages`` once, stores the text as an object and writes the index
  atomically. A damaged or missing object is compiled again, never trusted.
- ``cached_lock_ref(store, record)`` is what ``audit show`` prints: the compiled lock's
  sha256 and package count, or None when the run was never built.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from auditor.core.errors import AuditorError
from auditor.core.lockfile import Lock, parse_requirements_lock, sha256_text
from auditor.core.schema import RunRecord
from auditor.env.lock import lock_from_packages
from auditor.store import RunStore, store_dir_of

INDEX_SCHEMA = 1
COMPILED_NAME = "requirements.compiled.lock"


@dataclass(frozen=True)
class CompiledLockRef:
    """Where a derived run's compiled lock lies in the store."""

    key: str
    sha256: str
    packages: int
    compiled_at: str


def derived_lock_key(derived_sha256: str, python: str) -> str:
    """The cache key of one compilation of a recorded installed set."""
    compiler = ".".join(platform.python_version_tuple()[:2])
    material = {"schema": INDEX_SCHEMA, "installed": derived_sha256, "python": python,
                "compiler_python": compiler}
    return sha256_text(json.dumps(material, sort_keys=True))


def _index_path(store: RunStore, key: str) -> Path:
    return store_dir_of(store) / "locks" / "derived" / f"{key}.json"


def _key_of(record: RunRecord) -> str | None:
    py = record.environment.python
    if py is None or py.lock is None or py.lock.origin != "derived":
        return None
    return derived_lock_key(py.lock.sha256, py.version)


def cached_lock_ref(store: RunStore, record: RunRecord) -> CompiledLockRef | None:
    """The compiled lock of a derived run, when one was compiled (else None)."""
    key = _key_of(record)
    if key is None:
        return None
    try:
        data = json.loads(_index_path(store, key).read_text(encoding="utf-8"))
        return CompiledLockRef(key=key, sha256=str(data["sha256"]),
                               packages=int(data["packages"]),
                               compiled_at=str(data["compiled_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compiled_lock(store: RunStore, record: RunRecord, derived_text: str,
                  find_links: list[Path]) -> Lock:
    """The hashed lock of a derived run: reused from the store, else compiled once."""
    key = _key_of(record)
    if key is None:
        raise ValueError(f"run {record.identity.id} has no derived lock")
    ref = cached_lock_ref(store, record)
    if ref is not None:
        try:
            text = store.blobs.read_bytes(ref.sha256, COMPILED_NAME).decode("utf-8")
            return parse_requirements_lock(text, name=COMPILED_NAME)
        except (AuditorError, UnicodeDecodeError):
            pass  # a damaged cache entry is compiled again, never trusted
    pins = parse_requirements_lock(derived_text, name="requirements.derived.txt",
                                   allow_unhashed=True)
    lock = lock_from_packages({p.name: p.version for p in pins.packages},
                              find_links=find_links)
    sha, _ = store.blobs.put_bytes(lock.text.encode("utf-8"))
    _write_index(_index_path(store, key), {
        "schema": INDEX_SCHEMA, "sha256": sha, "packages": len(lock.packages),
        "compiled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "first_run": record.identity.id})
    return lock.model_copy(update={"source_name": COMPILED_NAME})


def _write_index(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
