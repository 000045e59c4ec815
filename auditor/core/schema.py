"""The run record: everything needed to rebuild and rerun a training run.

This module is the ground floor: every stage reads these models and it imports nothing
of auditor's. Models are frozen pydantic v2 values with ``extra="forbid"`` (our own
records are exact); floats serialise NaN/±Inf as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"`` so canonical JSON stays strict (``allow_nan=False``).

A section that could not be captured on this machine is absent and named in
``RunRecord.not_captured`` with the reason (and what to install to get it), rather than
holding an invented value.

Run ids are sortable and path-safe: 26 characters of lowercase Crockford base32, the
first 10 a millisecond timestamp (so ids sort by start time), the rest random (a ULID).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
RECORD_MEDIA_TYPE = "application/vnd.auditor.run+json"

RunStatus = Literal["running", "finished", "failed", "crashed", "killed"]
ArtifactKind = Literal[
    "output", "log", "code", "lock", "env", "data", "build", "report", "checkpoint"
]
CheckpointKind = Literal["api", "registered", "resumed"]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RUN_ID_LENGTH = 26
MIN_PREFIX = 6
_RUN_ID_RE = re.compile(rf"[{_CROCKFORD}]{{{MIN_PREFIX},{RUN_ID_LENGTH}}}")


def new_run_id(now_ms: int | None = None) -> str:
    """A new ULID-style run id: time-sortable, lowercase, path-safe."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(RUN_ID_LENGTH)]
    return "".join(reversed(chars))


def is_run_id_prefix(text: str) -> bool:
    """True when ``text`` is a well-formed run id or a prefix of at least 6 characters."""
    return _RUN_ID_RE.fullmatch(text) is not None


# A field added after schema v1 is left out of the canonical bytes while it holds its
# default (``Field(default=..., exclude_if=...)``), so a record written before the field
# existed keeps its digest, and the certificates naming that digest stay valid
# (tests/integration/test_store_migrations.py reads a store made by auditor 0.1.0).


class Model(BaseModel):
    """Base of every record part: frozen, exact, strict JSON for non-finite floats."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")


class Identity(Model):
    """Who ran what, where and when, and how it ended."""

    id: str
    name: str
    user: str
    host: str
    started_at: datetime
    ended_at: datetime | None = None
    duration_s: float | None = None
    status: RunStatus = "running"
    exit_code: int | None = None
    reproduces: str | None = None  # the run this run is a rerun of
    tags: tuple[str, ...] = ()


class Command(Model):
    """The command that trained, relative to the repository root."""

    argv: tuple[str, ...]
    cwd: str  # relative to code.root ("." for the root itself)
    entry_point: str | None = None
    mode: Literal["wrap", "api"] = "wrap"
    metrics_regex: str | None = None  # replayed on the rerun's stdout
    # --input/--output paths outside the project tree, let in by --allow-outside-tree
    outside_tree: tuple[str, ...] = Field(default=(), exclude_if=lambda v: not v)


class Code(Model):
    """The exact source tree: a git commit plus the uncommitted diff and untracked files,
    or a snapshot of a directory outside git."""

    vcs: Literal["git", "snapshot"]
    root: str  # absolute path at record time (informational; reruns use the artifacts)
    remote: str | None = None  # credentials stripped
    commit: str | None = None
    branch: str | None = None
    dirty: bool = False
    diff_artifact: str | None = None  # binary git diff of tracked files against HEAD
    untracked_artifacts: tuple[str, ...] = ()  # artifact names "code/<relative path>"
    tree_sha256: str  # Merkle hash of the captured tree (path + content of every file)
    files: int = 0
    excluded: tuple[str, ...] = ()  # paths deliberately left out (the store, our own logs)


class Seeds(Model):
    """Seeds set through the API and the hash seed of the interpreter."""

    seed: int | None = None
    seeded: tuple[str, ...] = ()  # "random", "numpy", "torch", "cuda"
    pythonhashseed: str | None = None
    pythonhashseed_chosen_by_auditor: bool = False
    torch_initial_seed: int | None = None  # observed in the training process at exit


class Determinism(Model):
    """Numerics switches as they were in effect while the script trained."""

    source: Literal["observed-in-process", "environment-only"]
    torch_deterministic_algorithms: bool | None = None
    torch_deterministic_warn_only: bool | None = None
    cudnn_deterministic: bool | None = None
    cudnn_benchmark: bool | None = None
    cudnn_enabled: bool | None = None
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    float32_matmul_precision: str | None = None
    cublas_workspace_config: str | None = None
    torch_num_threads: int | None = None
    torch_num_interop_threads: int | None = None
    omp_num_threads: str | None = None
    mkl_num_threads: str | None = None


class LockRef(Model):
    """A lockfile stored as an artifact."""

    artifact: str
    sha256: str
    origin: Literal["project", "derived"]
    kind: Literal["pip", "conda"] = "pip"
    drift: tuple[str, ...] = ()  # installed packages that differ from the lock


class PythonEnv(Model):
    """The interpreter that trained (not auditor's own)."""

    executable: str
    version: str  # "3.11.7"
    implementation: str
    build: str
    packages: dict[str, str]  # normalised name -> version
    local: tuple[str, ...] = ()  # installed editable or from a local path: no index has them
    inspect_artifact: str | None = None  # full `pip inspect` JSON
    lock: LockRef | None = None


class Gpu(Model):
    """One GPU as reported by nvidia-smi."""

    index: int
    name: str
    uuid: str | None = None
    memory_total_mib: int | None = None
    compute_capability: str | None = None
    pci_bus_id: str | None = None


class Accelerators(Model):
    """GPUs and the CUDA stack."""

    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[Gpu, ...] = ()
    torch_cuda: str | None = None
    cudnn: str | None = None
    nccl: str | None = None
    cuda_available: bool | None = None


class System(Model):
    """Operating system and hardware."""

    os: str | None = None
    kernel: str | None = None
    machine: str | None = None
    glibc: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    cpu_affinity: int | None = None
    cpu_flags: tuple[str, ...] = ()
    ram_bytes: int | None = None
    hostname: str | None = None


class Environment(Model):
    """Everything outside the code that can change a result."""

    python: PythonEnv | None = None
    system: System | None = None
    accelerators: Accelerators | None = None
    container_image: str | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)  # values only for the allowlist


class DataInput(Model):
    """A declared input, fingerprinted."""

    path: str  # as given, relative to code.root when inside it
    kind: Literal["file", "dir"]
    size: int
    sha256: str  # file digest, or Merkle root for a directory
    files: int = 1
    # "untracked": a large binary file found untracked in the repository (weights, data),
    # fingerprinted as data instead of stored as source; the rerun gets it verified.
    origin: Literal["declared", "untracked"] = Field(
        default="declared", exclude_if=lambda v: v == "declared"
    )


class ArtifactRef(Model):
    """An output, log or code blob stored content-addressed."""

    name: str  # relative, forward slashes, no "..", e.g. "outputs/model.safetensors"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    kind: ArtifactKind

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # No record, however it was made, may name a path outside a restore directory.
        parts = name.split("/")
        if (not name or "\0" in name or "\\" in name or name.startswith("/")
                or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]):
            raise ValueError(f"artifact name {name[:80]!r} is not a safe relative path")
        return name


class CheckpointRef(Model):
    """One checkpoint of the run (``run.checkpoint`` / ``run.log_checkpoint``), or, in a
    rerun, the snapshot of the state ``run.resume`` restored ("resumed"). ``manifest`` is
    the digest of its manifest object, which names every file's digest and holds the
    per-tensor / per-RNG digests of the state (``auditor/record/checkpoints.py``)."""

    step: int = Field(ge=0)
    manifest: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: CheckpointKind = "api"
    size: int = Field(default=0, ge=0)  # bytes of its files (the manifest not counted)
    files: int = Field(default=0, ge=0)


class MetricsSummary(Model):
    """Final values and where the full series lives."""

    final: dict[str, float] = Field(default_factory=dict)
    points: int = 0
    series_sha256: str | None = None  # digest over every stored point, in order
    warnings: tuple[str, ...] = ()


class RunRecord(Model):
    """The complete record of one run. ``schema_version`` is checked on read."""

    schema_version: int = SCHEMA_VERSION
    identity: Identity
    command: Command
    code: Code | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    seeds: Seeds = Seeds()
    determinism: Determinism | None = None
    environment: Environment = Environment()
    data: tuple[DataInput, ...] = ()
    metrics: MetricsSummary = MetricsSummary()
    artifacts: tuple[ArtifactRef, ...] = ()
    not_captured: dict[str, str] = Field(default_factory=dict)
    # issue 19: checkpoints in step order (their files are also artifacts of kind
    # "checkpoint"); absent from the canonical bytes while empty (old digests hold)
    checkpoints: tuple[CheckpointRef, ...] = Field(default=(), exclude_if=lambda v: not v)

    def artifact(self, name: str) -> ArtifactRef | None:
        """The artifact stored under ``name``, if any."""
        return next((a for a in self.artifacts if a.name == name), None)

    def outputs(self) -> list[ArtifactRef]:
        """Artifacts the training produced (what reruns are compared on)."""
        return [a for a in self.artifacts if a.kind == "output"]


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, strict floats: the bytes that are hashed."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_bytes(record: RunRecord) -> bytes:
    """Canonical JSON bytes of a record (non-finite floats as strings)."""
    return canonical_json(json.loads(record.model_dump_json()))


def record_sha256(record: RunRecord) -> str:
    """The record's digest, which certificates name."""
    return hashlib.sha256(record_bytes(record)).hexdigest()
