"""What a rerun leaves behind is untrusted input: read it without trusting a byte of it.

A hostile training script controls everything its rerun writes: the files in its copy of
the tree and the probe folder (``artifacts.jsonl``, ``api-*.json``, ``metrics-*.jsonl``,
``determinism-*.json``, ``params-*.json``). The host only ever reads

- regular files **inside the rerun's own tree**, opened component by component from the
  tree's root with ``O_NOFOLLOW`` (so no symlink, at any depth, leads out of it; a link
  swapped in after a check does not either, since the checked descriptor is the one read),
  ``O_NONBLOCK`` (a FIFO never blocks) and a regular-file check on the open descriptor;
- regular files directly in the probe folder, the same way, each capped in size, then
  parsed field by field into a fresh private folder that the recorder's parsers read.

A path the rerun reports (``/work/...`` in the container, the tree's host path with the
venv backend) is mapped into the tree by its text only; anything else (``/tmp/...``, the
original run's output on the host, ``..``) is refused with a warning and never opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from auditor.core.errors import InputError
from auditor.core.schema import ArtifactRef
from auditor.record.capture.secrets import scan_stream
from auditor.record.outputs import validate_artifact_name
from auditor.record.params import clean
from auditor.store.blobs import BlobStore

PROBE_FILE_LIMIT = 256 << 20  # one probe file (metric points of a very long run)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _OPEN_FLAGS | os.O_DIRECTORY


class Refused(Exception):
    """A path the rerun reported that the host will not read (the message says why)."""


class Withheld(Refused):
    """A file the rerun wrote that holds a secret: read, scanned, never stored."""

    def __init__(self, name: str, note: str) -> None:
        super().__init__(f"{name.removeprefix('outputs/')} {note}")
        self.name, self.note = name, note


@dataclass(frozen=True)
class Ingested:
    """Artifacts taken from a rerun, and what was refused."""

    artifacts: tuple[ArtifactRef, ...]
    warnings: tuple[str, ...]
    withheld: tuple[tuple[str, str], ...] = ()  # (artifact name, why): held a secret


@contextlib.contextmanager
def open_inside(root: Path, rel: str) -> Iterator[BinaryIO]:
    """Open the regular file ``root/rel`` without following any link; ``Refused`` else."""
    parts = _parts(rel)
    fds: list[int] = []
    try:
        fds.append(_open(str(root), None, _DIR_FLAGS, rel))
        for part in parts[:-1]:
            fds.append(_open(part, fds[-1], _DIR_FLAGS, rel))
        fd = _open(parts[-1], fds[-1], _OPEN_FLAGS, rel)
    finally:
        for opened in fds:
            os.close(opened)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{rel} is not a regular file")
        os.set_blocking(fd, True)
        fh = cast(BinaryIO, os.fdopen(fd, "rb"))
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def _open(name: str, dir_fd: int | None, flags: int, rel: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        linked = exc.errno in (errno.ELOOP, errno.ENOTDIR)
        reason = "leads through a symbolic link" if linked else exc.strerror
        raise Refused(f"{rel}: {reason}") from None


def _parts(rel: str) -> list[str]:
    norm = posixpath.normpath(rel)
    parts = norm.split("/")
    if not rel or norm.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise Refused(f"{rel!r} is not a path inside the rerun's tree")
    return parts


def store_inside(
    blobs: BlobStore, root: Path, rel: str, name: str, max_bytes: int
) -> ArtifactRef:
    """Store ``root/rel`` (read as ``open_inside`` does) under the artifact ``name``."""
    try:
        validate_artifact_name(name)
    except InputError as exc:
        raise Refused(str(exc)) from None
    with open_inside(root, rel) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise Refused(f"{rel} ({size} bytes) is over the {max_bytes}-byte limit; not stored")
        if (why := scan_stream(fh)) is not None:
            raise Withheld(name, f"not stored, it holds {why}")
        fh.seek(0)
        sha, stored = blobs.put_stream(fh)
    return ArtifactRef(name=name, sha256=sha, size=stored, kind="output")


def tree_relative(reported: str, seen_as: str) -> str:
    """The tree-relative path of a path the rerun reported, judged by its text only."""
    if not isinstance(reported, str) or "\0" in reported:
        raise Refused("an artifact path that is not text")
    norm = posixpath.normpath(reported)
    base = posixpath.normpath(seen_as)
    if not norm.startswith(base + "/"):
        raise Refused(f"{reported[:200]!r} is outside the rerun's tree; never read")
    rel = norm[len(base) + 1 :]
    _parts(rel)
    return rel


def read_probe_file(probe: Path, name: str) -> bytes:
    """A regular file directly in the probe folder, capped; ``Refused`` otherwise."""
    with open_inside(probe, name) as fh:
        data = fh.read(PROBE_FILE_LIMIT + 1)
    if len(data) > PROBE_FILE_LIMIT:
        raise Refused(f"probe file {name} is over {PROBE_FILE_LIMIT} bytes")
    return data


def stage_probe(probe: Path, dest: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Copy the probe folder's parseable content into ``dest`` (a fresh private folder).

    Returns the artifact lines (``{"path": str, "name": str | None}``, not yet judged) and
    warnings. ``api-*.json`` keeps only well-typed params/seed/seeded, ``metrics-*.jsonl``
    only ``[key, step, bits, time]`` rows, ``determinism-*.json`` only JSON objects,
    ``params-*.json`` only well-typed fields (``record.params.clean``).
    """
    warnings: list[str] = []
    artifacts: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(probe))
    except OSError as exc:
        return [], [f"the rerun's probe folder could not be read: {exc.strerror}"]
    for name in names[:10_000]:
        kind = _probe_kind(name)
        if kind is None:
            continue
        try:
            text = read_probe_file(probe, name).decode("utf-8", "replace")
        except Refused as exc:
            warnings.append(f"rerun probe file refused: {exc}")
            continue
        if kind == "api":
            api = _clean_api(text)
            if api is not None:
                (dest / name).write_text(json.dumps(api))
        elif kind == "metrics":
            rows = [r for r in _json_lines(text) if _metric_row(r)]
            (dest / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif kind == "params":
            with contextlib.suppress(ValueError, RecursionError):
                found = clean(json.loads(text))
                if found is not None:
                    (dest / name).write_text(json.dumps(dataclasses.asdict(found)))
        elif kind == "determinism":
            with contextlib.suppress(ValueError):
                data = json.loads(text)
                if isinstance(data, dict):
                    (dest / name).write_text(json.dumps(data))
        else:
            for row in _json_lines(text):
                if (
                    isinstance(row, dict)
                    and isinstance(row.get("path"), str)
                    and isinstance(row.get("name"), str | None)
                ):
                    artifacts.append({"path": row["path"], "name": row.get("name")})
                else:
                    warnings.append(f"rerun artifact line ignored: {json.dumps(row)[:200]}")
    return artifacts, warnings


def _probe_kind(name: str) -> str | None:
    if name == "artifacts.jsonl":
        return "artifacts"
    for prefix, suffix, kind in (
        ("api-", ".json", "api"),
        ("metrics-", ".jsonl", "metrics"),
        ("determinism-", ".json", "determinism"),
        ("params-", ".json", "params"),
    ):
        if name.startswith(prefix) and name.endswith(suffix):
            return kind
    return None


def _json_lines(text: str) -> list[Any]:
    rows = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _metric_row(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) == 4
        and isinstance(row[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in row[1:3])
        and 0 <= row[2] < 1 << 64
        and isinstance(row[3], int | float)
        and not isinstance(row[3], bool)
    )


def _clean_api(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    params = data.get("params")
    seed = data.get("seed")
    seeded = data.get("seeded")
    return {
        "params": params if isinstance(params, dict) else {},
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "seeded": [s for s in seeded if isinstance(s, str)] if isinstance(seeded, list) else [],
    }


def collect_api_artifacts(
    blobs: BlobStore, tree: Path, seen_as: str, lines: list[dict[str, Any]], max_bytes: int
) -> Ingested:
    """Store the files the rerun's API logged, when each is a regular file in its tree."""
    refs: list[ArtifactRef] = []
    warnings: list[str] = []
    withheld: list[tuple[str, str]] = []
    for item in lines:
        try:
            rel = tree_relative(item["path"], seen_as)
            name = f"outputs/{item.get('name') or posixpath.basename(rel)}"
            refs.append(store_inside(blobs, tree, rel, name, max_bytes))
        except Withheld as exc:
            warnings.append(f"artifact the rerun logged: {exc}")
            withheld.append((exc.name, exc.note))
        except Refused as exc:
            warnings.append(f"artifact the rerun logged was not read: {exc}")
    return Ingested(tuple(refs), tuple(warnings), tuple(withheld))


def collect_changed(
    blobs: BlobStore, tree: Path, cwd_rel: str, changed: list[str], max_bytes: int
) -> Ingested:
    """Store the files the rerun created or changed under its working directory."""
    refs: list[ArtifactRef] = []
    warnings: list[str] = []
    withheld: list[tuple[str, str]] = []
    for rel in changed:
        inside = rel if cwd_rel in ("", ".") else f"{cwd_rel}/{rel}"
        try:
            refs.append(store_inside(blobs, tree, inside, f"outputs/{rel}", max_bytes))
        except Withheld as exc:
            warnings.append(f"output {exc}")
            withheld.append((exc.name, exc.note))
        except Refused as exc:
            warnings.append(f"output {exc}")
    return Ingested(tuple(refs), tuple(warnings), tuple(withheld))
