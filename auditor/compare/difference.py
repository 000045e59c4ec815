"""The recursive ``Difference`` value every comparer returns.

"Identical" is an empty list, never an exception. A difference says *where* it is
(``weights/fc1.bias``, ``metrics/loss@step 120``), what *kind* it is, the two sides in
short form, a magnitude, whether it lies inside the policy's tolerance, and optional
statistics, comments and nested details (diffoscope's ``Difference``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stat = float | int | str | bool | None

DiffKind = Literal[
    "value",  # numbers differ (tensor elements, metric values)
    "missing",  # present in the original (left), absent in the rerun (right)
    "extra",  # absent in the original, present in the rerun
    "shape",
    "dtype",
    "bytes",  # opaque files whose sha256 differ
    "text",  # text files differing line by line
    "changed",  # a structured field (param, environment entry) changed
    "error",  # the evidence could not be read (corrupt, unsafe)
    "renamed",  # the rerun wrote the same file under another name (a time or id in it)
]


class Difference(BaseModel):
    """One place where the original run (left) and the rerun (right) disagree."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    where: str
    kind: DiffKind
    left: str | None = None
    right: str | None = None
    magnitude: float | None = None
    within_tolerance: bool = False
    stats: dict[str, Stat] = Field(default_factory=dict)
    comments: tuple[str, ...] = ()
    details: tuple[Difference, ...] = ()

    def with_comment(self, comment: str) -> Difference:
        """A copy with one more comment."""
        return self.model_copy(update={"comments": (*self.comments, comment)})


def beyond_tolerance(diffs: list[Difference]) -> list[Difference]:
    """The differences that break the policy."""
    return [d for d in diffs if not d.within_tolerance]
