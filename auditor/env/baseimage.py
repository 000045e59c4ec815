"""Base images: the pinned defaults builds start from, and a local debootstrap builder.

Contract (defaults):

- ``default_base_image(python_version, cuda, cudnn)``: a CPU run gets the official
  ``python:<version>-slim-bookworm`` image pinned by digest (the exact patch version when
  the table knows it, else the newest known patch of the same minor; the build then
  reports the patch difference); a GPU run gets ``nvidia/cuda:<ver>-cudnn<N>-runtime-
  ubuntu22.04`` pinned by digest where known. Anything the tables do not know falls back
  to an unpinned tag, which builds warn about and ``--strict`` refuses (T21a).
- ``system_python(base, python_version)``: how to get a Python in that base: CUDA runtime
  images have none, so it is installed from the OS (``python3.X`` and ``python3.X-venv``).

Contract (local builder):

- ``build_base_image(release, tag, force=False, progress=None) -> (tag, image_id)``
  creates a minimal Debian root filesystem (``debootstrap --variant=minbase``) with
  just enough to run ``python3 -m venv`` and pip inside it (``python3``, ``python3-venv``
  and ``passwd`` for ``useradd``), imports it with ``docker import`` semantics, tags it
  (default ``auditor-base:<release>``) and returns the tag and the image id. That id is
  the digest builds pin: ``audit build --base-image auditor-base:bookworm`` resolves the
  tag to it and records it.
- An existing image with the tag is reused (answered in well under a second) unless
  ``force`` is true.
- Faults: no engine -> ``EngineUnavailable``; debootstrap missing, not root, or failing
  -> ``BuildFailed`` with the tail of its log. Nothing is tagged unless the import
  succeeded.

The release is pinned by name (Debian ``bookworm`` ships Python 3.11.2); the mirror is
``http://deb.debian.org/debian`` unless ``AUDITOR_DEBIAN_MIRROR`` names another.
Run as a module: ``python -m auditor.env.baseimage [--release R] [--tag T] [--force]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from auditor.core.errors import AuditorError, BuildFailed, InputError

DEFAULT_RELEASE = "bookworm"
_RELEASE = re.compile(r"[a-z][a-z0-9-]{1,31}")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3-venv brings ensurepip's wheels, so `python3 -m venv` yields a venv with pip;
# passwd provides useradd for the non-root user of the final image.
PACKAGES = ("python3", "python3-venv", "passwd")
LOG_TAIL_LINES = 15

Progress = Callable[[str], None]

# Official python slim images pinned by digest. Source: nalabelle/build,
# images/digests.Dockerfile (a Renovate-maintained digest list) at commits
# 5fd581d256ce67bbab81b6ebe8ca0261f4bfed88 (3.11.6, 3.12.0) and
# 03299f1e1a7a96a34e2d8cc954532d742572ded4 (3.11.7, 3.12.1); 3.11.9, 3.11.10, 3.12.3 and
# 3.12.7 from other revisions of the same file (as stored by the public code index).
PYTHON_SLIM = {
    "3.11.6": "sha256:1bc6a3e9356d64ea632791653bc71a56340e8741dab66434ab2739ebf6aed29d",
    "3.11.7": "sha256:8f64a67710f3d981cf3008d6f9f1dbe61accd7927f165f4e37ea3f8b883ccc3f",
    "3.11.9": "sha256:dad770592ab3582ab2dabcf0e18a863df9d86bd9d23efcfa614110ce49ac20e4",
    "3.11.10": "sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16",
    "3.12.0": "sha256:32477c7ecb3b18a47cff8eb5b8149bc21c858998b0ae2bb36f4ddb43cc79d240",
    "3.12.1": "sha256:c805c5edcf6005fd72f933156f504525e1da263ffbc3fae6b4940e6c360c216f",
    "3.12.3": "sha256:541d45d3d675fb8197f534525a671e2f8d66c882b89491f9dda271f4f94dcd06",
    "3.12.7": "sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249",
}
# CUDA + cuDNN runtime images pinned by digest, keyed by (CUDA major.minor, cuDNN major).
# Sources: 12.2.2 from tiiuae/openpi scripts/docker/serve_policy.Dockerfile at commit
# 177e6635265cb448bf429219712928af6bff884a; 12.1.1 and 11.8.0 from public Dockerfiles and
# tests found by exact-string search of the public code index (which does not name them).
CUDA_RUNTIME = {
    ("12.1", "8"): "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04@sha256:"
                   "f4d8e1264366940438f0353da6f289c7bef069d993d111f8106086ccd18c4a30",
    ("12.2", "8"): "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04@sha256:"
                   "2d913b09e6be8387e1a10976933642c73c840c0b735f0bf3c28d97fc9bc422e0",
    ("11.8", "8"): "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04@sha256:"
                   "85fb7ac694079fff1061a0140fd5b5a641997880e12112d92589c3bbb1e8b7ca",
}
# conda locks install with micromamba; digest as pinned in several public Dockerfiles.
MICROMAMBA = ("mambaorg/micromamba:1.5.8@sha256:"
              "475730daef12ff9c0733e70092aeeefdf4c373a584c952dac3f7bdb739601990")


class SystemPython(BaseModel):
    """The interpreter a base image offers (or gets from the OS) for ``python -m venv``."""

    model_config = ConfigDict(frozen=True)
    executable: str
    apt_packages: tuple[str, ...] = ()


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _patch_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def default_base_image(python_version: str, cuda: str | None, cudnn: str | None) -> str:
    """The default base image reference for a run (pinned by digest where known)."""
    if cuda:
        return _cuda_base(cuda, cudnn)
    return _python_slim(python_version)


def _python_slim(python_version: str) -> str:
    minor = _major_minor(python_version)
    if python_version in PYTHON_SLIM:
        version = python_version
    else:
        same_minor = sorted((v for v in PYTHON_SLIM if _major_minor(v) == minor), key=_patch_key)
        if not same_minor:
            return f"python:{minor}-slim-bookworm"
        version = same_minor[-1]
    return f"python:{version}-slim-bookworm@{PYTHON_SLIM[version]}"


def _cuda_base(cuda: str, cudnn: str | None) -> str:
    cudnn_major = cudnn.split(".")[0] if cudnn else None
    pinned = CUDA_RUNTIME.get((_major_minor(cuda), cudnn_major or ""))
    if pinned:
        return pinned
    version = cuda if cuda.count(".") >= 2 else f"{cuda}.0"
    flavour = "" if cudnn_major is None else ("cudnn8-" if cudnn_major == "8" else "cudnn-")
    return f"nvidia/cuda:{version}-{flavour}runtime-ubuntu22.04"


def is_pinned(ref: str, image_id: str | None) -> bool:
    """A ref pinned by registry digest, or a local image whose id was recorded."""
    return "@sha256:" in ref or bool(image_id)


def is_cuda(ref: str) -> bool:
    """True for NVIDIA CUDA images (they carry no Python)."""
    return ref.split("@")[0].split(":")[0].endswith("nvidia/cuda")


def is_micromamba(ref: str) -> bool:
    """True for micromamba images (they run as a non-root user by default)."""
    return "micromamba" in ref.split("@")[0].split(":")[0]


def system_python(base_image: str, python_version: str) -> SystemPython:
    """How to run ``python -m venv`` in ``base_image``."""
    if is_cuda(base_image):
        exe = f"python{_major_minor(python_version)}"
        return SystemPython(executable=exe, apt_packages=(exe, f"{exe}-venv"))
    return SystemPython(executable="python3")


def check_release(release: str) -> None:
    """A Debian release is a codename (``bookworm``) or suite (``stable``), never a path."""
    if not _RELEASE.fullmatch(release):
        raise InputError(f"invalid Debian release {release[:60]!r}: expected a codename "
                         "such as bookworm", hint=f"the default is {DEFAULT_RELEASE}")


def default_tag(release: str) -> str:
    """The tag a base image for ``release`` gets when none is given."""
    return f"auditor-base:{release}"


def build_base_image(
    release: str = DEFAULT_RELEASE,
    tag: str | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[str, str]:
    """Create (or reuse) the debootstrap base image; return ``(tag, image_id)``."""
    from auditor.env.engine import docker_client

    check_release(release)
    tag = tag or default_tag(release)
    client = docker_client()
    try:
        return _build_or_reuse(client, release, tag, force, progress)
    finally:
        client.close()


def _build_or_reuse(client: Any, release: str, tag: str, force: bool,
                    progress: Progress | None) -> tuple[str, str]:
    if not force:
        existing = _existing_image_id(client, tag)
        if existing:
            _say(progress, f"reusing base image {tag} ({existing})")
            return tag, existing
    _check_tools()
    with tempfile.TemporaryDirectory(prefix="auditor-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _debootstrap(release, rootfs, progress)
        _trim(rootfs)
        tarball = Path(tmp) / "rootfs.tar"
        _tar(rootfs, tarball)
        _say(progress, f"importing {tarball.stat().st_size // 2**20} MiB as {tag}")
        image_id = _import(client, tarball, tag, release)
    _say(progress, f"built base image {tag} ({image_id})")
    return tag, image_id


def _existing_image_id(client: Any, tag: str) -> str | None:
    import docker.errors

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        return None


def _check_tools() -> None:
    if shutil.which("debootstrap") is None:
        raise BuildFailed(
            "debootstrap is not installed", hint="apt-get install debootstrap, then retry"
        )
    if os.geteuid() != 0:
        raise BuildFailed(
            "debootstrap needs root to create a root filesystem",
            hint="run `audit base-image build` as root (sudo), or pass --base-image REF",
        )


def _debootstrap(release: str, rootfs: Path, progress: Progress | None) -> None:
    mirror = os.environ.get("AUDITOR_DEBIAN_MIRROR", DEFAULT_MIRROR)
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        release,
        str(rootfs),
        mirror,
    ]
    _say(progress, " ".join(argv))
    _run_streaming(argv, progress, what=f"debootstrap {release}")


def _run_streaming(argv: Sequence[str], progress: Progress | None, *, what: str) -> None:
    lines: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            _say(progress, line.rstrip())
    if proc.returncode != 0:
        tail = " | ".join(lines[-LOG_TAIL_LINES:])
        raise BuildFailed(f"{what} failed (exit {proc.returncode})", hint=tail)


def _trim(rootfs: Path) -> None:
    """Drop apt caches: they are large and differ on every run."""
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / folder).glob("*"):
            if entry.is_file():
                entry.unlink()


def _tar(rootfs: Path, tarball: Path) -> None:
    argv = ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."]
    _run_streaming(argv, None, what="tar of the root filesystem")


def _import(client: Any, tarball: Path, tag: str, release: str) -> str:
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:
        repository, version = tag, "latest"
    changes = [
        f"LABEL org.auditor.base.release={release}",
        f"LABEL org.auditor.base.packages={','.join(PACKAGES)}",
        "ENV LANG=C.UTF-8",
        'CMD ["/bin/bash"]',
    ]
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=version, changes=changes
    )
    image_id = _existing_image_id(client, tag)
    if image_id is None:
        raise BuildFailed(f"docker import did not produce {tag}", hint="see the dockerd log")
    return image_id


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None and line:
        progress(line)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m auditor.env.baseimage``: build or reuse the base image, print tag and id."""
    parser = argparse.ArgumentParser(prog="python -m auditor.env.baseimage")
    parser.add_argument("--release", default=DEFAULT_RELEASE)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        tag, image_id = build_base_image(args.release, args.tag, force=args.force, progress=say)
    except AuditorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{tag} {image_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
