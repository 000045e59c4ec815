"""The docker build: a run's environment rebuilt from its lockfile as an image (docker SDK).

Contract:

- ``render_dockerfile(inputs)`` renders ``templates/Dockerfile.j2`` (jinja2, StrictUndefined,
  no autoescape) with values computed and sorted here, so equal inputs give equal text.
  A hashed pip lock installs from the verified wheel cache (``auditor.env.wheelcache``):
  the host fetches each wheel once (the CA bundle and the wheelhouse are inputs of that
  fetch only), the build reads them over HTTP from the host (``auditor.env.wheelserve``)
  with ``uv pip install --no-index --require-hashes --compile-bytecode`` (``UV_REQUIREMENT``:
  uv is a pinned build input, fetched into the wheel cache, served beside the wheels and
  checked against its pinned sha256 inside the ``RUN`` that uses it, which removes it), so
  no wheel, CA bundle, index or installer reaches any layer. The heaviest packages
  (``is_heavy``: torch, the CUDA libraries, any wheel of ``HEAVY_WHEEL_BYTES``) go first
  into an image of their own, one layer each, tagged
  ``auditor-env-heavy:<heavy digest[:16]>`` and named by the base and their pins only, so
  a lock that differs elsewhere starts from it; the rest of the lock is one layer on top.
  A conda or unhashed lock keeps the older three stages: ``base``, ``install``
  (copies the lock, CA bundle and wheelhouse; pip or micromamba from the index) and the
  final stage, which copies only ``/opt/auditor`` from ``install``. Either way the final
  image records ``pip inspect`` and the Python version, as seen inside it, in
  ``/opt/auditor/environment.json``.
- ``build_inputs_digest(inputs)`` hashes everything that decides the image's content
  (template, probe script, base ref and id, lock sha256, the system Python to install;
  for a conda or unhashed lock also the wheelhouse files and the CA bundle, which a hashed
  lock's hashes make irrelevant); the tag is ``auditor-env:<digest[:16]>``.
  Run id and auditor version are labels only: runs with equal inputs share one image, whose
  run-id label names the run it was first built for.
- ``build_docker(...)``: an image that exists for the digest is a cache hit (its probe
  read from the image's top layer on disk where the engine is local overlay2, else from a
  created container). Otherwise
  the image is built untagged and tagged only once the build, the probe and the T20 check
  succeeded; a failure tags nothing and raises ``ImageBuildFailed`` (``BuildFailed``, exit
  3) carrying the full log in ``log`` and its cause in one line (``auditor.env.inputs``
  keeps the log in a file the message names).
- The venv build is ``auditor.env.venv``; both share ``auditor.env.spec`` (inputs, result,
  probe) and neither imports the other. Which one builds is chosen once, by
  ``auditor.rerun.backends`` (docker when an engine answers, else venv, loudly).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from auditor.core.errors import BuildFailed, InputError
from auditor.core.lockfile import (
    Lock,
    LockedPackage,
    check_python_compat,
    parse_requirements_lock,
)
from auditor.core.progress import Counter, counter, stage
from auditor.env import baseimage, wheelserve
from auditor.env.engine import docker_client
from auditor.env.spec import (
    PROBE,
    BuildInputs,
    BuildResult,
    Progress,
    install_failure,
    result_of,
)
from auditor.env.wheelcache import (
    Fetcher,
    WheelCache,
    default_root,
    link_or_copy,
    max_bytes_from_env,
    requirement_lines,
)

IMAGE_REPOSITORY = "auditor-env"
HEAVY_REPOSITORY = "auditor-env-heavy"
# auditor/templates links to the top-level templates/ folder; the wheel ships its files
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "templates" / "Dockerfile.j2"
DIGEST_SCHEMA = 2
# A package installed in a layer of its own in the heavy packages' image: by name, or any
# wheel this large (numpy, scipy, sympy, ...: their install, byte-compiling included,
# is what a small change elsewhere would otherwise pay again).
HEAVY_NAMES = ("torch", "triton", "nvidia-*", "tensorflow*", "jaxlib", "tensorrt*")
HEAVY_WHEEL_BYTES = 5 << 20
# The installer of a hashed lock's layers: uv (parallel download, unpack and bytecode
# compilation: about half of pip's time for torch), a pinned build input fetched into the
# wheel cache like the lock's wheels and checked against these hashes on the host (the
# cache) and again inside the build before it runs; it lives in /tmp of the RUN that
# uses it and is removed there, so it never reaches a layer. One wheel per platform.
UV_REQUIREMENT = (
    "uv==0.13.8"
    " --hash=sha256:e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984"  # x86_64
    " --hash=sha256:0b3e8b1a4f5e405e31e2ff33de8af4744831e9f7338539671efbd8c3c94e791d"  # aarch64
    "\n")
# Run by the base's Python inside the RUN: argv = URL, target, allowed sha256s. Fetches
# the wheel from the build's wheel server, refuses any other bytes, writes the binary.
UV_FETCH = ("import hashlib,io,os,sys,urllib.request as u,zipfile as z;"
            "url,out,*pins=sys.argv[1:];d=u.urlopen(url).read();"
            "h=hashlib.sha256(d).hexdigest();"
            "h in pins or sys.exit('uv wheel sha256 '+h+' is not pinned');"
            "f=z.ZipFile(io.BytesIO(d));"
            "n=[m for m in f.namelist() if m.endswith('.data/scripts/uv')][0];"
            "open(out,'wb').write(f.read(n));os.chmod(out,0o755)")
UV_SERVED = "tools/uv-installer"  # in a subfolder, no .whl: not on the find-links page
UV_BINARY = "/tmp/auditor-uv"
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


def template_context(inputs: BuildInputs, inputs_digest: str,
                     sizes: Mapping[str, int] | None = None, part: str = "env"
                     ) -> dict[str, object]:
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
        "label_lines": _label_lines(labels), "part": part,
        **_wheel_cache_context(inputs, sizes),
    }


def uses_wheel_cache(lock: Lock) -> bool:
    """A hashed pip lock installs from the wheel cache; a conda or unhashed lock installs
    from its index inside the build, as before."""
    return lock.kind == "pip" and lock.hashed and bool(lock.packages)


def is_heavy(package: LockedPackage, size: int | None) -> bool:
    """torch, the CUDA libraries and their like, or any wheel of ``HEAVY_WHEEL_BYTES``."""
    return any(fnmatch.fnmatchcase(package.name, pattern) for pattern in HEAVY_NAMES) or (
        size is not None and size >= HEAVY_WHEEL_BYTES)


def layer_files(lock: Lock, sizes: Mapping[str, int]) -> dict[str, list[LockedPackage]]:
    """The requirement files of the install layers, in order: one per heavy package (the
    largest wheel first, so a change to a smaller one rebuilds the least), then
    ``rest.lock`` with everything else (absent when nothing is left)."""
    heavy = sorted((p for p in lock.packages if is_heavy(p, sizes.get(p.name))),
                   key=lambda p: (-sizes.get(p.name, 0), p.name))  # the largest first
    rest = [p for p in lock.packages if p not in heavy]
    layers = {f"heavy-{p.name}.lock": [p] for p in heavy}
    return layers | ({"rest.lock": rest} if rest else {})


def _wheel_cache_context(inputs: BuildInputs, sizes: Mapping[str, int] | None
                         ) -> dict[str, object]:
    if not uses_wheel_cache(inputs.lock):
        return {"wheel_cache": False, "heavy_layers": [], "rest_layer": "", "find_links": "",
                "wheels_host": "", "heavy_image": "", "heavy_tag": "", "heavy_digest": "",
                "uv_fetch": "", "uv_served": "", "uv_binary": "", "uv_hashes": ""}
    files = layer_files(inputs.lock, sizes if sizes is not None else cached_sizes(inputs))
    layers = list(files)
    heavy = [f for f in layers if f != "rest.lock"]
    digest = heavy_digest(inputs, files) if heavy else ""
    return {"wheel_cache": True, "find_links": wheelserve.URL,
            "wheels_host": wheelserve.HOSTNAME, "heavy_layers": heavy,
            "uv_fetch": UV_FETCH, "uv_served": UV_SERVED, "uv_binary": UV_BINARY,
            "uv_hashes": " ".join(h.removeprefix("sha256:") for h in uv_package().hashes),
            "rest_layer": "rest.lock" if "rest.lock" in layers else "",
            "heavy_digest": digest, "heavy_tag": heavy_tag(digest) if digest else "",
            "heavy_image": heavy_tag(digest) if digest else ""}


def uv_package() -> LockedPackage:
    """The pinned installer (``UV_REQUIREMENT``) as a locked package of the wheel cache."""
    return uv_lock().packages[0]


@functools.lru_cache(maxsize=1)
def uv_lock() -> Lock:
    """``UV_REQUIREMENT`` as a lock the wheel cache can ``ensure``."""
    return parse_requirements_lock(UV_REQUIREMENT, name="uv.lock")


def heavy_digest(inputs: BuildInputs, layers: Mapping[str, list[LockedPackage]]) -> str:
    """sha256 over what decides the heavy image: the base, its Python, the template and
    the heavy packages' pins and hashes (not the rest of the lock)."""
    system = baseimage.system_python(inputs.base_image, inputs.python_version)
    material = {
        "schema": DIGEST_SCHEMA,
        "template": hashlib.sha256(_template_text().encode()).hexdigest(),
        "base_image": inputs.base_image, "base_image_id": inputs.base_image_id,
        "system_python": [system.executable, *system.apt_packages],
        "heavy": {name: requirement_lines(packages) for name, packages in layers.items()
                  if name != "rest.lock"},
        "installer": UV_REQUIREMENT,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def heavy_tag(digest: str) -> str:
    """The content-addressed tag of a heavy-packages image."""
    return f"{HEAVY_REPOSITORY}:{digest[:16]}"


def wheel_cache_of(inputs: BuildInputs) -> WheelCache:
    """The wheel cache a build of ``inputs`` uses."""
    return WheelCache(inputs.wheel_cache or default_root(), max_bytes_from_env())


def cached_sizes(inputs: BuildInputs) -> dict[str, int]:
    """Sizes of the lock's wheels already in the cache (for ``--print``; not verified)."""
    cache = wheel_cache_of(inputs)
    sizes: dict[str, int] = {}
    for package in inputs.lock.packages:
        for value in package.hashes:
            for path in cache.entry(value.removeprefix("sha256:")).glob("*.whl"):
                sizes[package.name] = path.stat().st_size
    return sizes


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


def render_dockerfile(inputs: BuildInputs, sizes: Mapping[str, int] | None = None,
                      part: Literal["env", "heavy", "all"] = "all") -> str:
    """The Dockerfile for ``inputs``; deterministic for given wheel ``sizes`` (by package
    name: they decide which packages go to the heavy image; default: the sizes of the
    wheels already cached). ``part``: the heavy image's, the environment image's, or both
    (what ``audit build --print`` shows: the heavy one first, when the lock has one)."""
    import jinja2

    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    sizes = sizes if sizes is not None else (
        cached_sizes(inputs) if uses_wheel_cache(inputs.lock) else {})
    template = env.from_string(_template_text())
    digest = build_inputs_digest(inputs)
    if part != "all":
        return template.render(**template_context(inputs, digest, sizes, part))
    heavy = template_context(inputs, digest, sizes, "heavy")
    env_text = template.render(**template_context(inputs, digest, sizes, "env"))
    if not heavy["heavy_layers"]:
        return env_text
    return (f"# ==== {heavy['heavy_tag']} ====\n" + template.render(**heavy)
            + f"\n# ==== {image_tag(digest)} ====\n" + env_text)


def _template_text() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def build_inputs_digest(inputs: BuildInputs) -> str:
    """sha256 over everything that decides the built environment's content."""
    system = baseimage.system_python(inputs.base_image, inputs.python_version)
    hashed = uses_wheel_cache(inputs.lock)  # the lock's hashes pin every installed byte
    material = {
        "schema": DIGEST_SCHEMA,
        "template": hashlib.sha256(_template_text().encode()).hexdigest(),
        "probe": hashlib.sha256(PROBE.encode()).hexdigest(),
        "base_image": inputs.base_image, "base_image_id": inputs.base_image_id,
        "lock": [inputs.lock.kind, inputs.lock.sha256],
        "wheelhouse": [] if hashed else _wheelhouse_files(inputs.wheelhouse),
        "ca_bundle": _file_sha256(inputs.ca_bundle) if inputs.ca_bundle and not hashed
        else None,
        "system_python": [system.executable, *system.apt_packages],
        "installer": UV_REQUIREMENT if hashed else None,
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
                 progress: Progress | None = None, reuse_heavy: bool = False) -> BuildResult:
    """Build (or reuse) the image for ``inputs``; ``EngineUnavailable`` without an engine.
    ``no_cache`` rebuilds every layer, the heavy packages' image too unless
    ``reuse_heavy`` (what ``bench/bench_build.py`` measures)."""
    started = time.monotonic()
    say = progress or (lambda line: None)
    digest = build_inputs_digest(inputs)
    client = docker_client()
    try:
        return _build_docker(client, inputs, digest, no_cache, say, started, reuse_heavy)
    finally:
        client.close()


def _build_docker(client: Any, inputs: BuildInputs, digest: str, no_cache: bool,
                  say: Progress, started: float, reuse_heavy: bool = False) -> BuildResult:
    tag = image_tag(digest)
    existing = None if no_cache else _get_image(client, tag)
    if existing is not None:
        say(f"cache hit: {tag} ({existing.id})")
        return result_of(inputs, digest, _read_environment(client, existing.id, existing),
                       backend="docker", tag=tag, image_id=existing.id, cached=True, log="",
                       seconds=time.monotonic() - started)
    _check_base(client, inputs)
    image_id, lines = _docker_build(client, inputs, say, no_cache, reuse_heavy)
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


def _docker_build(client: Any, inputs: BuildInputs, say: Progress, no_cache: bool,
                  reuse_heavy: bool = False) -> tuple[str, list[str]]:
    """Build on a fresh context; return (image id, log lines). A hashed pip lock installs
    from the wheel cache, served over HTTP for the build's duration, its heaviest packages
    from their own image (built first when missing)."""
    if not uses_wheel_cache(inputs.lock):
        return _classic_build(client, inputs, say, no_cache, None, {}, "env", Counter())
    cache = wheel_cache_of(inputs)
    fetcher = Fetcher(find_links=(inputs.wheelhouse,) if inputs.wheelhouse else (),
                      ca_bundle=inputs.ca_bundle, python_version=inputs.python_version)
    wheels = cache.ensure(inputs.lock, fetcher, say)
    installer = cache.ensure(uv_lock(), Fetcher(ca_bundle=inputs.ca_bundle), say)
    sizes = {w.package.name: w.size for w in wheels}
    installing = counter(say, "installing", len(wheels), sum(sizes.values()))
    try:
        with cache.serve_folder(wheels) as folder:
            (folder / UV_SERVED).parent.mkdir()
            link_or_copy(installer[0].path, folder / UV_SERVED)
            heavy_lines = _heavy_image(client, inputs, sizes, say, no_cache and not reuse_heavy,
                                       folder, installing)
            image_id, lines = _classic_build(client, inputs, say, no_cache, folder, sizes,
                                             "env", installing)
    finally:
        installing.close()
    return image_id, [*heavy_lines, *lines]


def _heavy_image(client: Any, inputs: BuildInputs, sizes: Mapping[str, int], say: Progress,
                 no_cache: bool, served: Path, installing: Counter) -> list[str]:
    """Make sure the heavy packages' image exists (built and tagged when missing)."""
    context = template_context(inputs, "", sizes, "heavy")
    tag = str(context["heavy_tag"])
    if not tag:
        return []
    if not no_cache and _get_image(client, tag) is not None:
        say(f"heavy packages: reusing {tag}")
        return []
    image_id, lines = _classic_build(client, inputs, say, no_cache, served, sizes, "heavy",
                                     installing)
    repository, _, version = tag.partition(":")
    client.api.tag(image_id, repository, version)
    return lines


def _classic_build(client: Any, inputs: BuildInputs, say: Progress, no_cache: bool,
                   served: Path | None, sizes: Mapping[str, int], part: Literal["env", "heavy"],
                   installing: Counter) -> tuple[str, list[str]]:
    lines: list[str] = []
    serve: AbstractContextManager[dict[str, str]] = (
        wheelserve.serving(served, installing) if served else contextlib.nullcontext({}))
    what = "building the heavy packages' image" if part == "heavy" else "building the image"
    with tempfile.TemporaryDirectory(prefix="auditor-build-") as tmp, stage(say, what), \
            serve as hosts:
        context = Path(tmp)
        _write_context(context, inputs, sizes, part)
        stream = client.api.build(path=str(context), rm=True, forcerm=True, nocache=no_cache,
                                  network_mode="host", decode=True, pull=False,
                                  extra_hosts=hosts or None)
        image_id = _follow(stream, lines, say)
        if image_id is None:  # inside the stage: it is timed as failed
            raise install_failure(lines, "image build")
    return str(client.images.get(image_id).id), lines


def _write_context(context: Path, inputs: BuildInputs, sizes: Mapping[str, int],
                   part: Literal["env", "heavy"] = "env") -> None:
    (context / "Dockerfile").write_text(render_dockerfile(inputs, sizes, part))
    (context / lock_file_name(inputs.lock)).write_text(inputs.lock.text)
    (context / "probe.py").write_text(PROBE)
    if uses_wheel_cache(inputs.lock):  # no CA bundle or wheelhouse: the host fetched
        (context / "locks").mkdir()
        for name, packages in layer_files(inputs.lock, sizes).items():
            if (name == "rest.lock") == (part == "env"):
                (context / "locks" / name).write_text(requirement_lines(packages))
        return
    if inputs.ca_bundle is not None:
        shutil.copyfile(inputs.ca_bundle, context / "ca-bundle.crt")
    if inputs.wheelhouse is not None:
        (context / "wheelhouse").mkdir()
        for wheel in sorted(inputs.wheelhouse.iterdir()):
            if wheel.is_file():
                link_or_copy(wheel, context / "wheelhouse" / wheel.name)


def _follow(stream: Iterable[dict[str, Any]], lines: list[str], say: Progress) -> str | None:
    """Collect the build log (kept whole for the store and a failure's log file; the
    terminal sees the stages and counters instead); the built image id, or None on error.

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
        built = re.match(r"Successfully built ([0-9a-f]+)", text)
        image_id = chunk.get("aux", {}).get("ID") or (built.group(1) if built else image_id)
    return None if failed else image_id


def _read_environment(client: Any, image_id: str, image: Any = None) -> dict[str, Any]:
    """The environment.json the final stage wrote, read without starting the image: from
    the image's top layer on this host's disk when the engine is local overlay2 and the
    file is there (a cache hit then costs no container: ~0.3 s less per warm verify), else
    from a created, never started container."""
    found = _top_layer_file(image, ENVIRONMENT_JSON) if image is not None else None
    if found is not None:
        with contextlib.suppress(ValueError):
            return dict(json.loads(found))
    container = client.containers.create(image_id, command=["true"], network_mode="none")
    try:
        chunks, _ = container.get_archive(ENVIRONMENT_JSON)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile("environment.json")
            assert member is not None
            return dict(json.loads(member.read()))
    finally:
        container.remove(force=True)


def _top_layer_file(image: Any, path: str) -> bytes | None:
    """``path`` as the image's top layer holds it (overlay2's ``UpperDir``, which is
    what a container of the image sees when the file is there), or None: another storage
    driver, a remote engine, a file the top layer does not hold. Every component is opened
    without following links, so nothing outside the layer's folder is ever read."""
    data = (getattr(image, "attrs", None) or {}).get("GraphDriver") or {}
    upper = (data.get("Data") or {}).get("UpperDir") if data.get("Name") == "overlay2" else None
    if not isinstance(upper, str) or not upper.startswith("/"):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fds: list[int] = []
    try:
        fds.append(os.open(upper, flags | os.O_DIRECTORY))
        *folders, name = path.strip("/").split("/")
        for part in folders:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        fds.append(os.open(name, flags | os.O_NONBLOCK, dir_fd=fds[-1]))
        if not stat.S_ISREG(os.fstat(fds[-1]).st_mode):
            return None
        with os.fdopen(os.dup(fds[-1]), "rb") as handle:
            return handle.read(1 << 20)
    except OSError:  # not there, not ours to read, or a link: ask the engine
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _remove_untagged(client: Any, image_id: str) -> None:
    image = _get_image(client, image_id)
    if image is not None and not image.tags:
        client.images.remove(image_id, force=True)
