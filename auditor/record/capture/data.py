"""Fingerprints of files and folders: size + sha256, and a Merkle root for folders.

A folder's digest is the sha256 of its sorted entries ``<relative path>\\0<kind>\\0<digest>\\n``
where a file's digest is its sha256 and a symlink's is the sha256 of its target text
(links are never followed, so a fingerprint cannot wander outside the folder). Renaming,
adding, removing or editing any file changes the root.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from auditor.core.errors import InputError
from auditor.core.schema import DataInput
from auditor.store.blobs import sha256_file

# Folders that are never part of a run's code snapshot or its outputs: VCS data, caches,
# virtualenvs, and auditor's own store.
SKIP_DIRS = frozenset({".git", ".auditor", "__pycache__", ".venv", "venv", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache", "node_modules", ".ipynb_checkpoints"})


def special_kind(path: Path) -> str | None:
    """None for a regular file, folder or symlink; else what it is ("FIFO", "socket", ...).

    Reading a FIFO blocks forever and ``/dev/zero`` never ends: such entries are refused
    by name and kind wherever files are read for hashing."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def entry_digest(path: Path) -> tuple[str, str, int]:
    """(kind, digest, size) of one file or symlink, links not followed."""
    if path.is_symlink():
        target = os.readlink(path).encode("utf-8", "surrogateescape")
        return "link", hashlib.sha256(target).hexdigest(), 0
    return "file", sha256_file(path), path.stat().st_size


def merkle_entries(root: Path, relpaths: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``{rel: (entry line, size)}`` for the given relative paths under ``root``."""
    found: dict[str, tuple[str, int]] = {}
    for rel in sorted(set(relpaths)):
        kind, digest, nbytes = entry_digest(root / rel)
        found[rel] = (f"{rel}\0{kind}\0{digest}\n", nbytes)
    return found


def merkle_of(entries: dict[str, tuple[str, int]]) -> tuple[str, int, int]:
    """(digest, total size, file count) of entries from ``merkle_entries``."""
    lines = "".join(entries[rel][0] for rel in sorted(entries))
    return (
        hashlib.sha256(lines.encode("utf-8", "surrogateescape")).hexdigest(),
        sum(size for _line, size in entries.values()),
        len(entries),
    )


def merkle_root(root: Path, relpaths: Iterable[str]) -> tuple[str, int, int]:
    """(digest, total size, file count) over the given relative paths under ``root``."""
    return merkle_of(merkle_entries(root, relpaths))


def walk_files(root: Path, skip: Callable[[str], bool] = lambda _rel: False) -> list[str]:
    """Relative paths (forward slashes) of files and links under ``root``, not following links."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not skip(prefix + d))
        links = [d for d in dirnames if (base / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if d not in links]
        found.extend(prefix + n for n in sorted(filenames + links) if not skip(prefix + n))
    return found


def fingerprint(
    path: Path, *, display: str | None = None, origin: str = "declared"
) -> DataInput:
    """Fingerprint one input; InputError when it is missing, unreadable or not a regular
    file (a FIFO, socket or device, also inside a folder: reading one would never end)."""
    shown = display or str(path)
    try:
        if not path.exists():
            raise InputError(f"input {shown}: no such file or directory")
        kind = special_kind(path.resolve())
        if kind:
            raise InputError(f"input {shown}: not a regular file: {kind}")
        if path.is_dir():
            files = walk_files(path)
            for rel in files:
                if kind := special_kind(path / rel):
                    raise InputError(f"input {shown}: {rel} is not a regular file: {kind}")
            digest, size, count = merkle_root(path, files)
            return DataInput(path=shown, kind="dir", size=size, sha256=digest, files=count,
                             origin=origin)  # type: ignore[arg-type]
        return DataInput(path=shown, kind="file", size=path.stat().st_size,
                         sha256=sha256_file(path), origin=origin)  # type: ignore[arg-type]
    except PermissionError:
        raise InputError(f"input {shown}: permission denied") from None
    except OSError as exc:
        raise InputError(f"input {shown}: cannot read: {exc.strerror}") from None


def check_unchanged(recorded: DataInput, path: Path) -> str | None:
    """None when the input still matches its fingerprint, else a one-line reason."""
    try:
        now = fingerprint(path, display=recorded.path)
    except InputError as exc:
        return str(exc)
    if now.sha256 == recorded.sha256:
        return None
    return (
        f"input {recorded.path} changed since the run was recorded "
        f"(sha256 {recorded.sha256[:12]}… now {now.sha256[:12]}…, "
        f"{recorded.files} file(s) then, {now.files} now)"
    )
