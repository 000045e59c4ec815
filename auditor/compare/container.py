"""Why two weights files whose tensors (and checkpoint values) are all identical still
differ in bytes: the container around the tensors.

``reproduced-bitwise`` means every certified file is byte for byte identical, so a reader
that compares tensors must never hide the bytes it did not read. Contract of
``container_difference(where, paths, names, policy, first_offset)``, called only for two files whose
sha256 differ while the weights comparer found no difference:

* one ``kind="bytes"`` difference at ``where`` with ``stats["container"] = True``, both
  sizes and the first differing offset, and a comment saying what differs:
  a safetensors header's ``__metadata__`` keys (``metadata key 'note' differs``), or its
  layout; the records of a zip (torch checkpoint, ``.npz``) whose contents, sizes or
  timestamps differ; else the first differing byte;
* ``within_tolerance`` only when the policy's ``metadata_outputs`` names the output (a
  loosening the certificate lists), or when the one difference is a torch zip's folder,
  which ``torch.save`` names after the file, and each side's folder is its own file's stem
  (the rerun wrote the file under another name, which the comparison reports): explained
  by the name alone, nothing hidden in it. Anything else is beyond tolerance.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path, PurePosixPath

from auditor.compare.difference import Difference
from auditor.core.policy import ComparePolicy

SHOWN = 3  # differing keys or records named in the comment
VALUE_LIMIT = 40  # characters of a metadata value shown


def container_difference(where: str, paths: tuple[Path, Path], names: tuple[str, str],
                         policy: ComparePolicy, first_offset: int | None) -> Difference:
    """The difference between two files that hold identical tensors (module contract)."""
    why, renamed_only = _explain(paths, names)
    allowed = policy.metadata_may_differ(names[0]) or policy.metadata_may_differ(names[1])
    sizes = paths[0].stat().st_size, paths[1].stat().st_size
    comments = [f"the bytes differ but every tensor is bit-identical: {why}"]
    if renamed_only:
        comments.append("explained by the file's name alone: not bitwise, within tolerance")
    elif allowed:
        comments.append("metadata_outputs lets this output's metadata differ: within tolerance")
    else:
        comments.append("metadata may carry anything, so it counts: set metadata_outputs "
                        f"= [\"{names[0].removeprefix('outputs/')}\"] in the policy to accept "
                        "it (a loosening the certificate lists)")
    return Difference(where=where, kind="bytes", left=f"{sizes[0]} bytes",
                      right=f"{sizes[1]} bytes", within_tolerance=renamed_only or allowed,
                      stats={"container": True, "left_size": sizes[0], "right_size": sizes[1],
                             "first_offset": first_offset},
                      comments=tuple(comments))


def _explain(paths: tuple[Path, Path], names: tuple[str, str]) -> tuple[str, bool]:
    """What differs, and whether it is only a torch zip's folder named after its file."""
    if names[0].lower().endswith(".safetensors"):
        return _safetensors(paths), False
    if all(zipfile.is_zipfile(p) for p in paths):
        return _zips(paths, names)
    return "the bytes differ outside the tensors", False


def _safetensors(paths: tuple[Path, Path]) -> str:
    left, right = (_header(p) for p in paths)
    if left is None or right is None:
        return "the safetensors headers differ"
    a, b = (_metadata(h) for h in (left, right))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if keys:
        shown = "; ".join(f"{k!r}: {_clip(a.get(k))} → {_clip(b.get(k))}" for k in keys[:SHOWN])
        more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
        word = "key" if len(keys) == 1 else "keys"
        return f"the header's __metadata__ {word} differ ({shown}{more})"
    return "the header's layout differs (key order, spacing or padding)"


def _metadata(header: dict[str, object]) -> dict[str, object]:
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _header(path: Path) -> dict[str, object] | None:
    # The weights reader has already checked this header (size, JSON, layout).
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        try:
            header = json.loads(handle.read(size))
        except ValueError:
            return None
    return header if isinstance(header, dict) else None


def _clip(value: object) -> str:
    if value is None:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= VALUE_LIMIT else text[: VALUE_LIMIT - 1] + "…"


def _zips(paths: tuple[Path, Path], names: tuple[str, str]) -> tuple[str, bool]:
    (a, folders_a), (b, folders_b) = (_entries(p) for p in paths)
    differing = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    if differing:
        shown = ", ".join(differing[:SHOWN])
        more = f" and {len(differing) - SHOWN} more" if len(differing) > SHOWN else ""
        return f"the zip's records differ in content, size or timestamp: {shown}{more}", False
    if folders_a != folders_b:
        stems = {PurePosixPath(n).stem for n in names}
        own = folders_a == {PurePosixPath(names[0]).stem} and folders_b == {
            PurePosixPath(names[1]).stem}
        return (f"the zip's folder is {'/'.join(sorted(folders_a))} vs "
                f"{'/'.join(sorted(folders_b))}"
                + (" (torch.save names it after the file)" if own and len(stems) == 2 else ""),
                own)
    return "the zip's layout differs (record order, alignment or comments)", False


def _entries(path: Path) -> tuple[dict[str, tuple[int, int, tuple[int, ...]]], set[str]]:
    """Each record by its name inside the top folder: (crc, size, timestamp); the folders."""
    entries: dict[str, tuple[int, int, tuple[int, ...]]] = {}
    folders: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            folder, _, inside = info.filename.partition("/")
            folders.add(folder if inside else "")
            entries[inside or folder] = (info.CRC, info.file_size, tuple(info.date_time))
            if info.comment:
                entries[(inside or folder) + " (comment)"] = (len(info.comment), 0, ())
    return entries, folders
