"""What a certificate may certify, and the policy loosenings it must carry.

The verdict says which outputs the comparison read (``Verdict.outputs``: compared,
ignored, informational) and every way the policy accepted more than the default one
(``Verdict.loosenings``, from ``policy.loosenings``, one line each). A certificate:

- names as subjects only outputs whose differences *counted* (compared and not merely
  informational): an ignored output, or a log whose differences were reported but not
  counted, is never a subject, so it can never pass a gate (``certified_outputs``); the
  others go to the predicate's ``not_compared`` (``uncertified_outputs``);
- carries every loosening line with its kind (``from_verdict``), so the release gate can
  refuse kinds of them (``GatePolicy.allowed_loosenings``).

What reports show as "policy loosened" (``shown_loosenings``) leaves out the note the
default ``compare_logs = "informational"`` adds when logs differed without counting: that
is the default policy at work, not a loosening, and reports show it as a note
(``log_notes``). The verdict and the certificate keep the line as they always did (the
gate judges it as the default policy's note, ``release.gate.policy_loosenings``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from auditor.certify.verdict import Verdict
from auditor.core.schema import ArtifactRef

LooseningKind = Literal["ignore_outputs", "tolerance", "compare_logs", "log_outputs",
                        "log_masks", "mask_outputs", "metadata_outputs", "gpu_mismatch",
                        "other"]
# line prefix (the policy key it names) -> kind; the first match wins
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("ignore_outputs", "ignore_outputs"), ("metric_tolerance", "tolerance"),
    ("dtype_tolerances", "tolerance"), ("tensors", "tolerance"), ("metrics", "tolerance"),
    ("compare_logs", "compare_logs"), ("log_outputs", "log_outputs"),
    ("log_masks", "log_masks"), ("mask_outputs", "mask_outputs"),
    ("metadata_outputs", "metadata_outputs"), ("allow_gpu_mismatch", "gpu_mismatch"),
)
KINDS: tuple[str, ...] = ("ignore_outputs", "tolerance", "compare_logs", "log_outputs",
                          "log_masks", "mask_outputs", "metadata_outputs", "gpu_mismatch",
                          "other")


class Loosening(BaseModel):
    """One way the policy accepted more than the defaults would, as the verdict said it."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: str  # one of KINDS (a string: readers of newer certificates may meet new kinds)
    detail: str


def kind_of(line: str) -> str:
    """The kind of one ``Verdict.loosenings`` line (by the policy key it starts with)."""
    return next((kind for prefix, kind in _PREFIXES if line.startswith(prefix)), "other")


def from_verdict(verdict: Verdict) -> list[Loosening]:
    """Every loosening of the verdict, in its order, with its kind."""
    return [Loosening(kind=kind_of(line), detail=line) for line in verdict.loosenings]


# The start of the line ``certify.decide`` adds when logs differed and were not counted
# under compare_logs = "informational", the default policy's own setting.
DEFAULT_LOG_NOTE = 'compare_logs = "informational":'


def is_log_note(line: str) -> bool:
    """Whether a ``Verdict.loosenings`` line is the default log setting's note."""
    return line.startswith(DEFAULT_LOG_NOTE)


def shown_loosenings(verdict: Verdict) -> list[str]:
    """The loosenings a report shows as "policy loosened": every one but the note of the
    default ``compare_logs = "informational"`` (see ``log_notes``)."""
    return [line for line in verdict.loosenings if not is_log_note(line)]


def log_notes(verdict: Verdict) -> list[str]:
    """Logs that differed and were not counted, as the default policy intends: a note."""
    return [line for line in verdict.loosenings if is_log_note(line)]


def certified_outputs(outputs: list[ArtifactRef], verdict: Verdict) -> list[ArtifactRef]:
    """The outputs whose differences counted in the verdict, and the logs compared as
    evidence (``outputs`` may hold every artifact): the only output subjects."""
    counted = (set(verdict.outputs.compared) - set(verdict.outputs.informational)) | set(
        verdict.outputs.evidence_logs)
    return [a for a in outputs if a.name in counted]


def uncertified_outputs(outputs: list[ArtifactRef], verdict: Verdict) -> list[ArtifactRef]:
    """The outputs the verdict did not count (ignored, informational, or not covered)."""
    certified = {a.name for a in certified_outputs(outputs, verdict)}
    return [a for a in outputs if a.name not in certified]
