"""The build stage of a recorded run, without the rest of verify: the run's lock (a
derived one compiled once, ``auditor.env.lock_cache``), its build inputs, and the build
itself by the chosen backend (a ``Builder``: ``auditor.rerun.backends``), remembered in the
store, with the notes the certificate gets about it. ``audit build`` and ``--print``
import only this and the backends (not the comparers and the sandbox), so a rebuild of
unchanged inputs starts fast.
``auditor.verify`` composes it with the rerun and the comparison.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from auditor.core.errors import CouldNotVerify
from auditor.core.lockfile import Lock, parse_conda_lock, parse_requirements_lock
from auditor.core.schema import RunRecord
from auditor.core.version import __version__
from auditor.env.build import default_base_image, pinned_base_id
from auditor.env.spec import BuildInputs, BuildResult, ImageBuildFailed
from auditor.env.venv import venv_root_for
from auditor.env.wheelcache import default_root
from auditor.store import RunStore, store_dir_of

Progress = Callable[[str], None]


class BuildOptions(Protocol):
    """What a build reads from the options (``verify.VerifyOptions`` has it all)."""

    @property
    def backend(self) -> str | None: ...
    @property
    def base_image(self) -> str | None: ...
    @property
    def wheelhouse(self) -> Path | None: ...
    @property
    def ca_bundle(self) -> Path | None: ...
    @property
    def wheel_cache(self) -> Path | None: ...
    @property
    def no_cache(self) -> bool: ...
    @property
    def strict(self) -> bool: ...
    @property
    def allow_unhashed(self) -> bool: ...


class Builder(Protocol):
    """The build half of a backend (the backends themselves: ``auditor.rerun.backends``)."""

    def base_image_id(self, ref: str) -> str | None: ...
    def build(self, inputs: BuildInputs, *, no_cache: bool, progress: Progress,
              venv_root: Path) -> BuildResult: ...


@dataclass(frozen=True)
class BuildSettings:
    """``BuildOptions`` for ``audit build`` alone (verify passes its ``VerifyOptions``)."""

    backend: str | None = None
    base_image: str | None = None
    wheelhouse: Path | None = None
    ca_bundle: Path | None = None
    wheel_cache: Path | None = None
    no_cache: bool = False
    strict: bool = False
    allow_unhashed: bool = False


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def load_lock(store: RunStore, record: RunRecord, *, allow_unhashed: bool = False) -> Lock:
    """The run's lockfile; a derived (unhashed) one is hashed with pip-tools first, once
    (``auditor.env.lock_cache``: the compiled lock is kept in the store and reused)."""
    py = record.environment.python
    if py is None or py.lock is None:
        raise CouldNotVerify(f"run {record.identity.id} has no recorded Python environment")
    text = store.blobs.read_bytes(py.lock.sha256, py.lock.artifact).decode("utf-8")
    name = Path(py.lock.artifact).name
    if py.lock.kind == "conda":
        tmp = store_dir_of(store) / "tmp" / name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        return parse_conda_lock(tmp)
    if py.lock.origin == "derived":  # compiled once with pip-tools, then reused
        from auditor.env.lock_cache import compiled_lock

        links = [p for p in [_env_path("AUDITOR_WHEELHOUSE")] if p]
        return compiled_lock(store, record, text, links)
    return parse_requirements_lock(text, name=name, allow_unhashed=allow_unhashed)


def build_notes(store: RunStore, record: RunRecord, built: BuildResult) -> list[str]:
    """What the certificate says about the build: known environment differences, the
    backend's weaker isolation, and the derived lock it was rebuilt from."""
    return [*built.differences, *([built.isolation_note] if built.isolation_note else []),
            *_derived_lock_note(store, record)]


def _derived_lock_note(store: RunStore, record: RunRecord) -> list[str]:
    """The certificate names the lock a derived run was really rebuilt from."""
    from auditor.env.lock_cache import cached_lock_ref

    ref = cached_lock_ref(store, record)
    return [] if ref is None else [
        f"no project lockfile: rebuilt from the lock compiled from the recorded installed "
        f"set (pip-compile --generate-hashes, {ref.packages} packages, sha256 {ref.sha256})"]


def inputs_for(store: RunStore, record: RunRecord, opts: BuildOptions,
               builder: Builder | None = None) -> BuildInputs:
    """The build inputs of a run: its lock, recorded Python, base image and build inputs.
    The base image is pinned by ``builder`` (none for a venv), or by the engine if one
    answers when no backend is chosen yet (``audit build --print``)."""
    py = record.environment.python
    lock = load_lock(store, record, allow_unhashed=opts.allow_unhashed)
    acc = record.environment.accelerators
    cuda = acc.torch_cuda if acc and acc.gpus else None
    cudnn = acc.cudnn if acc and acc.gpus else None
    base = opts.base_image or default_base_image(py.version if py else "3", cuda, cudnn)
    return BuildInputs(
        run_id=record.identity.id,
        lock=lock,
        python_version=py.version if py else "3",
        base_image=base,
        base_image_id=builder.base_image_id(base) if builder else pinned_base_id(base),
        wheelhouse=opts.wheelhouse,
        ca_bundle=opts.ca_bundle,
        wheel_cache=opts.wheel_cache,
        cuda=cuda,
        cudnn=cudnn,
        auditor_version=__version__,
        strict=opts.strict,
    )


def build_for(
    store: RunStore, record: RunRecord, opts: BuildOptions, builder: Builder, say: Progress
) -> BuildResult:
    """Build (or reuse) a run's environment with ``builder`` and remember the build in the
    store."""
    inputs = inputs_for(store, record, opts, builder)
    say(
        f"building the environment ({len(inputs.lock.packages)} locked packages, base "
        f"{inputs.base_image})"
    )
    try:
        result = builder.build(inputs, no_cache=opts.no_cache, progress=say,
                               venv_root=venv_root_for(store_dir_of(store)))
    except ImageBuildFailed as exc:
        raise _with_log_file(exc, inputs) from exc
    log_sha, _ = store.blobs.put_bytes(result.log.encode())
    store.put_build(
        result.inputs_digest,
        record.identity.id,
        result.model_copy(update={"log": f"sha256:{log_sha}"}).model_dump_json(),
    )
    return result



def _with_log_file(exc: ImageBuildFailed, inputs: BuildInputs) -> ImageBuildFailed:
    """The same one-line error, naming a file that keeps the whole build log."""
    from auditor.env.build import build_inputs_digest

    folder = (inputs.wheel_cache or default_root()).parent / "logs"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = folder / f"build-{build_inputs_digest(inputs)[:16]}-{stamp}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(exc.log + "\n")
    except OSError as write_error:
        where = f"the build log could not be kept: {write_error.strerror}"
    else:
        where = f"full log: {path}"
    hint = f"{exc.hint}; {where}" if exc.hint else where
    return ImageBuildFailed(exc.message, log_text=exc.log, hint=hint)
