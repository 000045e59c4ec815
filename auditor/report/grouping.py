"""What belongs together is shown together (issue 10): a run recorded outside its lockfile
changes 97 packages, and 97 rows would push the real cause off the screen.

``grouped(diffs)`` returns the environment comparer's differences with every
``environment/packages/<name>`` row folded into one ``environment/packages`` difference
when there are more than ``MAX_ROWS`` of them ("97 packages differ; top: numpy 2.4.6 →
2.2.6, …"), keeping the first ``MAX_DETAILS`` as nested details in name order. Other
differences pass through unchanged, in order. Every report format uses it for its tables.

``cause_line(cause)`` is a likely cause as one line, the same in every format:
``PYTHONHASHSEED (seed): 0 → random``; a cause without sides (grouped packages, an
unexplained divergence) gives the first sentence of its explanation.

``summary_rows(summary)`` / ``counts_text(summary)`` are the verdict's counts in words
("2 metrics compared · 1 file compared · …"), the same in every human-readable format; the
JSON keeps its keys (``compared_metrics``, …). ``environment_line(diffs)`` names the first
few environment changes ("5 changes (python 3.11.7 → 3.11.9, numpy 2.4.6 → 2.2.6, …)")
for a report whose likely causes do not already name them (a bitwise verdict has none).

``check_line(result)`` / ``segment_rows(result)``: what a spot-check or resume check
replayed (segments, seed, fraction, chance to catch bad segments) and one row per
replayed segment (segment, replayed steps, verdict, first difference), for every format.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.certify.verdict import Cause, SegmentOutcome, VerifyResult
from auditor.compare.difference import Difference

MAX_ROWS = 3
MAX_DETAILS = 25
# Framework and numerics packages are named first in the folded line.
FIRST = ("torch", "numpy", "scipy", "jax", "jaxlib", "tensorflow", "safetensors")


def grouped(diffs: Sequence[Difference]) -> list[Difference]:
    """``diffs`` with many package changes folded into one difference."""
    packages = [d for d in diffs if d.where.startswith("environment/packages/")]
    if len(packages) <= MAX_ROWS:
        return list(diffs)
    folded: Difference | None = fold_packages(packages)
    members = {id(d) for d in packages}
    out: list[Difference] = []
    for diff in diffs:
        if id(diff) not in members:
            out.append(diff)
        elif folded is not None:  # the folded row stands where the first package stood
            out.append(folded)
            folded = None
    return out


def fold_packages(packages: Sequence[Difference]) -> Difference:
    """One difference standing for many package changes."""
    ranked = sorted(packages, key=lambda d: (_rank(d), d.where))
    top = ", ".join(f"{_name(d)} {d.left} → {d.right}" for d in ranked[:3])
    shown = sorted(packages, key=lambda d: d.where)[:MAX_DETAILS]
    hidden = len(packages) - len(shown)
    comments = [f"{len(packages)} installed packages differ; top: {top}, …"]
    if hidden:
        comments.append(f"{hidden} more not listed")
    return Difference(where="environment/packages", kind="changed", within_tolerance=True,
                      left=f"{len(packages)} packages", right=f"{len(packages)} packages",
                      stats={"group": "packages", "changed": len(packages)},
                      comments=tuple(comments), details=tuple(shown))


def _name(diff: Difference) -> str:
    return diff.where.removeprefix("environment/packages/")


def _rank(diff: Difference) -> int:
    name = _name(diff)
    return FIRST.index(name) if name in FIRST else len(FIRST)


# verdict summary key -> (one, many): the words every human-readable report shows
SUMMARY_WORDS: dict[str, tuple[str, str]] = {
    "compared_metrics": ("metric compared", "metrics compared"),
    "compared_files": ("file compared", "files compared"),
    "compared_logs": ("log compared as evidence", "logs compared as evidence"),
    "identical": ("identical", "identical"),
    "within_tolerance": ("difference within tolerance", "differences within tolerance"),
    "beyond_tolerance": ("difference beyond tolerance", "differences beyond tolerance"),
    "environment_changes": ("environment change", "environment changes"),
    "informational": ("difference not counted", "differences not counted"),
}
SHOWN_WHEN_ZERO = frozenset(SUMMARY_WORDS) - {"compared_logs"}  # logs as evidence are rare
# environment groups, most telling first, for naming a few of many changes
ENVIRONMENT_ORDER = ("seeds", "determinism", "gpu", "python", "packages", "cpu", "os", "env")
NAMED_CHANGES = 3


def summary_rows(summary: dict[str, int]) -> list[tuple[str, int]]:
    """(words, count) of the verdict's counts, in their order (an unknown key in words)."""
    rows = []
    for key, count in summary.items():
        one, many = SUMMARY_WORDS.get(key, (key.replace("_", " "),) * 2)
        if count or key not in SUMMARY_WORDS or key in SHOWN_WHEN_ZERO:
            rows.append((one if count == 1 else many, count))
    return rows


def counts_text(summary: dict[str, int]) -> str:
    """``2 metrics compared · 1 file compared · 0 identical · …``."""
    return " · ".join(f"{n} {words}" for words, n in summary_rows(summary)) or (
        "no counts recorded")


def environment_line(diffs: Sequence[Difference]) -> str | None:
    """``5 changes (python 3.11.7 → 3.11.9, numpy 2.4.6 → 2.2.6, …)``; None for none."""
    if not diffs:
        return None
    ranked = sorted(diffs, key=_environment_rank)
    named = ", ".join(change_name(d) for d in ranked[:NAMED_CHANGES])
    more = ", …" if len(diffs) > NAMED_CHANGES else ""
    return f"{len(diffs)} change{'s' if len(diffs) != 1 else ''} ({named}{more})"


def change_name(diff: Difference) -> str:
    """One environment change by name: ``python 3.11.7 → 3.11.9``, ``TRAIN_LR 0.1 → 0.2``."""
    parts = diff.where.split("/", 2)  # environment/<group>[/<item>]
    group = parts[1] if len(parts) > 1 else diff.where
    if len(parts) < 3:
        why = diff.comments[0] if diff.comments else f"{diff.left} → {diff.right}"
        return f"{group} {why}"
    item = "python" if group == "python" and parts[2] == "version" else parts[2]
    return f"{item} {_side(diff.left)} → {_side(diff.right)}"


def _side(value: str | None) -> str:
    return "(none)" if value in (None, "None") else str(value)


def _environment_rank(diff: Difference) -> tuple[int, int, str]:
    parts = diff.where.split("/", 2)
    group = parts[1] if len(parts) > 1 else ""
    order = ENVIRONMENT_ORDER.index(group) if group in ENVIRONMENT_ORDER else len(
        ENVIRONMENT_ORDER)
    return order, _rank(diff) if group == "packages" else 0, diff.where


def cause_line(cause: Cause) -> str:
    """One likely cause as one line (see the module docstring)."""
    if (cause.left, cause.right) == (None, None) and cause.explanation:
        return f"{cause.what} ({cause.category}): {first_sentence(cause.explanation)}"
    change = f": {cause.left} → {cause.right}" if (cause.left, cause.right) != (None, None) else ""
    return f"{cause.what} ({cause.category}){change}"


def first_sentence(text: str, limit: int = 200) -> str:
    """The text up to its first ". " (a version such as 2.4.6 has no space after its dots)."""
    head = text.split(". ", 1)[0].rstrip(".")
    return head if len(head) <= limit else head[: limit - 1] + "…"


# -- partial checks (spot-check segments, resume equivalence) ----------------------------

SEGMENT_HEADER = ("segment", "replayed steps", "verdict", "first difference")


def check_line(result: VerifyResult) -> str | None:
    """What a partial verification replayed and could catch, one line; None for a full
    rerun. ``spot-check: 2 of 20 segments (10.0% of 2000 steps), seed 3f2a…(given);
    catches 1 bad segment 10.0%, 2 bad 19.5%``."""
    spot = result.spot_check
    if result.check == "full" or spot is None:
        return None
    seed = f"seed {spot.seed[:12]}…" if spot.seed and len(spot.seed) > 12 else \
        f"seed {spot.seed}"
    if result.check == "resume":
        return (f"resume equivalence: resumed at step {spot.resume_at} and trained to the end "
                f"({spot.fraction:.1%} of {spot.total_steps} steps replayed)")
    line = (f"spot-check: {len(spot.chosen)} of {spot.segments_total} segments "
            f"({spot.fraction:.1%} of {spot.total_steps} steps replayed), {seed} "
            f"({spot.seed_source or 'given'})")
    if spot.catch_one is not None:
        line += f"; chance to catch 1 bad segment {spot.catch_one:.1%}"
    if spot.catch_tenth is not None and spot.catch_tenth_k is not None:
        line += f", {spot.catch_tenth_k} bad {spot.catch_tenth:.1%}"
    return line


def segment_label(segment: SegmentOutcome) -> str:
    """``segment 3`` (a spot-check) or ``resumed`` (a resume check)."""
    return "resumed" if segment.index < 0 else f"segment {segment.index}"


def segment_rows(result: VerifyResult) -> list[tuple[str, str, str, str]]:
    """One row per replayed segment: (segment, replayed steps, verdict, first difference)."""
    return [(segment_label(s), f"{s.start} → {s.end}", s.level, s.first_difference or "-")
            for s in result.segments]
