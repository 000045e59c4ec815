"""What a verification policy loosened, compared with the built-in defaults.

A repository's ``auditor.toml`` can widen what counts as "reproduced". Every such
loosening is written into the certificate (``ReproductionPredicate.loosenings``), so a
reader and the release gate see it; the gate policy can refuse kinds of them
(``allowed_loosenings``). ``loosenings(policy, outputs)`` lists, in this order:

- ``ignore_outputs``: globs that took outputs out of the comparison (and which outputs);
- ``tolerance``: a metric, dtype, tensor or metric-override tolerance wider than the
  default it replaces (rtol or atol larger);
- ``compare_logs``: logs not compared at all;
- ``log_masks``: masks beyond the defaults (more of each log line ignored);
- ``gpu_mismatch``: reruns on other GPUs accepted.

``compared_outputs`` / ``ignored_outputs`` split a run's outputs by the policy's globs:
only compared outputs become certificate subjects.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict

from auditor.policy import DEFAULT_LOG_MASKS, DTYPE_TOLERANCES, Policy, Tolerance
from auditor.schema import ArtifactRef

LooseningKind = Literal["ignore_outputs", "tolerance", "compare_logs", "log_masks",
                        "gpu_mismatch"]
KINDS: tuple[str, ...] = ("ignore_outputs", "tolerance", "compare_logs", "log_masks",
                          "gpu_mismatch")


class Loosening(BaseModel):
    """One way the policy accepted more than the defaults would."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: str  # one of KINDS (a string: readers of newer certificates may meet new kinds)
    detail: str


def is_ignored(name: str, policy: Policy) -> bool:
    """True when an output name matches one of the policy's ``ignore_outputs`` globs."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in policy.ignore_outputs)


def compared_outputs(outputs: list[ArtifactRef], policy: Policy) -> list[ArtifactRef]:
    """The outputs the comparison looked at."""
    return [a for a in outputs if not is_ignored(a.name, policy)]


def ignored_outputs(outputs: list[ArtifactRef], policy: Policy) -> list[ArtifactRef]:
    """The outputs the policy took out of the comparison."""
    return [a for a in outputs if is_ignored(a.name, policy)]


def loosenings(policy: Policy, outputs: list[ArtifactRef]) -> list[Loosening]:
    """Every loosening of ``policy`` (see the module doc), most consequential first."""
    found: list[Loosening] = []
    if policy.ignore_outputs:
        names = [a.name for a in ignored_outputs(outputs, policy)]
        shown = ", ".join(names[:10]) + (f" … ({len(names)} in all)" if len(names) > 10 else "")
        found.append(Loosening(kind="ignore_outputs", detail=(
            f"ignore_outputs = {list(policy.ignore_outputs)}: "
            + (f"not compared and not certified: {shown}" if names else "no output matched"))))
    found += _tolerances(policy)
    if not policy.compare_logs:
        found.append(Loosening(kind="compare_logs", detail="compare_logs = false: logs were "
                                                           "not compared"))
    extra = [m for m in policy.log_masks if m not in DEFAULT_LOG_MASKS]
    if extra:
        found.append(Loosening(kind="log_masks", detail=f"{len(extra)} log mask(s) beyond the "
                               f"defaults: {', '.join(repr(m) for m in extra[:5])}"))
    if policy.allow_gpu_mismatch:
        found.append(Loosening(kind="gpu_mismatch", detail="allow_gpu_mismatch = true: a "
                                                           "rerun on other GPUs was accepted"))
    return found


def _tolerances(policy: Policy) -> list[Loosening]:
    if policy.bitwise:
        return []  # bit identity was demanded: no tolerance applied
    default = Policy()
    found = []
    if _wider(policy.metric_tolerance, default.metric_tolerance):
        found.append(_tol("metric_tolerance", policy.metric_tolerance, default.metric_tolerance))
    for dtype, tol in sorted(policy.dtype_tolerances.items()):
        base = DTYPE_TOLERANCES.get(dtype, DTYPE_TOLERANCES["float32"])
        if _wider(tol, base):
            found.append(_tol(f"dtype_tolerances.{dtype}", tol, base))
    for pattern, tol in sorted(policy.tensors.items()):
        base = DTYPE_TOLERANCES["float32"]
        if _wider(tol, base):
            found.append(_tol(f"tensors[{pattern!r}]", tol, base))
    for pattern, tol in sorted(policy.metrics.items()):
        if _wider(tol, default.metric_tolerance):
            found.append(_tol(f"metrics[{pattern!r}]", tol, default.metric_tolerance))
    return found


def _wider(tol: Tolerance, base: Tolerance) -> bool:
    return tol.rtol > base.rtol or tol.atol > base.atol


def _tol(where: str, tol: Tolerance, base: Tolerance) -> Loosening:
    return Loosening(kind="tolerance", detail=f"{where}: rtol {tol.rtol:g}, atol {tol.atol:g} "
                                              f"(default rtol {base.rtol:g}, atol {base.atol:g})")
