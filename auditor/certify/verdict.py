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


Check = Literal["full", "spot-check", "resume"]


class SegmentOutcome(BaseModel):
    """One replayed segment of a spot-check (or the resumed stretch of a resume check):
    from the checkpoint at ``start`` to the one at ``end``."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")
    index: int  # segment k: checkpoint k -> k + 1 (0-based); -1 for a resume check
    start: int  # step of the starting checkpoint
    end: int  # step of the checkpoint it must reach (the run's last step for a resume)
    level: Level
    first_difference: str | None = None
    differences: list[Difference] = Field(default_factory=list)
    rerun_run: str | None = None
    seconds: float = 0.0


class SpotCheck(BaseModel):
    """What a partial verification replayed, chosen how, and what it could catch."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")
    segments_total: int  # n: segments between consecutive recorded checkpoints
    chosen: list[int] = Field(default_factory=list)  # segment indexes replayed
    seed: str | None = None  # the text choose_segments ranked by
    seed_source: str = ""  # "given" or "certificate-log head <sha256> + fresh randomness"
    replayed_steps: int = 0
    total_steps: int = 0
    fraction: float = 0.0  # replayed_steps / total_steps
    catch_one: float | None = None  # chance to catch 1 bad segment of n
    catch_tenth_k: int | None = None  # k = 10% of n (at least 1)
    catch_tenth: float | None = None  # chance to catch catch_tenth_k bad segments of n
    resume_at: int | None = None  # a resume check: the step resumed from
    restored: list[str] = Field(default_factory=list)  # restored-state differences, named


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
    # what was replayed: the whole training ("full"), sampled segments ("spot-check"), or
    # from a checkpoint to the end ("resume"); partial checks carry their segments
    check: Check = "full"
    spot_check: SpotCheck | None = None
    segments: list[SegmentOutcome] = Field(default_factory=list)
