"""Begin and finish a run record: the capture steps shared by ``audit record`` and the API.

``begin`` captures everything knowable before training (code, interpreter, system, GPUs,
inputs, environment) and stores the record with status ``running``; ``finish`` stores the
final record in one transaction. Between the two a crash leaves a ``running`` row whose
recorder pid is dead, which ``RunStore.mark_stale_runs`` turns into ``crashed``.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from auditor.core.errors import InputError
from auditor.core.schema import (
    Accelerators,
    ArtifactRef,
    Command,
    DataInput,
    Environment,
    Gpu,
    Identity,
    LockRef,
    PythonEnv,
    RunRecord,
    Seeds,
    System,
    new_run_id,
)
from auditor.record import container
from auditor.record.capture import data as data_capture
from auditor.record.capture import git as git_capture
from auditor.record.capture import python_env
from auditor.record.capture.gpu import capture_gpus
from auditor.record.capture.secrets import (
    redact_argv,
    redact_env,
    redacted_env_value,
    scrub_strings,
)
from auditor.record.capture.streams import OwnLogs
from auditor.record.capture.system import capture_system
from auditor.store import RunStore, repo_root
from auditor.store.base import series_digest


@dataclass
class Plan:
    """What to record, as the user asked for it."""

    name: str | None
    argv: list[str]
    cwd: Path
    mode: Literal["wrap", "api"] = "wrap"
    inputs: Sequence[Path] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str | None = None
    code_dir: Path | None = None
    tags: Sequence[str] = ()
    reproduces: str | None = None
    env_allow: Sequence[str] = ()
    params: Mapping[str, object] = field(default_factory=dict)
    metrics_regex: str | None = None
    own_logs: OwnLogs = field(default_factory=OwnLogs)  # files our stdout/stderr go into
    outputs: Sequence[Path] = ()  # declared outputs (only checked here)
    allow_outside_tree: bool = False
    image: container.Image | None = None  # the command runs in this image (--in-image)


def project_tree(cwd: Path, code_dir: Path | None = None) -> Path:
    """The project tree: the git work tree around ``cwd``, else the code directory."""
    root = repo_root(cwd) if code_dir is None else None
    return (root or code_dir or cwd).resolve()


def outside_tree(plan: Plan) -> tuple[str, ...]:
    """Declared inputs and outputs outside the project tree (symlinks resolved, so a link
    cannot lead out of it); InputError unless ``plan.allow_outside_tree``."""
    tree = project_tree(plan.cwd, plan.code_dir)
    found = []
    for flag, items in (("--input", plan.inputs), ("--output", plan.outputs)):
        for item in items:
            path = (item if item.is_absolute() else plan.cwd / item).resolve()
            if path.is_relative_to(tree):
                continue
            if not plan.allow_outside_tree:
                raise InputError(
                    f"{flag} {item}: {path} is outside the project tree {tree}",
                    hint="pass --allow-outside-tree to record it anyway (the record says so)",
                )
            found.append(f"{flag} {path}")
    return tuple(found)


def begin(store: RunStore, plan: Plan, store_dir: Path) -> RunRecord:
    """Capture the pre-training state and store the run as ``running``."""
    return begin_capture(store, plan, store_dir)[0]


def begin_capture(
    store: RunStore, plan: Plan, store_dir: Path, *, run_id: str | None = None
) -> tuple[RunRecord, git_capture.CodeCapture]:
    """``begin``, also returning the code capture (``wrap`` drops, after the run, the
    untracked files the run changed: see ``git.without_changed``). ``run_id``: the id
    chosen before (``wrap`` names it in its lease first), else a new one."""
    artifacts: list[ArtifactRef] = []
    not_captured: dict[str, str] = {}
    root = repo_root(plan.cwd)
    outside = outside_tree(plan)
    cap = _code(root, plan, store, store_dir, not_captured)
    code, code_artifacts = cap.code, cap.artifacts
    artifacts += code_artifacts
    inputs = _inputs(plan.inputs, root or plan.cwd, plan.cwd)
    inputs += _untracked_data(cap, plan.inputs, plan.cwd)
    if plan.image is not None:
        not_captured["recorded_in"] = plan.image.note()
    python, py_artifacts = _python(plan, store, _lock_dirs(plan.cwd, root), not_captured)
    artifacts += py_artifacts
    environment = Environment(
        python=python,
        system=_system(not_captured),
        accelerators=_accelerators(not_captured),
        container_image=plan.image.image_id if plan.image else redacted_env_value(
            "AUDITOR_CONTAINER_IMAGE", plan.env.get("AUDITOR_CONTAINER_IMAGE")
        ),
        env_vars=redact_env(_without_own(plan.env), plan.env_allow),
    )
    run_id = run_id or new_run_id()
    rel_cwd = _relpath(plan.cwd, Path(code.root)) if code else "."
    record = RunRecord(
        identity=Identity(
            id=run_id,
            name=plan.name or _default_name(plan.argv),
            user=_user(),
            host=socket.gethostname(),
            started_at=datetime.now(UTC),
            tags=tuple(plan.tags),
            reproduces=plan.reproduces,
        ),
        command=Command(
            argv=tuple(redact_argv(plan.argv)),
            cwd=rel_cwd,
            entry_point=_entry_point(plan.argv),
            mode=plan.mode,
            metrics_regex=plan.metrics_regex,
            outside_tree=outside,
        ),
        code=code,
        params=dict(plan.params),
        data=inputs,
        seeds=Seeds(
            pythonhashseed=redacted_env_value("PYTHONHASHSEED", plan.env.get("PYTHONHASHSEED"))
        ),
        environment=environment,
        artifacts=tuple(artifacts),
        not_captured=not_captured,
    )
    record = scrubbed(record)
    store.put_record(record, pid=os.getpid())
    return record, cap


def scrubbed(record: RunRecord) -> RunRecord:
    """The record with every string field scanned like a log (``redact_text``): fields
    copied from the environment, the child's observations and any message quoting them
    carry no secret shape and no known secret into the store."""
    dumped = record.model_dump()
    clean = scrub_strings(dumped)
    return record if clean == dumped else RunRecord.model_validate(clean)


def _without_own(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus auditor's own settings (store, build inputs): not the run's."""
    return {k: v for k, v in env.items() if not k.startswith("AUDITOR_")}


def _code(
    root: Path | None, plan: Plan, store: RunStore, store_dir: Path, notes: dict[str, str]
) -> git_capture.CodeCapture:
    if root is not None and plan.code_dir is None:
        cap = git_capture.capture_git(root, store.blobs, store_dir, plan.own_logs)
    else:
        folder = (plan.code_dir or plan.cwd).resolve()
        if not folder.is_dir():
            raise InputError(f"code directory {folder} does not exist")
        cap = git_capture.capture_snapshot(folder, store.blobs, store_dir, plan.own_logs)
        notes.setdefault(
            "code.git",
            "not a git repository: the code directory was "
            "snapshotted instead (commit it to git for a cheaper record)",
        )
    notes.update(cap.notes)
    return cap


def _untracked_data(
    cap: git_capture.CodeCapture, declared: Sequence[Path], cwd: Path
) -> tuple[DataInput, ...]:
    """Large binary untracked files, unless a declared input already covers them."""
    root = Path(cap.code.root).resolve()
    covered = [(p if p.is_absolute() else cwd / p).resolve() for p in declared]
    return tuple(
        d for d in cap.data
        if not any((root / d.path).resolve().is_relative_to(c) for c in covered)
    )


def _inputs(paths: Sequence[Path], root: Path, cwd: Path) -> tuple[DataInput, ...]:
    """Declared inputs, named relative to the tree root when inside it (as reruns use them)."""
    found = []
    for path in paths:
        full = path if path.is_absolute() else cwd / path
        display = _relpath(full, root)
        found.append(data_capture.fingerprint(full, display=display))
    return tuple(found)


def _lock_dirs(cwd: Path, root: Path | None) -> list[Path]:
    """Where a project lockfile is looked for: cwd, then each parent up to the repo root."""
    here = cwd.resolve()
    dirs = [here]
    if root is not None:
        dirs += [p for p in here.parents if p.is_relative_to(root.resolve())]
    return dirs


def _python(
    plan: Plan, store: RunStore, lock_dirs: list[Path], notes: dict[str, str]
) -> tuple[PythonEnv | None, list[ArtifactRef]]:
    """The training interpreter, with its lockfile (project or derived) attached; with
    ``plan.image``, the image's interpreter, examined inside the image."""
    interpreter, note = plan.python, None
    if plan.image is not None:
        interpreter, note = python_env.image_interpreter(plan.argv)
    elif interpreter is None:
        interpreter, note = python_env.training_interpreter(plan.argv, plan.env.get("PATH"))
    if note:
        notes["environment.python.interpreter"] = note
    if plan.image is not None:
        py, artifacts, reason = python_env.capture_python(
            interpreter, store.blobs.put_bytes, inside=container.probe_prefix(plan.image),
            inside_env=container.cli_env(plan.env), executable=plan.image.executable)
    else:
        py, artifacts, reason = python_env.capture_python(interpreter, store.blobs.put_bytes)
    if py is None:
        notes["environment.python"] = reason or "unknown"
        return None, artifacts
    lock, lock_artifacts = _lockfile(py, store, lock_dirs, notes)
    return py.model_copy(update={"lock": lock}), artifacts + lock_artifacts


def _lockfile(
    py: PythonEnv, store: RunStore, lock_dirs: list[Path], notes: dict[str, str]
) -> tuple[LockRef | None, list[ArtifactRef]]:
    from auditor.core import lockfile as lockmod
    from auditor.record.capture.secrets import redact_text

    path = next((p for d in lock_dirs if (p := lockmod.find_project_lockfile(d))), None)
    drift: tuple[str, ...]
    if path is None:
        text, origin, name, drift = (
            python_env.pinned_requirements(py.packages, py.local),
            "derived",
            "env/lock/requirements.derived.txt",
            (),
        )
        kind = "pip"
        if py.local:
            notes["environment.python.lock"] = (
                "derived lock leaves out packages installed from a local path or editable "
                f"({', '.join(py.local)}): a rebuild cannot install them from an index"
            )
    else:
        text = redact_text(path.read_text(encoding="utf-8", errors="replace"))
        origin, name = "project", f"env/lock/{path.name}"
        try:
            parsed = (
                lockmod.parse_conda_lock(path)
                if path.name.endswith((".yml", ".yaml"))
                else lockmod.parse_requirements_lock(text, name=path.name, allow_unhashed=True)
            )
            drift, kind = tuple(lockmod.drift(parsed, py.packages)), parsed.kind
        except InputError as exc:
            notes["environment.python.lock"] = (
                f"project lockfile {path.name} is not a valid lock ({exc}): a rebuild "
                "cannot use it; fix it or regenerate it with `audit lock`"
            )
            drift, kind = (), "pip"
    sha, size = store.blobs.put_bytes(text.encode("utf-8"))
    ref = ArtifactRef(name=name, sha256=sha, size=size, kind="lock")
    return LockRef(artifact=name, sha256=sha, origin=origin, kind=kind, drift=drift), [ref]  # type: ignore[arg-type]


def _system(notes: dict[str, str]) -> System:
    raw = capture_system()
    for key, why in (raw.get("not_captured") or {}).items():
        notes[f"environment.system.{key}"] = why
    fields = {k: v for k, v in raw.items() if k in System.model_fields and v is not None}
    if "cpu_flags" in fields:
        fields["cpu_flags"] = tuple(fields["cpu_flags"])
    return System(**fields)


def _accelerators(notes: dict[str, str]) -> Accelerators:
    raw = capture_gpus()
    if not raw.get("captured"):
        notes["environment.accelerators.gpus"] = str(raw.get("reason"))
    gpus = tuple(
        Gpu(
            **{
                "name": "unknown GPU",
                "index": i,
                **{k: g.get(k) for k in Gpu.model_fields if g.get(k) is not None},
            }
        )
        for i, g in enumerate(raw.get("gpus", []))
    )
    return Accelerators(
        driver_version=raw.get("driver_version"),
        cuda_driver_version=raw.get("cuda_version"),
        gpus=gpus,
    )


def with_cuda_stack(
    acc: Accelerators | None, obs: Mapping[str, object] | None
) -> Accelerators | None:
    """Add the CUDA/cuDNN/NCCL versions the training process saw (from the probe)."""
    if acc is None or not obs or not obs.get("torch_imported"):
        return acc

    def text(key: str) -> str | None:
        value = obs.get(key)
        return None if value is None else str(value)

    return acc.model_copy(
        update={
            "torch_cuda": text("torch_cuda"),
            "cudnn": text("cudnn"),
            "nccl": text("nccl"),
            "cuda_available": obs.get("cuda_available"),
        }
    )


def _relpath(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
    return rel or "."


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _entry_point(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-m" and i + 1 < len(argv):
            return f"-m {argv[i + 1]}"
        if arg.endswith(".py"):
            return arg
    return argv[0] if argv else None


def _default_name(argv: Sequence[str]) -> str:
    entry = _entry_point(argv)
    return Path(entry.split()[-1]).stem if entry else "run"


def finish(
    store: RunStore,
    record: RunRecord,
    *,
    status: str,
    exit_code: int | None,
    updates: Mapping[str, object],
) -> RunRecord:
    """Store the final record (status, timing and whatever ``updates`` add)."""
    ended = datetime.now(UTC)
    ident = record.identity.model_copy(
        update={
            "status": status,
            "exit_code": exit_code,
            "ended_at": ended,
            "duration_s": (ended - record.identity.started_at).total_seconds(),
        }
    )
    final = record.model_copy(update={"identity": ident, **updates})
    final = scrubbed(RunRecord.model_validate(final.model_dump()))  # re-validate merged parts
    if final.metrics.points:  # the series' digest, which the record's digest then covers
        series = series_digest(store.iter_metrics(final.identity.id))
        final = final.model_copy(update={
            "metrics": final.metrics.model_copy(update={"series_sha256": series})})
    store.put_record(final)
    return final
