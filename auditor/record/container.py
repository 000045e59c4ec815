"""``audit record --in-image REF``: the recorded command runs in a container of a docker
image (the pinned one ``audit build`` made, or any local image) instead of on this host.

Everything else is a normal ``audit record``: the project tree is bind-mounted at the same
absolute path and the command runs in the same working directory, so inputs, outputs, the
git capture and the output snapshot see the same paths; the probe and the stdlib-only
attached API are mounted read-only and put on ``PYTHONPATH``; the probe folder is mounted
read-write at its own path. The command runs as the caller's uid:gid, with no network
unless asked, under ``docker-init`` (so signals reach it and zombies are reaped).

The child's environment is passed to ``docker run`` by name (``-e NAME``, the value taken
from the docker CLI's own environment), so no value, secret or not, is ever on a command
line; host-specific variables (``HOST_SPECIFIC``: PATH, HOME, ...) are not passed.

The launch goes through the docker CLI (``docker run --rm --init --sig-proxy=true``), not
the SDK: through the recorder's ordinary ``Popen`` path stdout and stderr stream live and
split, the exit code is the container's, and SIGINT/SIGTERM sent to the CLI are proxied
into the container (the SDK would need a log follower per stream and a separate kill
path). Each container carries a label unique to the attempt and is removed by it (``docker
rm -f``) however the recording ends.

The training interpreter is examined inside the image too (``docker run`` of the image's
``python``, no network), so the record's Python version, build and packages are the
image's, and its executable says ``python in docker <image id>``: the rerun's rebuilt
image is compared with like.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from auditor.core.errors import EngineUnavailable, InputError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the auditor package
PROBE_PATH = Path(__file__).parent / "probe"  # the in-process probe (sitecustomize)
PROBE_LIB = "/opt/auditor-probe"  # where the probe is mounted in a container
API_LIB = "/opt/auditor-lib"  # where the stdlib-only attached API is mounted
INIT_PARENT_PID = 1  # the command's parent in the container: docker-init
# variables that describe this host, not the run: never replayed, never passed in
HOST_SPECIFIC = frozenset(
    {
        "PATH",
        "HOME",
        "PWD",
        "OLDPWD",
        "HOSTNAME",
        "SHLVL",
        "_",
        "TERM",
        "USER",
        "LOGNAME",
        "SHELL",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "TMPDIR",
        "DISPLAY",
        "SSH_AUTH_SOCK",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
    }
)
# what the docker CLI itself needs from the caller's environment (never passed in)
_CLI_ENV = re.compile(r"^(?:PATH|HOME|DOCKER_[A-Z_]+|XDG_RUNTIME_DIR|SSL_CERT_FILE|SSL_CERT_DIR)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TIMEOUT_S = 60


@dataclass(frozen=True)
class Image:
    """The image a recording runs in: what the user named and the immutable id it is."""

    ref: str
    image_id: str
    docker: str  # the docker CLI
    network: str = "none"
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def executable(self) -> str:
        """The recorded interpreter, spelled as the rerun's record spells its own."""
        return f"python in docker {self.image_id[:19]}"

    def note(self) -> str:
        """What the record says about where it ran."""
        named = "" if self.ref == self.image_id else f" ({self.ref})"
        return (f"recorded in docker image {self.image_id}{named}: network {self.network}, "
                f"uid {os.getuid()}:{os.getgid()}, the project tree mounted at its own path; "
                "GPUs are not passed in")


def resolve(ref: str, env: Mapping[str, str], network: str = "none") -> Image:
    """The local image ``ref`` (tag, id or digest) as an immutable id. No pull: an image
    that is not here is bad input (exit 2); no docker CLI, or no engine, exit 3."""
    docker = shutil.which("docker", path=env.get("PATH"))
    if docker is None:
        raise EngineUnavailable(
            "--in-image needs the docker command line client, and `docker` is not on PATH",
            hint="install the docker CLI, or record without --in-image")
    if not ref or ref.startswith("-"):
        raise InputError(f"--in-image {ref!r} is not an image reference")
    try:
        done = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Id}}", "--", ref],
            capture_output=True, text=True, timeout=_TIMEOUT_S, env=cli_env(env), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"docker image inspect {ref} did not answer: {exc}") from None
    if done.returncode == 0 and done.stdout.strip().startswith("sha256:"):
        return Image(ref=ref, image_id=done.stdout.strip(), docker=docker, network=network)
    why = _last_line(done.stderr)
    if "no such image" in why.lower() or "no such object" in why.lower():
        raise InputError(
            f"--in-image {ref}: no such image on this docker engine",
            hint="build the run's pinned image with `audit build RUN`, or docker pull it")
    raise EngineUnavailable(
        f"--in-image {ref}: the docker engine did not answer ({why or 'no message'})",
        hint="start it (dockerd) or record without --in-image")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cli_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the docker CLI needs for itself (its PATH, HOME, DOCKER_HOST, ...)."""
    return {k: v for k, v in env.items() if _CLI_ENV.match(k)}


def passed_names(child: Mapping[str, str]) -> list[str]:
    """The child's variables that go into the container (by name)."""
    return sorted(k for k in child if k not in HOST_SPECIFIC and _NAME.match(k))


def container_env(child: Mapping[str, str]) -> dict[str, str]:
    """The child's environment as the container sees it: without host-specific variables,
    with the probe and the attached API on PYTHONPATH (mounted there)."""
    env = {k: child[k] for k in passed_names(child)}
    env["PYTHONPATH"] = f"{PROBE_LIB}:{API_LIB}"
    return env


def _mount(source: Path, target: str, *, read_only: bool) -> list[str]:
    """One ``--mount`` argument, CSV-quoted as docker parses it (paths with commas)."""
    fields = ["type=bind", f"source={source}", f"target={target}"]
    if read_only:
        fields.append("readonly")
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return ["--mount", line.getvalue()]


def _base(image: Image, labels: Mapping[str, str], network: str) -> list[str]:
    argv = [image.docker, "run", "--rm", "--pull", "never", "--network", network,
            "--user", f"{os.getuid()}:{os.getgid()}"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    return argv


def probe_prefix(image: Image) -> list[str]:
    """``docker run`` of a one-off command in the image (the interpreter's examination):
    no network, no mounts, no variables, the image's entrypoint cleared."""
    return [*_base(image, {"auditor.attempt": image.attempt}, "none"),
            "--entrypoint", "", image.image_id]


def run_argv(
    image: Image,
    argv: list[str],
    *,
    cwd: Path,
    tree: Path,
    probe: Path,
    names: Iterable[str],
    run_id: str,
    read_only: Iterable[Path] = (),
    writable: Iterable[Path] = (),
) -> list[str]:
    """``docker run`` of the recorded command: the tree (and cwd when outside it) at their
    own paths, ``read_only``/``writable`` extra paths (declared inputs/outputs outside the
    tree), the probe folder, the probe and API libraries; variables by name only."""
    out = [*_base(image, {"auditor.record": run_id, "auditor.attempt": image.attempt},
                  image.network),
           "--init", "--sig-proxy=true", "--workdir", str(cwd)]
    mounted: list[Path] = []

    def mount(path: Path, *, ro: bool) -> None:
        path = path.resolve()
        if not path.exists() or any(path == m or path.is_relative_to(m) for m in mounted):
            return
        mounted.append(path)
        out.extend(_mount(path, str(path), read_only=ro))

    mount(tree, ro=False)
    if not cwd.resolve().is_relative_to(tree.resolve()):
        mount(cwd, ro=False)
    for path in writable:
        mount(path, ro=False)
    for path in read_only:
        mount(path, ro=True)
    out += _mount(probe.resolve(), str(probe.resolve()), read_only=False)
    out += _mount(PROBE_PATH, PROBE_LIB, read_only=True)
    out += _mount(PACKAGE_DIR, f"{API_LIB}/auditor", read_only=True)
    for name in names:
        out += ["--env", name]  # by name: the value comes from the CLI's environment
    return [*out, image.image_id, *argv]


def remove_left(image: Image, env: Mapping[str, str]) -> None:
    """Remove any container of this attempt still there (the CLI was killed, or stopped
    before the engine's own ``--rm``)."""
    label = f"label=auditor.attempt={image.attempt}"
    try:
        found = subprocess.run(
            [image.docker, "ps", "-aq", "--filter", label], capture_output=True, text=True,
            timeout=_TIMEOUT_S, env=cli_env(env), check=False).stdout.split()
        if found:
            subprocess.run([image.docker, "rm", "-f", *found], capture_output=True,
                           timeout=_TIMEOUT_S, env=cli_env(env), check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass  # best effort: the engine went away with its containers
