"""Verification policy: what counts as "reproduced", and what the rerun is allowed.

Loaded from ``auditor.toml`` (table ``[verify]``) or ``--policy FILE`` by ``load_policy``,
the one loader ``audit verify``, ``rerun`` and ``compare`` use. ``Policy`` has two parts
read from the same flat table: ``compare`` (``ComparePolicy``: what the comparison
tolerates; the comparers take only this) and ``rerun`` (``RerunPolicy``: what the rerun may
receive or differ in, ``pass_env`` and ``allow_gpu_mismatch``; the sandbox takes only
this). Tolerances are dtype-aware (fp32 rtol 1.3e-6 / atol 1e-5 as in ``torch.testing``;
fp16 and bf16 looser), with per-tensor and per-metric overrides matched by glob.
``bitwise = true`` demands bit identity everywhere. Unknown keys are refused
(``extra="forbid"``) so a typo never silently loosens a policy.

Tolerance profiles are policy entries, not code: ``profile = "strict" | "standard" |
"relaxed"`` (or a name the project defines under ``[verify.profiles.NAME]``) takes that
profile's keys from ``templates/profiles.toml`` (shipped) or the project's table; keys
written beside ``profile`` win. The resolved table is what results and certificates store
(with ``profile`` naming where it came from), so a gate judges the values, not the name.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from auditor.core.capped import POLICY_LIMIT, read_capped
from auditor.core.errors import InputError


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

DEFAULT_LOG_MASKS: tuple[str, ...] = (  # applied in order
    # "ms/batch 12.3": a rate whose number follows its unit
    r"\b(?:ms|s|sec|us|µs)/(?:batch|step|it|iter|epoch|sample)\s*[:=]?\s*\d+(?:\.\d+)?",
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?",  # ISO times
    r"\b\d{2}:\d{2}:\d{2}(?:\.\d+)?\b",  # clock times
    r"\b\d+(?:\.\d+)?\s?(?:ms|s|sec|secs|seconds|it/s|s/it)\b",  # durations and rates
    r"0x[0-9a-fA-F]{6,}",  # addresses
    r"\b\d+:\d{2}(?::\d{2})?(?:<\d+:\d{2}(?::\d{2})?)?",  # elapsed<remaining (progress bars)
    r"(?i)\bpid\s*[:=]?\s*\d+",  # process ids
)
# Output files that are logs: differences in them are evidence, not a verdict, unless
# ``compare_logs = "strict"`` (fnmatch globs on the artifact name; ``*`` crosses folders).
DEFAULT_LOG_OUTPUTS: tuple[str, ...] = (
    "*.log", "*.log.[0-9]*", "*.out", "*.err", "*.stdout", "*.stderr", "logs/*.txt",
    "*/logs/*.txt", "log/*.txt", "*/log/*.txt",
)
LogMode = Literal["informational", "strict", "off"]


def _output_matches(name: str, globs: tuple[str, ...]) -> bool:
    """Whether an output (stored as ``outputs/<path in the working directory>``) matches one
    of ``globs``, written either as that path (``logs/*.txt``, ``timing.json``, as users
    write them) or as the stored name (``outputs/logs/*.txt``)."""
    inside = name.removeprefix("outputs/")
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(inside, g) for g in globs)


class ComparePolicy(BaseModel):
    """What the comparison tolerates: tolerances, log handling, outputs left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bitwise: StrictBool = False  # strict: "yes" or 1 is a mistake, not a yes
    nan_equal: StrictBool = True
    metric_tolerance: Tolerance = Tolerance(rtol=1e-5, atol=1e-8)
    dtype_tolerances: dict[str, Tolerance] = Field(default_factory=lambda: dict(DTYPE_TOLERANCES))
    tensors: dict[str, Tolerance] = Field(default_factory=dict)  # glob on tensor name
    metrics: dict[str, Tolerance] = Field(default_factory=dict)  # glob on metric name
    log_masks: tuple[str, ...] = DEFAULT_LOG_MASKS
    # Logs (captured stdout/stderr and outputs matching ``log_outputs``): "informational"
    # reports their differences after masks without counting them; "strict" counts them
    # (a difference left after the masks fails); "off" does not compare them at all.
    compare_logs: LogMode = "informational"
    log_outputs: tuple[str, ...] = DEFAULT_LOG_OUTPUTS
    ignore_outputs: tuple[str, ...] = ()  # globs of output names not compared
    # Outputs (globs) whose text the log masks apply to: by default masks hide times and
    # ids in logs only, and every other output is compared byte for byte (a loosening).
    mask_outputs: tuple[str, ...] = ()
    # Structured outputs (globs) whose container metadata may differ while every tensor
    # (and checkpoint value) is identical: a safetensors ``__metadata__``, a torch zip's
    # records. Such a difference is then within tolerance (a loosening), never bitwise;
    # without it, it counts beyond tolerance.
    metadata_outputs: tuple[str, ...] = ()
    # the tolerance profile the table was resolved from (informational: its keys are set)
    profile: str | None = None

    @field_validator("compare_logs", mode="before")
    @classmethod
    def _log_mode(cls, value: object) -> object:
        # The switch was a bool: true compared logs (as information), false left them out.
        if value is True:
            return "informational"
        if value is False:
            return "off"
        return value

    def is_log_output(self, name: str) -> bool:
        """True when the output file ``name`` is a log (matches ``log_outputs``)."""
        return _output_matches(name, self.log_outputs)

    def is_masked_output(self, name: str) -> bool:
        """True when the log masks apply to the output ``name``: a log, or an output named
        by ``mask_outputs``."""
        return self.is_log_output(name) or _output_matches(name, self.mask_outputs)

    def metadata_may_differ(self, name: str) -> bool:
        """True when ``metadata_outputs`` lets the container metadata of ``name`` differ."""
        return _output_matches(name, self.metadata_outputs)

    def is_ignored(self, name: str) -> bool:
        """True when the output ``name`` matches an ``ignore_outputs`` glob (not compared)."""
        return _output_matches(name, self.ignore_outputs)

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


class RerunPolicy(BaseModel):
    """What the rerun is allowed: host variables it may receive, another GPU model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_gpu_mismatch: StrictBool = False
    pass_env: tuple[str, ...] = ()  # redacted variables the rerun may receive from the host


class Policy(BaseModel):
    """One verification's policy: ``compare`` (what the comparison tolerates) and ``rerun``
    (what the rerun is allowed). Built from the flat ``[verify]`` table: each key goes to
    the part that defines it; an unknown key is refused (by the compare part)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compare: ComparePolicy = ComparePolicy()
    rerun: RerunPolicy = RerunPolicy()

    @model_validator(mode="before")
    @classmethod
    def _from_table(cls, value: object) -> object:
        if not isinstance(value, dict) or set(value) <= {"compare", "rerun"}:
            return value
        compare, rerun = _split(value)
        return {"compare": compare, "rerun": rerun}

    @classmethod
    def from_table(cls, table: dict[str, object]) -> Policy:
        """The policy of a flat ``[verify]`` table (``ValidationError`` naming the bad key;
        ``compare``/``rerun`` are no keys of the file: refused like any unknown key)."""
        compare, rerun = _split(table)
        return cls(compare=ComparePolicy.model_validate(compare),
                   rerun=RerunPolicy.model_validate(rerun))

    def table(self) -> dict[str, object]:
        """The flat ``[verify]`` table of this policy (JSON types), as results store it."""
        return {**self.compare.model_dump(mode="json"), **self.rerun.model_dump(mode="json")}

    def with_gpu_mismatch(self) -> Policy:
        """This policy with ``allow_gpu_mismatch`` set (``--allow-gpu-mismatch``)."""
        return self.model_copy(
            update={"rerun": self.rerun.model_copy(update={"allow_gpu_mismatch": True})})


def _split(table: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """A flat table's keys for the compare part and for the rerun part (unknown keys go to
    the compare part, which refuses them)."""
    rerun = {k: v for k, v in table.items() if k in RerunPolicy.model_fields}
    return {k: v for k, v in table.items() if k not in rerun}, rerun


def policy_path(given: Path | None, root: Path | None = None) -> Path | None:
    """The policy file to read: ``given``, else ``auditor.toml`` in ``root`` (default: the
    current folder) when there is one, else None (the defaults)."""
    if given is not None:
        return given
    default = (root or Path()) / "auditor.toml"
    return default if default.is_file() else None


PROFILES_PATH = Path(__file__).resolve().parents[1] / "templates" / "profiles.toml"


def builtin_profiles() -> dict[str, dict[str, Any]]:
    """The shipped tolerance profiles (``templates/profiles.toml``), by name."""
    return {k: dict(v) for k, v in tomllib.loads(PROFILES_PATH.read_text("utf-8")).items()
            if isinstance(v, dict)}


def apply_profile(table: dict[str, Any], profile: str | None = None,
                  where: object = "policy") -> dict[str, Any]:
    """``table`` with its ``profile`` (or the one given, which wins) resolved: the profile's
    keys first, the table's own on top; ``profiles`` (the project's definitions) removed.
    An unknown profile is ``InputError`` naming the known ones."""
    table = dict(table)
    defined = table.pop("profiles", {})
    if not isinstance(defined, dict) or not all(isinstance(v, dict) for v in defined.values()):
        raise InputError(f"{where}: 'profiles' must hold tables ([verify.profiles.NAME])")
    name = profile or table.pop("profile", None)
    table.pop("profile", None)
    if name is None:
        return table
    known = {**builtin_profiles(), **defined}
    if not isinstance(name, str) or name not in known:
        raise InputError(f"{where}: unknown tolerance profile {name!r}",
                         hint=f"known profiles: {', '.join(sorted(known))}")
    return {**known[name], **table, "profile": name}


def load_policy(path: Path | None = None, *, bitwise: bool = False,
                profile: str | None = None) -> Policy:
    """Read a policy file (``[verify]`` table of auditor.toml, or a whole policy file);
    ``profile`` (``--profile``) picks a tolerance profile over the file's own."""
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
    data = apply_profile(data, profile, path or "policy")
    if bitwise:
        data["bitwise"] = True
    try:
        return Policy.from_table(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: policy key {where!r}: {first['msg']}") from None


DEFAULT_POLICY = Policy()


def loosenings(policy: Policy) -> list[str]:
    """Each way ``policy`` accepts more than the default policy does, one line each, in a
    fixed order: outputs left out, wider tolerances, logs or masks that hide differences,
    a GPU mismatch allowed. Reports and certificates show these first."""
    lines = _compare_loosenings(policy.compare)
    if policy.rerun.allow_gpu_mismatch:
        lines.append("allow_gpu_mismatch: the rerun may run on another GPU model")
    return lines


def _compare_loosenings(policy: ComparePolicy) -> list[str]:
    lines: list[str] = []
    if policy.ignore_outputs:
        lines.append("ignore_outputs: outputs matching " + ", ".join(policy.ignore_outputs)
                     + " are not compared and cannot be certified")
    if not policy.bitwise:  # under bitwise no tolerance applies
        lines += _tolerances(policy)
    if policy.compare_logs == "off":
        lines.append("compare_logs = \"off\": logs are not compared at all")
    extra_logs = [g for g in policy.log_outputs if g not in DEFAULT_LOG_OUTPUTS]
    if extra_logs and policy.compare_logs != "strict":
        lines.append("log_outputs: outputs matching " + ", ".join(extra_logs)
                     + " are treated as logs, whose differences do not count")
    extra_masks = [m for m in policy.log_masks if m not in DEFAULT_LOG_MASKS]
    if extra_masks:
        lines.append(f"log_masks: {len(extra_masks)} custom mask(s) hide matching text in logs"
                     + (" and the outputs named by mask_outputs" if policy.mask_outputs else "")
                     + ": " + ", ".join(extra_masks))
    if policy.mask_outputs:
        lines.append("mask_outputs: the log masks (times, durations, hex ids, pids) also hide "
                     "text in outputs matching " + ", ".join(policy.mask_outputs))
    if policy.metadata_outputs:
        lines.append("metadata_outputs: the container metadata (safetensors __metadata__, "
                     "torch zip records) of outputs matching " + ", ".join(policy.metadata_outputs)
                     + " may differ when every tensor is identical")
    return lines


def _tolerances(policy: ComparePolicy) -> list[str]:
    default = DEFAULT_POLICY.compare.metric_tolerance
    lines = _wider("metric_tolerance", policy.metric_tolerance, default)
    for dtype, tol in sorted(policy.dtype_tolerances.items()):
        lines += _wider(f"dtype_tolerances.{dtype}", tol, DTYPE_TOLERANCES.get(dtype, EXACT))
    for glob, tol in sorted(policy.tensors.items()):
        lines += _wider(f"tensors.{glob!r}", tol, DTYPE_TOLERANCES["float32"], "float32 default")
    for glob, tol in sorted(policy.metrics.items()):
        lines += _wider(f"metrics.{glob!r}", tol, default)
    return lines


def _wider(key: str, tol: Tolerance, default: Tolerance, label: str = "default") -> list[str]:
    if tol.rtol <= default.rtol and tol.atol <= default.atol:
        return []
    return [f"{key}: rtol {tol.rtol:g}, atol {tol.atol:g} is wider than the {label} "
            f"(rtol {default.rtol:g}, atol {default.atol:g})"]
