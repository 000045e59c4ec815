"""The file comparers: weights checkpoints (delegated to ``weights``) and every other
output or log file, by digest first, then line by line or byte by byte.

Contract of ``compare(left, right, policy)``, over the artifacts of kind ``output`` (and
``log`` when ``policy.compare_logs``) whose names match no ``policy.ignore_outputs`` glob
and are not weights files:

* equal sha256: identical, nothing is read;
* on one side only: ``kind="missing"`` / ``"extra"``;
* text (UTF-8 without NUL, up to ``TEXT_LIMIT`` bytes): the lines are compared after every
  ``policy.log_masks`` regex has replaced its matches with ``MASK`` (times, durations,
  addresses). Differing lines give ``kind="text"`` at ``files/<name>`` with stats
  (left_lines, right_lines, changed_lines, first_line) and up to ``MAX_DETAILS`` nested
  differences at ``files/<name>@line N``. Bytes that differ only inside masked spans give
  a within-tolerance difference for an output (its bytes did change) and nothing for a log;
* anything else: ``kind="bytes"`` with both sizes and the first differing offset.

Output differences are beyond tolerance. Log differences are informational:
``within_tolerance=True`` and ``stats["informational"] = True`` (the verdict ignores them).

``compare_weights`` covers the output artifacts that ``weights.is_weights_file`` accepts:
equal digests short-cut, one-sided files are missing/extra, the rest go to
``weights.compare_weight_files`` at ``weights/<name>``; unreadable checkpoints raise
``InputError`` (T24: the verdict is not attempted).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tempfile
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from auditor.compare.difference import Difference, Stat
from auditor.compare.weights import compare_weight_files, is_weights_file
from auditor.errors import InputError
from auditor.policy import Policy
from auditor.schema import ArtifactKind, ArtifactRef

if TYPE_CHECKING:
    from auditor.compare import Evidence

TEXT_LIMIT = 8 << 20  # larger files are compared as bytes: a line diff would be slow
MAX_DETAILS = 5  # differing lines shown per file
MASK = "<masked>"
BLOCK = 1 << 20  # bytes read at a time when looking for the first differing byte

Pair = tuple[ArtifactRef | None, ArtifactRef | None]


def compare(left: Evidence, right: Evidence, policy: Policy) -> list[Difference]:
    """Differences between the non-weights outputs (and logs) of the two runs."""
    kinds: tuple[ArtifactKind, ...] = ("output", "log") if policy.compare_logs else ("output",)
    masks = _masks(policy.log_masks)
    diffs: list[Difference] = []
    for name, pair in _pairs(left, right, kinds, policy):
        if not is_weights_file(Path(name)):
            found = _compare_file(name, pair, (left, right), masks)
            diffs.extend(_informational(d) if _kind(pair) == "log" else d for d in found)
    return diffs


def compare_weights(left: Evidence, right: Evidence, policy: Policy) -> list[Difference]:
    """Differences between the weights checkpoints the two runs wrote."""
    diffs: list[Difference] = []
    with tempfile.TemporaryDirectory(prefix="auditor-weights-") as tmp:
        for name, (a, b) in _pairs(left, right, ("output",), policy):
            if not is_weights_file(Path(name)) or (a and b and a.sha256 == b.sha256):
                continue
            if a is None or b is None:
                diffs.append(_presence(f"weights/{name}", a, b))
                continue
            paths = _paths(name, left, right)
            if isinstance(paths, Difference):
                diffs.append(paths.model_copy(update={"where": f"weights/{name}"}))
                continue
            named = (_named(paths[0], name, Path(tmp, "original")),
                     _named(paths[1], name, Path(tmp, "rerun")))
            diffs.extend(compare_weight_files(*named, policy, where=f"weights/{name}",
                                              left_sha256=a.sha256, right_sha256=b.sha256))
    return diffs


def _named(path: Path, name: str, folder: Path) -> Path:
    """The file under its artifact's file name: store blobs are named by digest, and the
    tensor readers pick the format by suffix and name the file in their errors."""
    base = Path(name).name
    if path.name == base:
        return path
    folder.mkdir(exist_ok=True)
    link = folder / base
    link.unlink(missing_ok=True)
    link.symlink_to(path.resolve())
    return link


def _pairs(left: Evidence, right: Evidence, kinds: tuple[ArtifactKind, ...],
           policy: Policy) -> list[tuple[str, Pair]]:
    """Artifacts of the given kinds from both runs, by name (sorted), minus ignored ones."""
    mine = {a.name: a for a in left.record.artifacts if a.kind in kinds}
    theirs = {a.name: a for a in right.record.artifacts if a.kind in kinds}
    names = sorted(set(mine) | set(theirs))
    return [(n, (mine.get(n), theirs.get(n))) for n in names
            if not any(fnmatch.fnmatchcase(n, glob) for glob in policy.ignore_outputs)]


def _kind(pair: Pair) -> ArtifactKind:
    return next(a.kind for a in pair if a is not None)


def _informational(diff: Difference) -> Difference:
    return diff.model_copy(update={"within_tolerance": True,
                                   "stats": {**diff.stats, "informational": True}})


def _presence(where: str, a: ArtifactRef | None, b: ArtifactRef | None) -> Difference:
    kind: Literal["missing", "extra"] = "missing" if b is None else "extra"
    return Difference(where=where, kind=kind, left=_describe(a), right=_describe(b),
                      comments=("written only by the " + ("original" if b is None else "rerun"),))


def _describe(ref: ArtifactRef | None) -> str | None:
    return None if ref is None else f"sha256:{ref.sha256[:12]} ({ref.size} bytes)"


def _paths(name: str, left: Evidence, right: Evidence) -> tuple[Path, Path] | Difference:
    a, b = left.files.get(name), right.files.get(name)
    if a is None or b is None:
        side = "original" if a is None else "rerun"
        return Difference(where=f"files/{name}", kind="error",
                          comments=(f"the {side}'s file is not available to compare",))
    return a, b


def _compare_file(name: str, pair: Pair, sides: tuple[Evidence, Evidence],
                  masks: list[re.Pattern[str]]) -> list[Difference]:
    a, b = pair
    if a is None or b is None:
        return [_presence(f"files/{name}", a, b)]
    if a.sha256 == b.sha256:
        return []
    paths = _paths(name, *sides)
    if isinstance(paths, Difference):
        return [paths]
    texts = _texts(*paths)
    if texts is None:
        return [_bytes_difference(name, *paths)]
    return _text_differences(name, texts, masks, informational=_kind(pair) == "log")


# -- text ------------------------------------------------------------------------------


def _masks(patterns: tuple[str, ...]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise InputError(f"policy log mask {pattern!r} is not a valid regex: {exc}") from None
    return compiled


def _texts(left: Path, right: Path) -> tuple[str, str] | None:
    """Both files as text, or None when either is large, binary or not UTF-8."""
    texts = []
    for path in (left, right):
        if path.stat().st_size > TEXT_LIMIT:
            return None
        data = path.read_bytes()
        if b"\0" in data:
            return None
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return texts[0], texts[1]


def _masked(text: str, masks: list[re.Pattern[str]]) -> list[str]:
    lines = text.split("\n")  # not splitlines(): a changed line ending stays visible
    for mask in masks:
        lines = [mask.sub(MASK, line) for line in lines]
    return lines


def _text_differences(name: str, texts: tuple[str, str], masks: list[re.Pattern[str]],
                      *, informational: bool) -> list[Difference]:
    left, right = (_masked(t, masks) for t in texts)
    where = f"files/{name}"
    if left == right:
        return [] if informational else [Difference(
            where=where, kind="text", within_tolerance=True, stats={"masked_only": True},
            comments=("the bytes differ only inside masked spans (times, durations, addresses)",))]
    hunks = [op for op in difflib.SequenceMatcher(None, left, right, autojunk=False).get_opcodes()
             if op[0] != "equal"]
    changed = sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in hunks)
    details = _line_details(where, hunks, left, right)
    stats: dict[str, Stat] = {"left_lines": len(left), "right_lines": len(right),
                              "changed_lines": changed, "first_line": hunks[0][1] + 1}
    return [Difference(where=where, kind="text", stats=stats, details=details,
                       comments=(f"{changed} lines differ after masking, the first at line "
                                 f"{hunks[0][1] + 1}",))]


def _line_details(where: str, hunks: Sequence[tuple[str, int, int, int, int]],
                  left: list[str], right: list[str]) -> tuple[Difference, ...]:
    details: list[Difference] = []
    for _, i1, i2, j1, j2 in hunks:
        for k, (a, b) in enumerate(zip_longest(left[i1:i2], right[j1:j2])):
            numbers: dict[str, Stat] = {"left_line": i1 + k + 1 if a is not None else None,
                                        "right_line": j1 + k + 1 if b is not None else None}
            line = numbers["left_line"] or numbers["right_line"]
            details.append(Difference(where=f"{where}@line {line}", kind="text", left=a, right=b,
                                      stats=numbers))
            if len(details) == MAX_DETAILS:
                return tuple(details)
    return tuple(details)


# -- bytes -----------------------------------------------------------------------------


def _bytes_difference(name: str, left: Path, right: Path) -> Difference:
    sizes = left.stat().st_size, right.stat().st_size
    offset = first_differing_offset(left, right)
    return Difference(where=f"files/{name}", kind="bytes", left=f"{sizes[0]} bytes",
                      right=f"{sizes[1]} bytes",
                      stats={"left_size": sizes[0], "right_size": sizes[1], "first_offset": offset},
                      comments=(f"first differing byte at offset {offset}",))


def first_differing_offset(left: Path, right: Path) -> int | None:
    """Offset of the first byte that differs (the shorter size for a prefix), None if equal."""
    offset = 0
    with left.open("rb") as fa, right.open("rb") as fb:
        while True:
            a, b = fa.read(BLOCK), fb.read(BLOCK)
            if a != b:
                return offset + _first_mismatch(a, b)
            if not a:
                return None
            offset += len(a)


def _first_mismatch(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    unequal = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(unequal[0]) if len(unequal) else n
