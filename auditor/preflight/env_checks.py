"""The checks of the environment: the project's lockfile against the training
interpreter's installed packages (the drift ``audit record`` would store), and a docker
engine with the base image a rebuild starts from.

The only thing of the user's that runs is the training interpreter, asked for its version
and packages (``pip inspect``, as ``audit record`` asks it; bounded by its 120 s timeout).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from auditor.core import lockfile as lockmod
from auditor.core.errors import EngineUnavailable, InputError
from auditor.preflight.model import Finding, Project
from auditor.record.capture import python_env

MAX_DETAILS = 20
LOCK_FIX = "`audit lock` (pip-compile of requirements.in or pyproject.toml, hashed)"


def _discard(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def interpreter(p: Project) -> tuple[str, str | None]:
    """The training interpreter: the command's, else ``python`` on PATH (with a note)."""
    if p.argv:
        return python_env.training_interpreter(list(p.argv), p.env.get("PATH"))
    found = shutil.which("python", path=p.env.get("PATH")) or shutil.which(
        "python3", path=p.env.get("PATH"))
    return (found, f"no command: checked {found}, the python on PATH") if found else (
        sys.executable, "no command and no python on PATH: checked auditor's own")


def _lock_dirs(p: Project) -> list[Path]:
    """Where ``audit record`` looks for the project lockfile: the working folder, then each
    parent up to the repository root."""
    here = p.cwd.resolve()
    if p.root is None:
        return [here]
    return [here, *(d for d in here.parents if d.is_relative_to(p.root))]


def lockfile(p: Project) -> list[Finding]:
    """A hashed lockfile the rebuild can install, matching what the run will use."""
    python, note = interpreter(p)
    if note:
        p.notes.append(note)
    py, _artifacts, reason = python_env.capture_python(python, _discard)
    if py is None:  # the command itself would fail the same way
        return [Finding(check="lockfile", problem=reason or f"{python} did not answer",
                        fix="run the command with an interpreter that exists here (or "
                        "activate its environment)")]
    p.python_version = py.version
    path = next((f for d in _lock_dirs(p) if (f := lockmod.find_project_lockfile(d))), None)
    if path is None:
        return [Finding(check="lockfile", problem="no lockfile: a rebuild would install an "
                        "unhashed lock derived from whatever is installed when you record",
                        fix=LOCK_FIX)]
    shown = p.label(path)
    try:
        lock = (lockmod.parse_conda_lock(path) if path.suffix in (".yml", ".yaml") else
                lockmod.parse_requirements_lock(lockmod.read_lockfile_text(path),
                                                name=path.name, allow_unhashed=True))
        if lock.kind == "pip":
            lockmod.check_python_compat(lock, py.version)
    except InputError as exc:
        return [Finding(check="lockfile", where=shown, problem=f"{shown}: {exc}",
                        fix=LOCK_FIX)]
    out: list[Finding] = []
    if not lock.hashed:
        out.append(Finding(check="lockfile", where=shown, problem=f"{shown} is not hashed: "
                           "the rebuild refuses it (unless --allow-unhashed)", fix=LOCK_FIX))
    installed = {n: v for n, v in py.packages.items() if n not in py.local}
    if py.local:
        p.notes.append(f"installed from a local path, not compared with the lock: "
                       f"{', '.join(py.local)}")
    lines = lockmod.drift(lock, installed)
    if lines:
        more = f" (first {MAX_DETAILS})" if len(lines) > MAX_DETAILS else ""
        out.append(Finding(check="lockfile", where=shown, details=tuple(lines[:MAX_DETAILS]),
                           problem=f"{shown} drifts from {py.executable}'s packages: "
                           f"{len(lines)} difference(s){more}, first: {lines[0]}",
                           fix=f"install the lock (`pip-sync {shown}`) or re-lock what you "
                           "run (`audit lock`)"))
    return out


def engine(p: Project) -> list[Finding]:
    """A docker engine that answers, holding the base image the rebuild starts from."""
    from auditor.env.build import default_base_image
    from auditor.env.engine import docker_client

    try:
        client = docker_client()
    except EngineUnavailable as exc:
        return [Finding(check="engine", problem=f"{exc}: nothing to rebuild the run in",
                        fix="start dockerd (or point DOCKER_HOST at one); without an engine "
                        "verify falls back to a venv, whose certificate the default gate "
                        "refuses")]
    base = p.base_image or default_base_image(p.python_version or
                                              ".".join(map(str, sys.version_info[:2])),
                                              None, None)
    try:
        missing = _missing_image(client, base)
    finally:
        client.close()
    if missing is None:
        return []
    return [Finding(check="engine", problem=f"base image {base} {missing}",
                    fix=f"`docker pull {base}`, or `audit base-image build` and pass "
                    "--base-image auditor-base:bookworm (AUDITOR_BASE_IMAGE)")]


def _missing_image(client: object, ref: str) -> str | None:
    """None when the engine holds ``ref``; else why not, in words."""
    import docker.errors

    try:
        client.images.get(ref)  # type: ignore[attr-defined]
    except docker.errors.ImageNotFound:
        return "is not on this engine"
    except docker.errors.DockerException as exc:
        return f"cannot be looked up: {' '.join(str(exc).split())[:200]}"
    return None
