"""Build/run backends: one small protocol, an ordered list, chosen once.

A backend builds a run's environment (``build``) and runs the rerun in it (``execute``).
``BACKENDS`` lists them in order of preference (repo2docker's pattern): ``detect()`` takes
the first whose ``detect()`` answers, that is ``docker`` when an engine answers within the
ping timeout, else ``venv``, with a loud notice, since a venv rerun shares the host's OS,
libraries and files. ``choose(name)`` takes a named one as given and refuses an unknown
name, listing the available ones (exit 2). The choice is made once per command and the
same object builds and executes.

The sandbox is imported only when a rerun executes, so ``audit build`` stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from auditor.core.errors import InputError
from auditor.env.build import build_docker, pinned_base_id
from auditor.env.engine import engine_answers
from auditor.env.spec import BuildInputs, BuildResult, Progress
from auditor.env.venv import build_venv

if TYPE_CHECKING:
    from auditor.rerun.sandbox import Executed, Limits, Prepared

log = logging.getLogger(__name__)

LineSink = Callable[[int, str], None]
FALLBACK_NOTICE = ("NOTICE: no docker engine answers: building a virtualenv instead "
                   "(weaker isolation)")


class Backend(Protocol):
    """Builds an environment and runs a prepared rerun in it."""

    name: ClassVar[str]

    @classmethod
    def detect(cls) -> bool:
        """Whether this backend can be used on this host now."""
        ...

    def base_image_id(self, ref: str) -> str | None:
        """The id that pins the base image ``ref`` (None when the backend has none)."""
        ...

    def build(self, inputs: BuildInputs, *, no_cache: bool, progress: Progress,
              venv_root: Path) -> BuildResult:
        """Build (or reuse) the environment for ``inputs``."""
        ...

    def execute(self, prep: Prepared, built: BuildResult, limits: Limits, on_line: LineSink,
                *, hidden: tuple[Path, ...] = (), also_hidden: tuple[Path, ...] = ()
                ) -> Executed:
        """Run the prepared rerun in ``built``; ``hidden`` (the store) must stay out of its
        reach, ``also_hidden`` (the original repository) is kept out where possible."""
        ...


class DockerBackend:
    """An image built by the docker engine; the rerun in a locked-down container."""

    name: ClassVar[str] = "docker"

    @classmethod
    def detect(cls) -> bool:
        down = engine_answers()
        if down is not None:
            log.warning("NOTICE: %s; using the venv backend (weaker isolation)", down)
        return down is None

    def base_image_id(self, ref: str) -> str | None:
        return pinned_base_id(ref)

    def build(self, inputs: BuildInputs, *, no_cache: bool, progress: Progress,
              venv_root: Path) -> BuildResult:
        return build_docker(inputs, no_cache=no_cache, progress=progress)

    def execute(self, prep: Prepared, built: BuildResult, limits: Limits, on_line: LineSink,
                *, hidden: tuple[Path, ...] = (), also_hidden: tuple[Path, ...] = ()
                ) -> Executed:
        from auditor.rerun.in_docker import execute_docker  # neither is mounted in a container

        return execute_docker(prep, built.image_id, limits, on_line)


class VenvBackend:
    """A virtualenv on this host; the rerun as uid 1000 without network where possible."""

    name: ClassVar[str] = "venv"

    @classmethod
    def detect(cls) -> bool:
        return True  # the last resort: needs only this host's Python

    def base_image_id(self, ref: str) -> str | None:
        return None  # a venv has no base image

    def build(self, inputs: BuildInputs, *, no_cache: bool, progress: Progress,
              venv_root: Path) -> BuildResult:
        return build_venv(inputs, venv_root=venv_root, no_cache=no_cache, progress=progress)

    def execute(self, prep: Prepared, built: BuildResult, limits: Limits, on_line: LineSink,
                *, hidden: tuple[Path, ...] = (), also_hidden: tuple[Path, ...] = ()
                ) -> Executed:
        from auditor.rerun.in_venv import execute_venv

        return execute_venv(prep, Path(built.tag), limits, on_line, hidden=hidden,
                            also_hidden=also_hidden)


BACKENDS: tuple[type[Backend], ...] = (DockerBackend, VenvBackend)
DEFAULT_BACKEND = BACKENDS[0].name
NAMES = tuple(b.name for b in BACKENDS)


def detect(progress: Progress | None = None) -> Backend:
    """The first backend of ``BACKENDS`` that answers; a fallback is said loudly."""
    for backend in BACKENDS:
        if backend.detect():
            if backend is not BACKENDS[0] and progress is not None:
                progress(FALLBACK_NOTICE)
            return backend()
    raise AssertionError("the last backend always answers")  # pragma: no cover


def choose(name: str | None, progress: Progress | None = None) -> Backend:
    """The backend called ``name``; detected when None; InputError (exit 2) when unknown."""
    if name is None:
        return detect(progress)
    for backend in BACKENDS:
        if backend.name == name:
            return backend()
    raise InputError(f"unknown build backend {name!r}: available: {', '.join(NAMES)}",
                     hint=f"the default is {DEFAULT_BACKEND}")
