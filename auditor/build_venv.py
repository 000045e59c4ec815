"""The venv backend: a virtualenv rebuilt from the same lockfile, when no engine answers.

``build_venv`` creates ``<venv_root>/<digest[:16]>`` with the host's Python of the recorded
major.minor, installs the lock with the same pip flags as the image (``--require-hashes
--no-deps --only-binary :all:``, find-links and CA bundle passed explicitly, the host's own
pip settings ignored), and writes its marker file last, so a folder without a marker is
half-built and rebuilt. The result says, in ``isolation_note``, that isolation is weaker:
same OS, libraries and files as this host. Split from ``build.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from auditor.build import (
    BUILD_TIMEOUT_S,
    ISOLATION_VENV,
    MARKER,
    PROBE,
    BuildInputs,
    BuildResult,
    Progress,
    _failure,
    _result,
)
from auditor.errors import BuildFailed
from auditor.lock import check_python_compat


def build_venv(inputs: BuildInputs, digest: str, venv_root: Path, no_cache: bool,
                say: Progress, started: float) -> BuildResult:
    if inputs.lock.kind != "pip":
        raise BuildFailed("the venv backend cannot install a conda lock",
                          hint="start a docker engine and use --backend docker")
    env = venv_root / digest[:16]
    marker = env / MARKER
    cached = not no_cache and _marker_digest(marker) == digest
    lines: list[str] = []
    if cached:
        say(f"cache hit: {env}")
        probe = json.loads(marker.read_text())["probe"]
    else:
        probe, lines = _create_venv(inputs, env, say)
        marker.write_text(json.dumps({"inputs_digest": digest, "probe": probe}, indent=2))
    return _result(inputs, digest, probe, backend="venv", tag=str(env),
                   image_id=f"venv:{digest[:16]}", cached=cached, log="\n".join(lines),
                   isolation_note=ISOLATION_VENV, seconds=time.monotonic() - started)


def _marker_digest(marker: Path) -> str | None:
    try:
        return str(json.loads(marker.read_text())["inputs_digest"])
    except (OSError, ValueError, KeyError):
        return None


def _create_venv(inputs: BuildInputs, env: Path, say: Progress
                 ) -> tuple[dict[str, Any], list[str]]:
    python = _host_python(inputs)
    shutil.rmtree(env, ignore_errors=True)  # a folder without a marker is half-built
    lines: list[str] = []
    try:
        _run([python, "-m", "venv", str(env)], lines, say, "virtualenv creation")
        lockfile = env / "requirements.lock"
        lockfile.write_text(inputs.lock.text)
        _run(_pip_install(env, inputs, lockfile), lines, say, "venv install")
        probe = json.loads(_run([str(env / "bin" / "python"), "-c", PROBE], [], None, "probe"))
        check_python_compat(inputs.lock, probe["python"])
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    return probe, lines


def _host_python(inputs: BuildInputs) -> str:
    wanted = inputs.lock.python or ".".join(inputs.python_version.split(".")[:2])
    return shutil.which(f"python{wanted}") or sys.executable


def _pip_install(env: Path, inputs: BuildInputs, lockfile: Path) -> list[str]:
    argv = [str(env / "bin" / "python"), "-m", "pip", "install", "--no-deps",
            "--only-binary", ":all:", "--no-input", "--disable-pip-version-check"]
    argv += ["--require-hashes"] if inputs.lock.hashed else []
    argv += ["--find-links", str(inputs.wheelhouse)] if inputs.wheelhouse else []
    argv += ["--cert", str(inputs.ca_bundle)] if inputs.ca_bundle else []
    return [*argv, "--requirement", str(lockfile)]


def _isolated_env() -> dict[str, str]:
    """No host pip configuration: the wheelhouse and CA bundle are explicit inputs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def _run(argv: list[str], lines: list[str], say: Progress | None, what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=BUILD_TIMEOUT_S, env=_isolated_env())
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    lines.extend(output)
    for line in output if say else ():
        say(line)  # type: ignore[misc]
    if done.returncode != 0:
        raise _failure(lines, what)
    return done.stdout
