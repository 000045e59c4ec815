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
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.certify.verdict import Cause
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
