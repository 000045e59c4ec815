"""The docker build: a run's environment rebuilt from its lockfile as an image (docker SDK).

Contract:

- ``render_dockerfile(inputs)`` renders ``templates/Dockerfile.j2`` (jinja2, StrictUndefined,
  no autoescape) with values computed and sorted here, so equal inputs give equal text.
  Three stages: ``base`` (the pinned base plus the non-root user ``auditor``, uid 1000),
  ``install`` (copies the lock and the build-only inputs, CA bundle and wheelhouse, and
  runs ``pip install --require-hashes --no-deps --only-binary :all:``) and the final stage,
  which copies only ``/opt/auditor`` from ``install``: the CA bundle and the wheelhouse
  never reach the final image's layers. The final stage records ``pip inspect`` and the
  Python version, as seen inside it, in ``/opt/auditor/environment.json``.
- ``build_inputs_digest(inputs)`` hashes everything that decides the image's content
  (template, probe script, base ref and id, lock sha256, wheelhouse file names and sha256,
  CA bundle sha256, the system Python to install); the tag is ``auditor-env:<digest[:16]>``.
  Run id and auditor version are labels only: runs with equal inputs share one image, whose
  run-id label names the run it was first built for.
- ``build_docker(...)``: an image that exists for the digest is a cache hit. Otherwise
  the image is built untagged and tagged only once the build, the probe and the T20 check
  succeeded; a failure tags nothing and raises ``ImageBuildFailed`` (``BuildFailed``, exit
  3) carrying the full log in ``log`` and the log's tail in its one-line message.
- The venv build is ``auditor.env.venv``; both share ``auditor.env.spec`` (inputs, result,
  probe) and neither imports the other. Which one builds is chosen once, by
  ``auditor.rerun.backends`` (docker when an engine answers, else venv, loudly).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from auditor.core.errors import BuildFailed, InputError
from auditor.core.lockfile import Lock, check_python_compat
from auditor.env import baseimage
from auditor.env.engine import docker_client
from auditor.env.spec import (
    PROBE,
    BuildInputs,
    BuildResult,
    Progress,
    install_failure,
    result_of,
)

IMAGE_REPOSITORY = "auditor-env"
# auditor/templates links to the top-level templates/ folder; the wheel ships its files
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "templates" / "Dockerfile.j2"
DIGEST_SCHEMA = 1
ENVIRONMENT_JSON = "/opt/auditor/environment.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---- rendering -----------------------------------------------------------------------


def default_base_image(python_version: str, cuda: str | None, cudnn: str | None, *,
                       kind: Literal["pip", "conda"] = "pip") -> str:
    """The pinned default base image (tables and sources in ``auditor.env.baseimage``)."""
    if kind == "conda":
        return baseimage.MICROMAMBA
    return baseimage.default_base_image(python_version, cuda, cudnn)


def lock_file_name(lock: Lock) -> str:
    """The lock's file name in the build context and the image."""
    return "requirements.lock" if lock.kind == "pip" else "conda-lock.yml"


def env_prefix(lock: Lock) -> str:
    """Where the environment lives in the image."""
    return "/opt/auditor/venv" if lock.kind == "pip" else "/opt/auditor/env"


def unpinned_warning(inputs: BuildInputs) -> str:
    """T21a: empty when the base is pinned; a warning otherwise; refused with ``strict``."""
    if baseimage.is_pinned(inputs.base_image, inputs.base_image_id):
        return ""
    message = (f"base image {inputs.base_image} is not pinned by digest: a rebuild may "
               "start from a different image")
    if inputs.strict:
        raise InputError(message, hint="pin it as NAME@sha256:<digest>, or build one with "
                         "`audit base-image build` and pass --base-image (--strict refuses)")
    return message


def template_context(inputs: BuildInputs, inputs_digest: str) -> dict[str, object]:
    """Every value the template shows, computed here so the template stays dumb."""
    system = baseimage.system_python(inputs.base_image, inputs.python_version)
    labels = {"org.auditor.run-id": inputs.run_id,
              "org.auditor.lock-sha256": inputs.lock.sha256,
              "org.auditor.version": inputs.auditor_version,
              "org.auditor.inputs-digest": inputs_digest}
    return {
        "run_id": inputs.run_id, "auditor_version": inputs.auditor_version,
        "inputs_digest": inputs_digest, "base_image": inputs.base_image,
        "base_image_id": inputs.base_image_id or "", "unpinned_warning": unpinned_warning(inputs),
        "as_root": baseimage.is_micromamba(inputs.base_image),
        "apt_install": " ".join(system.apt_packages), "python_exe": system.executable,
        "kind": inputs.lock.kind, "lock_file": lock_file_name(inputs.lock),
        "env_prefix": env_prefix(inputs.lock),
        "env_var": "VIRTUAL_ENV" if inputs.lock.kind == "pip" else "CONDA_PREFIX",
        "wheelhouse": inputs.wheelhouse is not None,
        "ca_bundle": inputs.ca_bundle is not None, "require_hashes": inputs.lock.hashed,
        "label_lines": _label_lines(labels),
    }


def _label_lines(labels: dict[str, str]) -> list[str]:
    """``key="value"`` lines of one LABEL instruction, continued with backslashes."""
    lines = [f"{key}={_quote(value)}" for key, value in sorted(labels.items())]
    return [f"{line} \\" for line in lines[:-1]] + lines[-1:]


def _quote(value: str) -> str:
    """A Dockerfile double-quoted string: no newlines, no variable expansion."""
    if "\n" in value or "\r" in value:
        raise InputError(f"label value {value!r} contains a line break")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def render_dockerfile(inputs: BuildInputs) -> str:
    """The Dockerfile for ``inputs``; deterministic."""
    import jinja2

    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    context = template_context(inputs, build_inputs_digest(inputs))
    return env.from_string(_template_text()).render(**context)


def _template_text() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def build_inputs_digest(inputs: BuildInputs) -> str:
    """sha256 over everything that decides the built environment's content."""
    system = baseimage.system_python(inputs.base_image, inputs.python_version)
    material = {
        "schema": DIGEST_SCHEMA,
        "template": hashlib.sha256(_template_text().encode()).hexdigest(),
        "probe": hashlib.sha256(PROBE.encode()).hexdigest(),
        "base_image": inputs.base_image, "base_image_id": inputs.base_image_id,
        "lock": [inputs.lock.kind, inputs.lock.sha256],
        "wheelhouse": _wheelhouse_files(inputs.wheelhouse),
        "ca_bundle": _file_sha256(inputs.ca_bundle) if inputs.ca_bundle else None,
        "system_python": [system.executable, *system.apt_packages],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def image_tag(inputs_digest: str) -> str:
    """The content-addressed tag for inputs with this digest."""
    return f"{IMAGE_REPOSITORY}:{inputs_digest[:16]}"


def _wheelhouse_files(folder: Path | None) -> list[list[str]]:
    if folder is None:
        return []
    if not folder.is_dir():
        raise InputError(f"wheelhouse {folder} is not a folder", hint="pass --wheelhouse DIR")
    return [[p.name, _file_sha256(p)] for p in sorted(folder.iterdir()) if p.is_file()]


def _file_sha256(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- building ------------------------------------------------------------------------


def build_docker(inputs: BuildInputs, *, no_cache: bool = False,
                 progress: Progress | None = None) -> BuildResult:
    """Build (or reuse) the image for ``inputs``; ``EngineUnavailable`` without an engine."""
    started = time.monotonic()
    say = progress or (lambda line: None)
    digest = build_inputs_digest(inputs)
    client = docker_client()
    try:
        return _build_docker(client, inputs, digest, no_cache, say, started)
    finally:
        client.close()


def _build_docker(client: Any, inputs: BuildInputs, digest: str, no_cache: bool,
                  say: Progress, started: float) -> BuildResult:
    tag = image_tag(digest)
    existing = None if no_cache else _get_image(client, tag)
    if existing is not None:
        say(f"cache hit: {tag} ({existing.id})")
        return result_of(inputs, digest, _read_environment(client, existing.id),
                       backend="docker", tag=tag, image_id=existing.id, cached=True, log="",
                       seconds=time.monotonic() - started)
    _check_base(client, inputs)
    image_id, lines = _docker_build(client, inputs, say, no_cache)
    try:
        probe = _read_environment(client, image_id)
        check_python_compat(inputs.lock, probe["python"])
    except BaseException:
        _remove_untagged(client, image_id)
        raise
    client.api.tag(image_id, IMAGE_REPOSITORY, digest[:16])
    return result_of(inputs, digest, probe, backend="docker", tag=tag, image_id=image_id,
                   cached=False, log="\n".join(lines), seconds=time.monotonic() - started)


def resolve_base_image_id(ref: str) -> str | None:
    """The id to pin a base image by: its registry digest, else the local image id."""
    if "@sha256:" in ref:
        return ref.split("@", 1)[1]
    client = docker_client()
    try:
        image = _get_image(client, ref)
    finally:
        client.close()
    return str(image.id) if image is not None else None


def pinned_base_id(ref: str) -> str | None:
    """``resolve_base_image_id``, or None when no engine or no such image answers (the
    build itself then says why)."""
    try:
        return resolve_base_image_id(ref)
    except Exception:  # noqa: BLE001 - the build itself reports a missing engine or image
        return None


def _get_image(client: Any, ref: str) -> Any:
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _check_base(client: Any, inputs: BuildInputs) -> None:
    """The base must be here (or pullable), be the recorded one, and fit the lock (T20)."""
    import docker.errors

    image = _get_image(client, inputs.base_image)
    if image is None:
        try:
            image = client.images.pull(inputs.base_image)
        except (docker.errors.DockerException, OSError) as exc:
            raise BuildFailed(
                f"base image {inputs.base_image} is not on this host and cannot be pulled",
                hint="create one with `audit base-image build` and pass "
                "--base-image auditor-base:bookworm") from exc
    if inputs.base_image_id and "@" not in inputs.base_image and image.id != inputs.base_image_id:
        raise BuildFailed(f"base image {inputs.base_image} is now {image.id}, recorded "
                          f"{inputs.base_image_id}", hint="pass --base-image with the "
                          "recorded image, or rebuild it with `audit base-image build`")
    base_python = _base_python(client, inputs)
    if base_python:
        check_python_compat(inputs.lock, base_python)


def _base_python(client: Any, inputs: BuildInputs) -> str | None:
    system = baseimage.system_python(inputs.base_image, inputs.python_version)
    if system.apt_packages:
        return inputs.python_version
    if inputs.lock.kind != "pip":
        return None
    command = [system.executable, "-c", "import platform; print(platform.python_version())"]
    try:
        out = client.containers.run(inputs.base_image, command, network_mode="none",
                                    remove=True, stderr=False, entrypoint=[])
    except Exception as exc:  # any engine error here means: no usable Python
        raise BuildFailed(f"base image {inputs.base_image} has no working {system.executable}",
                          hint="use a base image with Python, e.g. `audit base-image build`"
                          ) from exc
    return str(out.decode().strip())


def _docker_build(client: Any, inputs: BuildInputs, say: Progress, no_cache: bool
                  ) -> tuple[str, list[str]]:
    """Run the legacy builder on a fresh context; return (image id, log lines)."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="auditor-build-") as tmp:
        context = Path(tmp)
        _write_context(context, inputs)
        stream = client.api.build(path=str(context), rm=True, forcerm=True, nocache=no_cache,
                                  network_mode="host", decode=True, pull=False)
        image_id = _follow(stream, lines, say)
    if image_id is None:
        raise install_failure(lines, "image build")
    return str(client.images.get(image_id).id), lines


def _write_context(context: Path, inputs: BuildInputs) -> None:
    (context / "Dockerfile").write_text(render_dockerfile(inputs))
    (context / lock_file_name(inputs.lock)).write_text(inputs.lock.text)
    (context / "probe.py").write_text(PROBE)
    if inputs.ca_bundle is not None:
        shutil.copyfile(inputs.ca_bundle, context / "ca-bundle.crt")
    if inputs.wheelhouse is not None:
        (context / "wheelhouse").mkdir()
        for wheel in sorted(inputs.wheelhouse.iterdir()):
            if wheel.is_file():
                _link_or_copy(wheel, context / "wheelhouse" / wheel.name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _follow(stream: Iterable[dict[str, Any]], lines: list[str], say: Progress) -> str | None:
    """Stream the build log to ``say``; the built image id, or None on error.

    The stream is read to its end even after an error, so its connection is released.
    """
    image_id: str | None = None
    failed = False
    for chunk in stream:
        if "error" in chunk:
            lines.extend(_ANSI.sub("", str(chunk["error"])).splitlines())
            failed = True
            continue
        text = _ANSI.sub("", str(chunk.get("stream") or chunk.get("status") or ""))
        for line in text.splitlines():
            if line.strip():
                lines.append(line.rstrip())
                say(line.rstrip())
        built = re.match(r"Successfully built ([0-9a-f]+)", text)
        image_id = chunk.get("aux", {}).get("ID") or (built.group(1) if built else image_id)
    return None if failed else image_id


def _read_environment(client: Any, image_id: str) -> dict[str, Any]:
    """The environment.json the final stage wrote, read without starting the image."""
    container = client.containers.create(image_id, command=["true"], network_mode="none")
    try:
        chunks, _ = container.get_archive(ENVIRONMENT_JSON)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile("environment.json")
            assert member is not None
            return dict(json.loads(member.read()))
    finally:
        container.remove(force=True)


def _remove_untagged(client: Any, image_id: str) -> None:
    image = _get_image(client, image_id)
    if image is not None and not image.tags:
        client.images.remove(image_id, force=True)
