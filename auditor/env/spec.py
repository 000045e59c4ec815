"""What a build takes and gives, whichever backend builds: ``BuildInputs`` (equal inputs
give the same image or venv), ``BuildResult`` (what was built and how it differs from the
record), the probe run inside the built environment, and the one-line error for a failed
install log (``ImageBuildFailed``, exit 3, with the full log). Shared by the docker build
(``auditor.env.build``) and the venv build (``auditor.env.venv``), which do not import
each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict

from auditor.core.errors import BuildFailed
from auditor.core.lockfile import INSTALLER_TOOLS, Lock, drift
from auditor.env import baseimage

ERROR_LINE_CHARS = 200
PROBE = """\
import json, platform, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "inspect", "--local"],
                     capture_output=True, text=True, check=True).stdout
packages = {d["metadata"]["name"]: d["metadata"]["version"] for d in json.loads(out)["installed"]}
build = " ".join(platform.python_build()) + " " + platform.python_compiler()
print(json.dumps({"python": platform.python_version(), "packages": packages, "build": build},
                 sort_keys=True))
"""
_HASH_MISMATCH = re.compile(r"^\s+([A-Za-z0-9_.\-]+==\S+) from ", re.MULTILINE)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")

Progress = Callable[[str], None]


class BuildInputs(BaseModel):
    """Everything a build depends on; equal inputs give the same Dockerfile and tag."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str
    lock: Lock
    python_version: str
    base_image: str
    base_image_id: str | None = None
    wheelhouse: Path | None = None
    ca_bundle: Path | None = None
    wheel_cache: Path | None = None  # None: auditor.env.wheelcache.default_root()
    cuda: str | None = None
    cudnn: str | None = None
    auditor_version: str
    strict: bool = False


class BuildResult(BaseModel):
    """What a build produced, and how it differs from the recorded environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    backend: Literal["docker", "venv"]
    tag: str
    image_id: str
    cached: bool
    log: str
    python_version: str
    python_build: str = ""  # as record/capture/python_env.py spells it, from the probe
    packages: dict[str, str]
    differences: list[str]
    isolation_note: str | None = None
    inputs_digest: str
    seconds: float


class ImageBuildFailed(BuildFailed):
    """A failed build; ``log`` holds the full build log for storage."""

    def __init__(self, message: str, *, log_text: str, hint: str | None = None) -> None:
        self.log = log_text
        super().__init__(message, hint=hint)


def differences(inputs: BuildInputs, python_version: str, packages: dict[str, str]
                ) -> list[str]:
    """Known differences between the record and what was built."""
    out: list[str] = []
    if python_version != inputs.python_version:
        out.append(f"python {inputs.python_version} recorded, {python_version} in image")
    if not baseimage.is_pinned(inputs.base_image, inputs.base_image_id):
        out.append(f"base image {inputs.base_image} is not pinned by digest")
    out.extend(drift(inputs.lock, without_tooling(inputs.lock, packages)))
    return out


def without_tooling(lock: Lock, packages: dict[str, str]) -> dict[str, str]:
    """pip/setuptools/wheel come with every venv: compare them only when locked."""
    locked = lock.versions()
    return {n: v for n, v in packages.items()
            if canonicalize_name(n) not in INSTALLER_TOOLS or canonicalize_name(n) in locked}


def result_of(inputs: BuildInputs, digest: str, probe: dict[str, Any], **fields: Any
            ) -> BuildResult:
    """A ``BuildResult`` from the probe's output inside what was built."""
    packages = {str(canonicalize_name(n)): str(v) for n, v in sorted(probe["packages"].items())}
    return BuildResult(inputs_digest=digest, python_version=probe["python"], packages=packages,
                       python_build=str(probe.get("build", "")),
                       differences=differences(inputs, probe["python"], probe["packages"]),
                       **fields)


def install_failure(lines: list[str], what: str) -> ImageBuildFailed:
    """The most specific one-line error for a failed install log (the whole log travels
    in ``log``; ``auditor.env.inputs`` keeps it in a file the message names)."""
    text = "\n".join(lines)
    if "DO NOT MATCH THE HASHES" in text:
        match = _HASH_MISMATCH.search(text.split("DO NOT MATCH THE HASHES", 1)[1])
        package = match.group(1) if match else "a package"
        return ImageBuildFailed(
            f"{what} failed: hash mismatch for {package}: the downloaded file does not match "
            "the lock's --hash", log_text=text,
            hint="re-lock with `audit lock` if the lock is wrong")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ImageBuildFailed(
            f"{what} failed: the package index's TLS certificate is not trusted",
            log_text=text, hint="pass --ca-bundle FILE (e.g. $PIP_CERT) for a proxied index")
    if "No space left on device" in text:
        return ImageBuildFailed(f"{what} failed: no space left on device", log_text=text,
                                hint="free space for docker (or the wheel cache)")
    missing = _NO_MATCH.search(text)
    if missing:
        return ImageBuildFailed(
            f"{what} failed: no wheel for {missing.group(1)} in the index or the wheelhouse",
            log_text=text, hint="put the wheel in a folder and pass --wheelhouse DIR")
    return ImageBuildFailed(f"{what} failed: {last_error(lines)}", log_text=text)


def last_error(lines: list[str]) -> str:
    """The log's last line that reads like an error (else its last line), shortened."""
    useful = [line.strip() for line in lines if line.strip()]
    errors = [line for line in useful if re.search(r"error|fail|denied|not found", line, re.I)]
    line = (errors or useful or ["no output"])[-1]
    return line if len(line) <= ERROR_LINE_CHARS else line[:ERROR_LINE_CHARS] + "…"
