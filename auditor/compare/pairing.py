"""Which output of the original goes with which output of the rerun.

Contract of ``pair_outputs(left, right)`` over two runs' artifact tables (name -> ref):

* equal names pair with each other;
* of the names left unpaired, those whose *pattern* is the same pair up, so an output whose
  name embeds a time, a process id or a run id (``ckpt-20261201-0530.pt``,
  ``events.out.tfevents.1764567890.host.123.0``) still meets its counterpart. A pattern is
  the name with every run of 4 or more digits, every token of 8 or more letters and digits
  that holds a digit (hex ids, run ids) and, for TensorBoard event files, everything after
  ``tfevents.`` replaced by a placeholder. Within one pattern, equal digests pair first,
  then the rest in name order (times sort in time order), one to one;
* what remains pairs with nothing (written by one run only).

Each ``Pair`` keeps both names; ``renamed`` says the rerun wrote its file under another
name. The comparers report a renamed pair whose contents match as informational.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from auditor.core.schema import ArtifactRef

_DIGITS = re.compile(r"\d{4,}")
_ID = re.compile(r"(?<![0-9A-Za-z])(?=[0-9A-Za-z]*\d)[0-9A-Za-z]{8,}(?![0-9A-Za-z])")
_EVENTS = re.compile(r"(tfevents\.).*$")


@dataclass(frozen=True)
class Pair:
    """One output of either run, or both: the original's (left) and the rerun's (right)."""

    left: ArtifactRef | None
    right: ArtifactRef | None

    @property
    def name(self) -> str:
        """The name the difference is reported under: the original's when it has one."""
        ref = self.left or self.right
        assert ref is not None
        return ref.name

    @property
    def renamed(self) -> bool:
        """Both runs wrote it, under different names."""
        return self.left is not None and self.right is not None and (
            self.left.name != self.right.name)


def pattern(name: str) -> str:
    """The name with its times, process ids and run ids replaced by ``#``."""
    folder, _, base = name.rpartition("/")
    if "tfevents." in base:
        base = _EVENTS.sub(r"\1#", base)
    base = _DIGITS.sub("#", _ID.sub("#", base))
    folder = _DIGITS.sub("#", _ID.sub("#", folder))
    return f"{folder}/{base}" if folder else base


def pair_outputs(left: Mapping[str, ArtifactRef], right: Mapping[str, ArtifactRef]) -> list[Pair]:
    """Every output of either run in one pair, sorted by the name it is reported under."""
    pairs = [Pair(left[n], right[n]) for n in left if n in right]
    alone_left = sorted(n for n in left if n not in right)
    alone_right = sorted(n for n in right if n not in left)
    by_pattern: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for n in alone_left:
        by_pattern[pattern(n)][0].append(n)
    for n in alone_right:
        by_pattern[pattern(n)][1].append(n)
    for lefts, rights in by_pattern.values():
        pairs += _match(lefts, rights, left, right)
    return sorted(pairs, key=lambda p: p.name)


def _match(lefts: list[str], rights: list[str], left: Mapping[str, ArtifactRef],
           right: Mapping[str, ArtifactRef]) -> list[Pair]:
    pairs: list[Pair] = []
    for n in list(lefts):  # equal contents first
        twin = next((m for m in rights if right[m].sha256 == left[n].sha256), None)
        if twin is not None:
            pairs.append(Pair(left[n], right[twin]))
            lefts.remove(n)
            rights.remove(twin)
    pairs += [Pair(left[a], right[b]) for a, b in zip(lefts, rights, strict=False)]
    pairs += [Pair(left[a], None) for a in lefts[len(rights):]]
    pairs += [Pair(None, right[b]) for b in rights[len(lefts):]]
    return pairs


class OutputCoverage(BaseModel):
    """Which output files (names of either run, sorted) a comparison read.

    ``compared``: read and compared (a difference in one of them counts, unless it is also
    in ``informational``); ``ignored``: matched by the policy's ``ignore_outputs`` (or logs
    under ``compare_logs = "off"``, or outputs a run withheld because they hold a secret),
    never read, so they prove nothing and must never
    become certificate subjects; ``informational``: compared, but as logs whose
    differences are reported without counting (``compare_logs = "informational"``);
    ``evidence_logs``: logs (captured stdout/stderr, log outputs) that were compared as
    evidence and counted: under ``compare_logs = "strict"``, or because the run produced
    nothing else (no output file, no metric), when the logs are all there is."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    compared: list[str] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    informational: list[str] = Field(default_factory=list)
    evidence_logs: list[str] = Field(default_factory=list)
