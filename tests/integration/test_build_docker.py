"""Real image builds against a docker engine (T17, T20, T21b and the issue's faults).

The small lock (six, pinned by hash) runs in seconds once the base layers are cached;
the torch lock (CPU wheel from the wheelhouse) is marked slow. The venv backend test
needs no engine, only the package index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from auditor.core.errors import BuildFailed, EngineUnavailable, LockfileError
from auditor.core.lockfile import Lock, parse_requirements_lock
from auditor.core.progress import Counter, Reporter
from auditor.env.build import (
    ENVIRONMENT_JSON,
    _read_environment,
    _top_layer_file,
    build_docker,
    build_inputs_digest,
    cached_sizes,
    image_tag,
    template_context,
)
from auditor.env.spec import BuildInputs, BuildResult, ImageBuildFailed, without_tooling
from auditor.env.venv import build_venv
from auditor.rerun.backends import detect

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "fixtures" / "locks" / "pip"


def _lock(name: str) -> Lock:
    return parse_requirements_lock((LOCKS / name).read_text(), name=name)


def _inputs(lock: Lock, base: tuple[str, str], **changes: Any) -> BuildInputs:
    fields: dict[str, Any] = {"run_id": "it-build", "lock": lock, "python_version": "3.11.7",
                              "base_image": base[0], "base_image_id": base[1],
                              "auditor_version": "0.1.0"}
    fields.update(changes)
    return BuildInputs(**fields)


def _untag(client: Any, inputs: BuildInputs) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(image_tag(build_inputs_digest(inputs)))


def _run(client: Any, image: str, *command: str) -> str:
    out = client.containers.run(image, list(command), network_mode="none", remove=True)
    return str(out.decode().strip())


def _assert_no_build_inputs_left(client: Any, result: BuildResult, ca_bundle: Path,
                                 wheel_names: list[str]) -> None:
    history = " ".join(str(step.get("CreatedBy", "")) for step in
                       client.images.get(result.image_id).history())
    assert "ca-bundle" not in history and "wheelhouse" not in history
    names = " -o ".join(f"-name '{name}'" for name in wheel_names)
    found = _run(client, result.image_id, "sh", "-c",
                 f"ls -d /tmp/auditor-build 2>/dev/null; find / -xdev -type f \\( {names} -o "
                 f"-size {ca_bundle.stat().st_size}c \\) -exec sha256sum {{}} + 2>/dev/null;"
                 " true")
    ca_sha = hashlib.sha256(ca_bundle.read_bytes()).hexdigest()
    assert "/tmp/auditor-build" not in found and ca_sha not in found
    assert not any(name in found for name in wheel_names), found


# ---- the small lock ------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    (folder / "auditor_canary-1.0-py3-none-any.whl").write_bytes(b"canary, not a wheel")
    return folder


@pytest.fixture(scope="module")
def small_inputs(base_image: tuple[str, str], ca_bundle: Path, canary_wheelhouse: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> BuildInputs:
    return _inputs(_lock("small.requirements.lock"), base_image, ca_bundle=ca_bundle,
                   wheelhouse=canary_wheelhouse,
                   wheel_cache=tmp_path_factory.mktemp("cache") / "wheels")


class Recorder(Reporter):
    """Keeps what a build reports: lines, stages, counters and their steps."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stages: list[str] = []
        self.counted: dict[str, list[str]] = {}
        super().__init__(self.lines.append)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stages.append(name)
        yield

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        items = self.counted.setdefault(label, [])

        class Items(Counter):
            def advance(self, *, current: str = "", nbytes: int = 0, steps: int = 1) -> None:
                items.append(current)

        return Items()


@pytest.fixture(scope="module")
def small_build(docker_client: Any, small_inputs: BuildInputs,
                tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    _untag(docker_client, small_inputs)
    seen = Recorder()
    # no_cache: another test (another pytest worker) may be building the same small lock
    # now, and its layers would make this build count nothing
    result = build_docker(small_inputs, no_cache=True, progress=seen)
    assert "building the image" in seen.stages
    six, *installer = seen.counted["fetching"]  # the installer, uv, is a build input too
    assert six == "six-1.17.0-py2.py3-none-any.whl"
    assert len(installer) == 1 and installer[0].startswith("uv-0.13.8-"), installer
    assert seen.counted["installing"] == ["six"], "each wheel of the lock is counted, once"
    return result


@pytest.mark.docker
def test_small_lock_builds_the_locked_packages(docker_client: Any, small_build: BuildResult,
                                               small_inputs: BuildInputs) -> None:
    assert (small_build.backend, small_build.cached) == ("docker", False)
    assert small_build.tag == image_tag(small_build.inputs_digest)
    assert small_build.packages["six"] == "1.17.0"
    assert without_tooling(small_inputs.lock, small_build.packages) == {"six": "1.17.0"}
    assert small_build.python_version == "3.11.2"
    assert small_build.differences == ["python 3.11.7 recorded, 3.11.2 in image"]
    assert "Successfully built" in small_build.log
    labels = docker_client.images.get(small_build.tag).labels
    assert labels["org.auditor.run-id"] == "it-build"
    assert labels["org.auditor.lock-sha256"] == small_inputs.lock.sha256
    assert labels["org.auditor.inputs-digest"] == small_build.inputs_digest
    assert labels["org.auditor.version"] == "0.1.0"


@pytest.mark.docker
def test_image_runs_as_non_root_without_network(docker_client: Any,
                                                small_build: BuildResult) -> None:
    assert _run(docker_client, small_build.tag, "id", "-u") == "1000"
    assert _run(docker_client, small_build.tag, "python", "-c",
                "import six; print(six.__version__)") == "1.17.0"


@pytest.mark.docker
def test_rebuild_is_a_cache_hit_under_three_seconds(small_build: BuildResult,
                                                    small_inputs: BuildInputs,
                                                    tmp_path: Path) -> None:
    started = time.monotonic()
    again = build_docker(small_inputs)
    elapsed = time.monotonic() - started
    assert again.cached and again.image_id == small_build.image_id
    assert again.packages == small_build.packages
    assert elapsed < 3.0, f"cache hit took {elapsed:.2f} s"


@pytest.mark.docker
def test_final_image_has_no_ca_bundle_and_no_wheelhouse(
    docker_client: Any, small_build: BuildResult, ca_bundle: Path
) -> None:
    _assert_no_build_inputs_left(docker_client, small_build, ca_bundle,
                                 ["auditor_canary-1.0-py3-none-any.whl"])


@pytest.mark.docker
def test_no_cached_wheel_reaches_any_layer_of_the_image(
    docker_client: Any, small_build: BuildResult, small_inputs: BuildInputs, tmp_path: Path
) -> None:
    """Issue 17: the wheel cache is a build input, never a layer: no layer of the saved
    image holds a .whl file, and the history copies none."""
    history = " ".join(str(step.get("CreatedBy", "")) for step in
                       docker_client.images.get(small_build.image_id).history())
    assert ".whl" not in history and "wheels" not in history.replace("auditor-wheels", "")
    saved = tmp_path / "image.tar"
    with saved.open("wb") as out:
        for chunk in docker_client.images.get(small_build.image_id).save(named=False):
            out.write(chunk)
    wheels, installers = [], []
    with tarfile.open(saved) as image:
        for member in image.getmembers():
            if member.name.endswith("layer.tar"):
                layer = image.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer) as files:
                    names = files.getnames()
                    wheels += [n for n in names if n.endswith(".whl")]
                    installers += [n for n in names if Path(n).name in ("uv", "auditor-uv")]
    cached = sorted(p.name for p in (small_inputs.wheel_cache or tmp_path).rglob("*.whl"))
    assert cached[0] == "six-1.17.0-py2.py3-none-any.whl"  # it was there, served
    assert [c[:10] for c in cached[1:]] == ["uv-0.13.8-"]  # and the installer's wheel
    assert installers == [], "the installer ran from /tmp of its RUN and left no layer"
    # the only wheels in any layer are the OS's own (Debian's python3-venv ensurepip)
    assert [w for w in wheels if not w.startswith("./usr/share/python-wheels/")] == []
    assert not any(Path(w).name in cached for w in wheels)


@pytest.mark.docker
def test_a_cache_hit_reads_the_probe_from_the_top_layer_as_a_container_would(
    docker_client: Any, small_build: BuildResult
) -> None:
    """Issue 17 (d): a warm verify's cache hit reads environment.json from the image's top
    layer on disk instead of creating a container; both ways give the same bytes."""
    image = docker_client.images.get(small_build.image_id)
    from_layer = _top_layer_file(image, ENVIRONMENT_JSON)
    assert from_layer is not None, "overlay2 on this host: the fast path must be taken"
    assert json.loads(from_layer) == _read_environment(docker_client, image.id)  # container
    assert _top_layer_file(image, "/opt/auditor/nothing.json") is None


@pytest.mark.docker
def test_no_cache_rebuild_has_an_equal_package_closure(small_build: BuildResult,
                                                       small_inputs: BuildInputs,
                                                       tmp_path: Path) -> None:
    again = build_docker(small_inputs, no_cache=True)
    assert not again.cached
    assert again.packages == small_build.packages  # T21b; image ids may differ


# ---- faults --------------------------------------------------------------------------


@pytest.mark.docker
def test_wrong_hash_fails_naming_the_package_and_tags_nothing(
    docker_client: Any, base_image: tuple[str, str], ca_bundle: Path, tmp_path: Path
) -> None:
    inputs = _inputs(_lock("wrong-hash.requirements.lock"), base_image, ca_bundle=ca_bundle)
    with pytest.raises(ImageBuildFailed) as info:
        build_docker(inputs)
    message = str(info.value)
    assert "hash mismatch for six==1.17.0" in message and "\n" not in message
    assert info.value.exit_code == 3
    assert "DO NOT MATCH THE HASHES" in info.value.log
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_tag(build_inputs_digest(inputs)))


@pytest.mark.docker
def test_missing_base_image_names_the_way_out(docker_client: Any, ca_bundle: Path,
                                              tmp_path: Path) -> None:
    inputs = _inputs(_lock("small.requirements.lock"), ("auditor-no-such-base:none", ""),
                     base_image_id=None, ca_bundle=ca_bundle)
    with pytest.raises(BuildFailed) as info:
        build_docker(inputs)
    assert "audit base-image build" in str(info.value) and "--base-image" in str(info.value)


@pytest.mark.docker
def test_lock_for_another_python_is_refused_before_building(
    docker_client: Any, base_image: tuple[str, str], tmp_path: Path
) -> None:
    inputs = _inputs(_lock("py312.requirements.lock"), base_image)
    with pytest.raises(LockfileError) as info:
        build_docker(inputs)
    assert info.value.exit_code == 2 and "Python 3.12" in str(info.value)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_tag(build_inputs_digest(inputs)))


@pytest.mark.docker
def test_engine_down_is_engine_unavailable(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/dead.sock")
    inputs = _inputs(_lock("small.requirements.lock"), ("auditor-base:bookworm", ""))
    with pytest.raises(EngineUnavailable) as info:
        build_docker(inputs)
    assert info.value.exit_code == 3
    assert "start it (dockerd) or use --backend venv" in str(info.value)
    assert detect().name == "venv"


# ---- torch from the wheelhouse -------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_torch_lock_builds_from_the_wheelhouse(
    docker_client: Any, base_image: tuple[str, str], ca_bundle: Path, torch_wheelhouse: Path,
    tmp_path: Path,
) -> None:
    lock = _lock("torch-cpu.requirements.lock")
    inputs = _inputs(lock, base_image, ca_bundle=ca_bundle, wheelhouse=torch_wheelhouse)
    result = build_docker(inputs)
    size_mb = docker_client.images.get(result.image_id).attrs["Size"] / 1e6
    print(f"torch image: {result.seconds:.1f} s (cached={result.cached}), {size_mb:.0f} MB")
    assert _run(docker_client, result.tag, "python", "-c",
                "import torch; print(torch.__version__)") == "2.13.0+cpu"
    assert without_tooling(lock, result.packages) == lock.versions()
    assert _run(docker_client, result.tag, "id", "-un") == "auditor"
    _assert_no_build_inputs_left(docker_client, result, ca_bundle,
                                 [p.name for p in torch_wheelhouse.iterdir()])


# ---- the venv backend ----------------------------------------------------------------


@pytest.mark.slow
def test_venv_backend_builds_and_reuses_the_environment(ca_bundle: Path, tmp_path: Path
                                                        ) -> None:
    inputs = BuildInputs(run_id="it-venv", lock=_lock("small.requirements.lock"),
                         python_version="3.11.7", base_image="auditor-base:bookworm",
                         ca_bundle=ca_bundle, auditor_version="0.1.0")
    first = build_venv(inputs, venv_root=tmp_path)
    assert (first.backend, first.cached) == ("venv", False)
    assert first.packages["six"] == "1.17.0" and first.isolation_note
    assert (tmp_path / first.inputs_digest[:16] / "auditor-env.json").is_file()
    again = build_venv(inputs, venv_root=tmp_path)
    assert again.cached and again.packages == first.packages


# ---- layers that survive small changes (issue 17) -----------------------------------


def _layers(client: Any, image_id: str) -> list[str]:
    return list(client.images.get(image_id).attrs["RootFS"]["Layers"])


@pytest.mark.docker
@pytest.mark.slow
def test_a_lock_one_small_package_apart_reuses_the_torch_layer_and_fetches_one_wheel(
    docker_client: Any, base_image: tuple[str, str], ca_bundle: Path, torch_wheelhouse: Path,
    tmp_path: Path,
) -> None:
    first_lock = _lock("torch-cpu.requirements.lock")
    six = (LOCKS / "small.requirements.lock").read_text()
    second_lock = parse_requirements_lock(first_lock.text + six, name="derived.lock")
    cache = tmp_path / "wheels"
    first = _inputs(first_lock, base_image, ca_bundle=ca_bundle, wheelhouse=torch_wheelhouse,
                    wheel_cache=cache)
    second = first.model_copy(update={"lock": second_lock})
    for inputs in (first, second):
        _untag(docker_client, inputs)
    built = build_docker(first)
    seen = Recorder()
    derived = build_docker(second, progress=seen)
    try:
        assert seen.counted["fetching"] == ["six-1.17.0-py2.py3-none-any.whl"]
        assert "torch" not in seen.counted.get("installing", []), "torch came from the cache"
        heavy = str(template_context(first, "", cached_sizes(first), "heavy")["heavy_tag"])
        heavy_layers = _layers(docker_client, heavy)
        for result in (built, derived):  # both start from the very same heavy layers
            assert _layers(docker_client, result.image_id)[:len(heavy_layers)] == heavy_layers
        # the heavy image holds torch alone (its dependencies come in the later layer)
        assert _run(docker_client, heavy, "/opt/auditor/venv/bin/python", "-c",
                    "import importlib.metadata as m; print(m.version('torch'))") == "2.13.0+cpu"
        for lock, result in ((first_lock, built), (second_lock, derived)):
            assert without_tooling(lock, result.packages) == lock.versions()
            assert _run(docker_client, result.image_id, "python", "-c",
                        "import torch; print(torch.__version__)") == "2.13.0+cpu"
    finally:
        _untag(docker_client, second)
