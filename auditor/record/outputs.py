"""Outputs of a run: declared files and folders, or the files the run created or changed.

Artifact names are relative, forward-slash paths with no ``..``, no absolute part, no
backslash and no NUL (``validate_artifact_name``), so no name can escape the store or a
restore directory. Symlinks are never followed: a link among outputs is skipped and
reported. When no output is declared, the working directory is snapshotted (size and
mtime) before the run and the new or changed files are stored afterwards, within a size
limit, never the store itself, and never a file auditor's own stdout/stderr is written
into (a shell redirect or ``| tee``: see ``capture.streams``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from auditor.core.errors import InputError, StoreError
from auditor.core.schema import ArtifactKind, ArtifactRef
from auditor.record.capture.data import SKIP_DIRS, special_kind, walk_files
from auditor.record.capture.streams import OwnLogs
from auditor.store.blobs import BlobStore

DEFAULT_MAX_OUTPUT_BYTES = 1 << 30

MAX_SNAPSHOT_FILES = 200_000


def validate_artifact_name(name: str) -> str:
    """The name itself when it is a safe relative path; InputError otherwise."""
    bad = (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or PurePosixPath(name).is_absolute()
        or ":" in name.split("/")[0]
    )
    if bad:
        raise InputError(f"artifact name {name[:80]!r} is not a safe relative path")
    return name


def store_artifact(
    blobs: BlobStore, path: Path, name: str, kind: ArtifactKind = "output"
) -> ArtifactRef:
    """Store one regular file under ``name``; links and missing files are refused."""
    validate_artifact_name(name)
    if path.is_symlink():
        raise InputError(f"output {path} is a symbolic link; links are not followed")
    if not path.is_file():
        raise InputError(f"output {path}: no such file")
    sha, size = blobs.put_file(path)
    return ArtifactRef(name=name, sha256=sha, size=size, kind=kind)


@dataclass
class Snapshot:
    """Size and mtime of every file under a directory before the run."""

    root: Path
    skip_rel: frozenset[str]
    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def take(cls, root: Path, skip_paths: list[Path]) -> Snapshot:
        """Snapshot ``root``, skipping caches, VCS folders and ``skip_paths``."""
        skip_rel = frozenset(r for p in skip_paths if (r := _rel(p, root)))
        snap = cls(root=root, skip_rel=skip_rel)
        for rel in snap._walk():
            st = os.lstat(root / rel)
            snap.files[rel] = (st.st_size, st.st_mtime_ns)
        return snap

    def _skip(self, rel: str) -> bool:
        return (
            rel.split("/")[-1] in SKIP_DIRS
            or rel in self.skip_rel
            or any(rel.startswith(s + "/") for s in self.skip_rel)
        )

    def _walk(self) -> list[str]:
        return walk_files(self.root, self._skip)[:MAX_SNAPSHOT_FILES]

    def changed(self, own_logs: OwnLogs | None = None,
                notes: dict[str, str] | None = None) -> list[str]:
        """Files created or modified since the snapshot (regular files only), minus our
        own log files (each named in ``notes``)."""
        out = []
        for rel in self._walk():
            path = self.root / rel
            if path.is_symlink() or not path.is_file():
                continue
            if own_logs and (how := own_logs.how(path)):
                if notes is not None:
                    notes[f"outputs.skipped.{rel}"] = f"{how}: neither source nor output"
                continue
            st = path.stat()
            if self.files.get(rel) != (st.st_size, st.st_mtime_ns):
                out.append(rel)
        return out


def _rel(path: Path, root: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return rel if rel != "." else None


def collect(
    blobs: BlobStore,
    declared: list[Path],
    snapshot: Snapshot | None,
    cwd: Path,
    max_bytes: int,
    *,
    own_logs: OwnLogs | None = None,
    notes: dict[str, str] | None = None,
    failures: list[str] | None = None,
    claim: Callable[[str], str | None] | None = None,
) -> tuple[list[ArtifactRef], list[str]]:
    """Store the run's outputs; returns (artifacts, warnings).

    Our own log files are skipped (named in ``notes``). With ``claim`` given, a changed
    file it gives a reason for is not this run's (another recording ran in the tree at the
    same time: ``record/concurrent.py``): it is skipped, the reason in ``notes``, and an
    ambiguous one is warned about too. With ``failures`` given, an output
    the store cannot take is named there and the others are still stored. An output that
    holds a secret (``secrets.scan_file``) is not stored: a warning says which file and which
    shape, and ``notes[artifact name]`` says so too."""
    refs: list[ArtifactRef] = []
    warnings: list[str] = []
    pairs = (
        _declared_files(declared, cwd, warnings)
        if declared
        else _claimed(snapshot.changed(own_logs, notes) if snapshot else [], cwd, claim,
                      notes, warnings)
    )
    for path, rel in pairs:
        if declared and own_logs and (how := own_logs.how(path)):
            warnings.append(f"output {rel}: {how}; not stored as an output")
            continue
        size = path.stat().st_size
        if size > max_bytes:
            warnings.append(
                f"output {rel} ({size} bytes) is over the {max_bytes}-byte limit; not stored"
            )
            continue
        if (why := _holds_secret(path)) is not None:
            note = f"not stored, it holds {why}"
            warnings.append(f"output {rel} {note}")
            if notes is not None:
                notes[f"outputs/{rel}"] = note
            continue
        try:
            refs.append(store_artifact(blobs, path, f"outputs/{rel}"))
        except StoreError as exc:
            if failures is None:
                raise
            failures.append(f"outputs/{rel}: {exc}")
    return refs, warnings


def _claimed(changed: list[str], cwd: Path, claim: Callable[[str], str | None] | None,
             notes: dict[str, str] | None, warnings: list[str]) -> list[tuple[Path, str]]:
    """The changed files that are this run's; the others named in ``notes``."""
    pairs = []
    for rel in changed:
        why = claim(rel) if claim is not None else None
        if why is None:
            pairs.append((cwd / rel, rel))
            continue
        if notes is not None:
            notes[f"outputs.skipped.{rel}"] = why
        if why.startswith("ambiguous"):
            warnings.append(f"output {rel}: {why}")
    return pairs


def _holds_secret(path: Path) -> str | None:
    from auditor.record.capture.secrets import scan_file

    if path.is_symlink() or not path.is_file():
        return None  # store_artifact refuses it with its own message
    return scan_file(path)


def _declared_files(declared: list[Path], cwd: Path, warnings: list[str]) -> list[tuple[Path, str]]:
    pairs: list[tuple[Path, str]] = []
    for item in declared:
        path = item if item.is_absolute() else cwd / item
        base = _rel(path, cwd) or path.name
        if path.is_symlink():
            warnings.append(f"output {item} is a symbolic link; links are not followed")
        elif path.is_dir():
            pairs += [
                (path / rel, f"{base}/{rel}")
                for rel in walk_files(path)
                if not (path / rel).is_symlink() and (path / rel).is_file()
            ]
        elif path.is_file():
            pairs.append((path, base))
        elif path.exists() and (kind := special_kind(path)):
            warnings.append(f"declared output {item} is not a regular file: {kind}; not stored")
        else:
            warnings.append(f"declared output {item} was not created by the run")
    return pairs
