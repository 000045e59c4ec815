"""Verification policy: what counts as "reproduced".

Loaded from ``auditor.toml`` (table ``[verify]``) or ``--policy FILE``. Tolerances are
dtype-aware (fp32 rtol 1.3e-6 / atol 1e-5 as in ``torch.testing``; fp16 and bf16 looser),
with per-tensor and per-metric overrides matched by glob. ``bitwise = true`` demands bit
identity everywhere. Unknown keys are refused (``extra="forbid"``) so a typo never
silently loosens a policy.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from auditor.capped import POLICY_LIMIT, read_capped
from auditor.errors import InputError


class Tolerance(BaseModel):
    """Relative and absolute tolerance: ``|a - b| <= atol + rtol * |a|``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rtol: float = Field(ge=0, strict=True)  # strict: a number, never the string "1e-3"
    atol: float = Field(ge=0, strict=True)

    def allows(self, left: float, right: float) -> bool:
        """True when ``right`` lies within tolerance of ``left`` (NaN == NaN handled by callers)."""
        return abs(left - right) <= self.atol + self.rtol * abs(left)


# torch.testing.assert_close defaults, per dtype.
DTYPE_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-7, atol=1e-7),
    "float32": Tolerance(rtol=1.3e-6, atol=1e-5),
    "float16": Tolerance(rtol=1e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-5),
}
EXACT = Tolerance(rtol=0.0, atol=0.0)

DEFAULT_LOG_MASKS: tuple[str, ...] = (
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?",  # ISO times
    r"\b\d{2}:\d{2}:\d{2}(?:\.\d+)?\b",  # clock times
    r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|secs|seconds|it/s|s/it)\b",  # durations and rates
    r"0x[0-9a-fA-F]{6,}",  # addresses
)


class Policy(BaseModel):
    """Tolerances and switches for one verification."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bitwise: StrictBool = False  # strict: "yes" or 1 is a mistake, not a yes
    nan_equal: StrictBool = True
    metric_tolerance: Tolerance = Tolerance(rtol=1e-5, atol=1e-8)
    dtype_tolerances: dict[str, Tolerance] = Field(default_factory=lambda: dict(DTYPE_TOLERANCES))
    tensors: dict[str, Tolerance] = Field(default_factory=dict)  # glob on tensor name
    metrics: dict[str, Tolerance] = Field(default_factory=dict)  # glob on metric name
    log_masks: tuple[str, ...] = DEFAULT_LOG_MASKS
    compare_logs: StrictBool = True
    ignore_outputs: tuple[str, ...] = ()  # globs of output names not compared
    allow_gpu_mismatch: StrictBool = False
    pass_env: tuple[str, ...] = ()  # redacted variables the rerun may receive from the host

    def tensor_tolerance(self, name: str, dtype: str) -> Tolerance:
        """The tolerance for one tensor: exact under ``bitwise``, else override, else dtype."""
        if self.bitwise:
            return EXACT
        for pattern, tol in self.tensors.items():
            if fnmatch.fnmatchcase(name, pattern):
                return tol
        return self.dtype_tolerances.get(dtype, self.dtype_tolerances.get("float32", EXACT))

    def metric_tolerance_for(self, name: str) -> Tolerance:
        """The tolerance for one metric series."""
        if self.bitwise:
            return EXACT
        for pattern, tol in self.metrics.items():
            if fnmatch.fnmatchcase(name, pattern):
                return tol
        return self.metric_tolerance


def load_policy(path: Path | None = None, *, bitwise: bool = False) -> Policy:
    """Read a policy file (``[verify]`` table of auditor.toml, or a whole policy file)."""
    data: dict[str, object] = {}
    if path is not None:
        if not path.exists():
            raise InputError(f"{path}: policy file not found")
        try:
            raw = tomllib.loads(read_capped(path, POLICY_LIMIT, "policy").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: invalid TOML: {exc}") from None
        table = raw.get("verify", raw)
        if not isinstance(table, dict):
            raise InputError(f"{path}: 'verify' must be a table ([verify]), not "
                             f"{type(table).__name__} {table!r:.40}")
        data = dict(table)
    if bitwise:
        data["bitwise"] = True
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: policy key {where!r}: {first['msg']}") from None
