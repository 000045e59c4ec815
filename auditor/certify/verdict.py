"""What a verification concludes: the verdict, its likely causes, and the evidence.

``verdict.decide`` builds a ``Verdict`` from the comparers' differences; ``verify``
wraps it in a ``VerifyResult`` with both run ids, the certificate and the timings;
reports and gates read only these values. Stored as JSON (``verify/<run>.json`` blob)
so ``audit report RUN`` can render a past verification without rerunning it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from auditor.compare.difference import Difference
from auditor.compare.pairing import OutputCoverage

Level = Literal[
    "reproduced-bitwise", "reproduced-within-tolerance", "not-reproduced", "could-not-verify"
]
EXIT_CODES: dict[str, int] = {
    "reproduced-bitwise": 0,
    "reproduced-within-tolerance": 0,
    "not-reproduced": 1,
    "could-not-verify": 3,
}
LEVEL_RANK: dict[str, int] = {
    "not-reproduced": 0,
    "could-not-verify": 0,
    "reproduced-within-tolerance": 1,
    "reproduced-bitwise": 2,
}


class Cause(BaseModel):
    """A likely cause of a divergence, most likely first."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    category: str  # "seed", "determinism", "threads", "packages", "python", "gpu", ...
    what: str  # "PYTHONHASHSEED", "torch_num_threads", "numpy"
    left: str | None = None
    right: str | None = None
    score: float = 0.0  # higher is more likely
    explanation: str = ""


class Verdict(BaseModel):
    """The decision over all differences."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")
    level: Level
    differences: dict[str, list[Difference]] = Field(default_factory=dict)  # by comparer
    causes: list[Cause] = Field(default_factory=list)
    first_divergence: str | None = None  # e.g. "metrics/loss@step 0"
    summary: dict[str, int] = Field(default_factory=dict)  # compared/identical/within/beyond
    notes: list[str] = Field(default_factory=list)
    # Which output files were compared, which the policy left out (ignore_outputs: never
    # evidence, never a certificate subject) and which were compared as logs only.
    outputs: OutputCoverage = Field(default_factory=OutputCoverage)
    # Each way the policy accepted more than the default one (policy.loosenings), and log
    # differences reported but not counted: every report shows these first.
    loosenings: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 reproduced, 1 not reproduced, 3 could not verify."""
        return EXIT_CODES[self.level]


class VerifyResult(BaseModel):
    """A whole verification: what was compared with what, and the conclusion."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")
    schema_version: int = 1
    original_run: str
    original_name: str
    rerun_run: str | None = None
    rerun_name: str | None = None
    verdict: Verdict
    policy: dict[str, object] = Field(default_factory=dict)
    image: str | None = None
    backend: str | None = None
    environment_sha256: str | None = None
    certificate_sha256: str | None = None
    certificate_path: str | None = None
    started_at: datetime
    seconds: dict[str, float] = Field(default_factory=dict)  # build, rerun, compare, total
    metric_series: dict[str, dict[str, list[tuple[int, float]]]] = Field(default_factory=dict)
    # ^ {"original": {"loss": [(step, value), ...]}, "rerun": {...}}, downsampled for plots
