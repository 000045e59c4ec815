"""The venv backend: a virtualenv rebuilt from the same lockfile, when no engine answers.

``build_venv`` creates ``<venv_root>/<digest[:16]>`` with the host's Python of the recorded
major.minor, installs the lock with the same pip flags as the image (``--require-hashes
--no-deps --only-binary :all:``, find-links and CA bundle passed explicitly, the host's own
pip settings ignored), and writes its marker file last, so a folder without a marker is
half-built and rebuilt. The result says, in ``isolation_note``, that isolation is weaker:
same OS, libraries and files as this host. Shares ``auditor.env.spec`` with the docker
build (``auditor.env.build``), which does not import it.

Where venvs live (``venv_root_for``): a venv rerun as root runs as uid 1000, which must be
able to read the venv but not the store (private, 0700), so root builds into a root-owned
0755 cache outside any checkout (``/var/cache/auditor/envs``, content-addressed by the
build digest, one builder at a time per digest); other users build into the store's
``envs/`` (their rerun runs as themselves). ``AUDITOR_VENV_ROOT`` overrides both. Builds
run with umask 022 so the venv is readable by the rerun user whatever the caller's umask.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from auditor.core.errors import BuildFailed
from auditor.core.lockfile import check_python_compat
from auditor.env.access import blocked_for
from auditor.env.build import build_inputs_digest  # a venv is named by the image's digest
from auditor.env.engine import BUILD_TIMEOUT_S
from auditor.env.spec import (
    PROBE,
    BuildInputs,
    BuildResult,
    Progress,
    install_failure,
    result_of,
)

SHARED_VENV_ROOT = Path("/var/cache/auditor/envs")
MARKER = "auditor-env.json"
ISOLATION_VENV = ("venv backend: the rerun shares this host's OS, libraries, network and "
                  "files; only the Python packages are rebuilt from the lock")


def venv_root_for(store_dir: Path) -> Path:
    """Where the venvs of a store's runs are built (see the module's docstring)."""
    configured = os.environ.get("AUDITOR_VENV_ROOT")
    if configured:
        return Path(configured)
    return SHARED_VENV_ROOT if os.geteuid() == 0 else store_dir / "envs"


def _open_root(venv_root: Path) -> None:
    """Make the venv root (and missing parents) readable and traversable by everyone."""
    missing = [p for p in [venv_root, *venv_root.parents] if not p.exists()]
    venv_root.mkdir(parents=True, exist_ok=True)
    for path in missing:
        os.chmod(path, 0o755)


def build_venv(inputs: BuildInputs, *, venv_root: Path, no_cache: bool = False,
               progress: Progress | None = None) -> BuildResult:
    """Build (or reuse) ``<venv_root>/<digest[:16]>`` for ``inputs``."""
    started = time.monotonic()
    say = progress or (lambda line: None)
    digest = build_inputs_digest(inputs)
    _open_root(venv_root)
    with open(venv_root / f".{digest[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per digest; others then hit the cache
        return _build_venv(inputs, digest, venv_root, no_cache, say, started)


def _build_venv(inputs: BuildInputs, digest: str, venv_root: Path, no_cache: bool,
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
    return result_of(inputs, digest, probe, backend="venv", tag=str(env),
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
    return host_python(inputs.lock.python or ".".join(inputs.python_version.split(".")[:2]))


def host_python(wanted: str) -> str:
    """The host's Python ``wanted`` (major.minor). As root, the first one uid 1000 can run
    (a pyenv Python under /root cannot be, and a venv rerun drops to uid 1000)."""
    folders = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", "/usr/bin"]
    found = [shutil.which(f"python{wanted}", path=folder) for folder in folders]
    candidates = [c for c in found if c] + [sys.executable]
    if os.geteuid() == 0:
        for candidate in candidates:
            if blocked_for(Path(candidate)) is None:
                return candidate
    return candidates[0]


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
                          timeout=BUILD_TIMEOUT_S, env=_isolated_env(), umask=0o022)
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    lines.extend(output)
    for line in output if say else ():
        say(line)  # type: ignore[misc]
    if done.returncode != 0:
        raise install_failure(lines, what)
    return done.stdout
