"""Dockerfile rendering, inputs digest, base image defaults and failure logs (no engine).

Golden files live in fixtures/golden/; regenerate them with AUDITOR_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from auditor.core.errors import BuildFailed, InputError
from auditor.core.lockfile import Lock, parse_conda_lock, parse_requirements_lock
from auditor.env import build
from auditor.env.baseimage import CUDA_RUNTIME, PYTHON_SLIM
from auditor.env.build import (
    build_inputs_digest,
    default_base_image,
    image_tag,
    render_dockerfile,
)
from auditor.env.spec import BuildInputs, ImageBuildFailed, differences, install_failure

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "fixtures" / "golden"
LOCK = ROOT / "fixtures" / "locks" / "pip" / "small.requirements.lock"
CONDA = ROOT / "fixtures" / "locks" / "conda" / "mlops-kickoff.conda-lock.yml"
TORCH_LOCK = ROOT / "fixtures" / "locks" / "pip" / "torch-cpu.requirements.lock"
CA_TEXT = "-----BEGIN CERTIFICATE-----\nfixture\n-----END CERTIFICATE-----\n"


@pytest.fixture
def lock() -> Lock:
    return parse_requirements_lock(LOCK.read_text(), name=LOCK.name)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    (folder / "auditor_canary-1.0-py3-none-any.whl").write_bytes(b"canary wheel")
    return folder


@pytest.fixture
def ca_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "proxy-ca.crt"
    path.write_text(CA_TEXT)
    return path


def _inputs(lock: Lock, **changes: object) -> BuildInputs:
    fields: dict[str, object] = {
        "run_id": "01J9ZC6Q5R0000000000000000", "lock": lock, "python_version": "3.11.7",
        "base_image": default_base_image("3.11.7", None, None), "auditor_version": "0.1.0"}
    fields.update(changes)
    return BuildInputs(**fields)  # type: ignore[arg-type]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("AUDITOR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; AUDITOR_UPDATE_GOLDEN=1 regenerates it"


# ---- golden files --------------------------------------------------------------------


def test_cpu_golden(lock: Lock) -> None:
    text = render_dockerfile(_inputs(lock), sizes={})
    _golden("cpu.Dockerfile", text)
    assert "python:3.11.7-slim-bookworm@sha256:8f64a677" in text
    assert "ca-bundle" not in text and "wheelhouse" not in text
    assert "--no-index --find-links http://auditor-wheels:8765/" in text
    assert "COPY locks/rest.lock /opt/auditor/locks/rest.lock" in text


def test_a_hashed_lock_never_takes_the_ca_bundle_or_wheelhouse_into_the_build(
        lock: Lock, wheelhouse: Path, ca_bundle: Path) -> None:
    """Both are inputs of the host-side fetch into the wheel cache only (issue 17)."""
    plain = render_dockerfile(_inputs(lock), sizes={})
    assert render_dockerfile(_inputs(lock, wheelhouse=wheelhouse, ca_bundle=ca_bundle),
                             sizes={}) == plain


def test_unhashed_lock_with_wheelhouse_and_ca_bundle_golden(wheelhouse: Path,
                                                            ca_bundle: Path) -> None:
    lock = parse_requirements_lock("six==1.17.0\n", allow_unhashed=True)
    text = render_dockerfile(_inputs(lock, wheelhouse=wheelhouse, ca_bundle=ca_bundle))
    _golden("cpu-wheelhouse-ca.Dockerfile", text)
    install, final = text.split("FROM base AS install")[1].split("\nFROM base\n")
    assert "--cert /tmp/auditor-build/ca-bundle.crt" in install
    assert "--find-links /tmp/auditor-build/wheelhouse" in install
    assert "ca-bundle" not in final and "wheelhouse" not in final
    assert "COPY --from=install /opt/auditor /opt/auditor" in final


def test_heavy_packages_get_their_own_earlier_layers() -> None:
    lock = parse_requirements_lock(TORCH_LOCK.read_text(), name=TORCH_LOCK.name)
    layers = build.layer_files(lock, {"sympy": 60 << 20, "networkx": 2 << 20})
    assert list(layers) == ["heavy-sympy.lock", "heavy-torch.lock", "rest.lock"]
    installed = [p for packages in layers.values() for p in packages]
    assert sorted(p.name for p in installed) == sorted(p.name for p in lock.packages)
    text = render_dockerfile(_inputs(lock), sizes={})
    torch_at = text.index("COPY locks/heavy-torch.lock")
    assert torch_at < text.index("COPY requirements.lock") < text.index("COPY locks/rest.lock")
    heavy, env = text.split("# ==== auditor-env:")
    assert "\nFROM auditor-env-heavy:" in env and "heavy-torch" not in env
    assert "COPY locks/rest.lock" not in heavy and "USER auditor" not in heavy
    assert "heavy-sympy" not in text  # by size only: sympy's real wheel is 6 MB


def test_gpu_cuda121_cudnn8_golden(lock: Lock) -> None:
    base = default_base_image("3.11.7", "12.1", "8.9.2")
    text = render_dockerfile(_inputs(lock, base_image=base, cuda="12.1", cudnn="8.9.2"))
    _golden("gpu-cuda12.1-cudnn8.Dockerfile", text)
    assert "FROM nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04@sha256:f4d8e126" in text
    assert "apt-get install --yes --no-install-recommends python3.11 python3.11-venv" in text
    assert "RUN python3.11 -m venv /opt/auditor/venv" in text


def test_conda_golden() -> None:
    lock = parse_conda_lock(CONDA)
    base = default_base_image("3.11.15", None, None, kind="conda")
    text = render_dockerfile(_inputs(lock, base_image=base))
    _golden("conda.Dockerfile", text)
    assert "micromamba create --yes --prefix /opt/auditor/env" in text
    assert "FROM mambaorg/micromamba:1.5.8@sha256:475730da" in text
    assert "USER root" in text and "CONDA_PREFIX=/opt/auditor/env PATH=/opt/auditor/env/bin" in text


def test_every_render_carries_the_labels_and_a_non_root_user(lock: Lock) -> None:
    inputs = _inputs(lock)
    text = render_dockerfile(inputs)
    digest = build_inputs_digest(inputs)
    for label in (f'org.auditor.run-id="{inputs.run_id}"',
                  f'org.auditor.lock-sha256="{lock.sha256}"', 'org.auditor.version="0.1.0"',
                  f'org.auditor.inputs-digest="{digest}"'):
        assert label in text
    assert text.rstrip().endswith("USER auditor\nWORKDIR /home/auditor")
    assert "useradd --uid 1000" in text
    assert "pip install" in text and "--require-hashes" in text and "--no-deps" in text
    assert "--only-binary :all:" in text


# ---- determinism and the digest ------------------------------------------------------


def test_rendering_is_deterministic(lock: Lock, wheelhouse: Path, ca_bundle: Path) -> None:
    inputs = _inputs(lock, wheelhouse=wheelhouse, ca_bundle=ca_bundle)
    assert render_dockerfile(inputs) == render_dockerfile(inputs.model_copy())
    assert build_inputs_digest(inputs) == build_inputs_digest(inputs.model_copy())


def test_digest_follows_content_not_run_id(lock: Lock, wheelhouse: Path,
                                           ca_bundle: Path) -> None:
    inputs = _inputs(lock, wheelhouse=wheelhouse, ca_bundle=ca_bundle)
    digest = build_inputs_digest(inputs)
    assert build_inputs_digest(inputs.model_copy(update={"run_id": "other"})) == digest
    other_lock = parse_requirements_lock(LOCK.read_text() + "# changed\n")
    assert build_inputs_digest(inputs.model_copy(update={"lock": other_lock})) != digest
    (wheelhouse / "another-1.0-py3-none-any.whl").write_bytes(b"x")
    ca_bundle.write_text(CA_TEXT + "more\n")
    # a hashed lock pins every installed byte: the wheelhouse and CA only fetch
    assert build_inputs_digest(inputs) == digest
    unhashed = _inputs(parse_requirements_lock("six==1.17.0\n", allow_unhashed=True),
                       wheelhouse=wheelhouse)
    before = build_inputs_digest(unhashed)
    (wheelhouse / "yet-another-1.0-py3-none-any.whl").write_bytes(b"y")
    assert build_inputs_digest(unhashed) != before
    assert image_tag(build_inputs_digest(inputs)).startswith("auditor-env:")


def test_label_values_are_quoted_for_dockerfiles(lock: Lock) -> None:
    text = render_dockerfile(_inputs(lock, run_id='run "$HOME"\\x'))
    assert r'org.auditor.run-id="run \"\$HOME\"\\x"' in text
    with pytest.raises(InputError):
        render_dockerfile(_inputs(lock, run_id="two\nlines"))


def test_template_uses_only_if_for_and_expressions() -> None:
    template = build.TEMPLATE_PATH.read_text()
    tags = set(re.findall(r"{%-?\s*(\w+)", template))
    assert tags <= {"if", "else", "endif", "for", "endfor"}
    assert not re.search(r"{{[^}]*\|", template), "no filters: Python computes every value"


def test_missing_template_values_fail_loudly(lock: Lock, monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    context = build.template_context(_inputs(lock), "0" * 64)
    monkeypatch.setattr(build, "template_context", lambda *a: {k: v for k, v in context.items()
                                                               if k != "env_prefix"})
    with pytest.raises(jinja2.UndefinedError):
        render_dockerfile(_inputs(lock))


# ---- base images (T21a) --------------------------------------------------------------


def test_default_cpu_base_is_the_pinned_slim_image() -> None:
    assert default_base_image("3.11.7", None, None) == (
        f"python:3.11.7-slim-bookworm@{PYTHON_SLIM['3.11.7']}")
    assert default_base_image("3.11.8", None, None).startswith("python:3.11.10-slim-bookworm@")
    assert default_base_image("3.13.1", None, None) == "python:3.13-slim-bookworm"


def test_default_gpu_base_matches_cuda_and_cudnn() -> None:
    assert default_base_image("3.11.7", "12.1", "8.9.2") == CUDA_RUNTIME[("12.1", "8")]
    assert default_base_image("3.10.12", "12.2.2", "8") == CUDA_RUNTIME[("12.2", "8")]
    assert default_base_image("3.11.7", "12.4", "9.1") == (
        "nvidia/cuda:12.4.0-cudnn-runtime-ubuntu22.04")


def test_unpinned_base_warns_in_the_dockerfile_and_differences(lock: Lock) -> None:
    inputs = _inputs(lock, base_image="python:3.12-slim")
    assert "# WARNING: base image python:3.12-slim is not pinned by digest" in (
        render_dockerfile(inputs))
    assert "base image python:3.12-slim is not pinned by digest" in differences(
        inputs, "3.11.7", {"six": "1.17.0"})


def test_unpinned_base_is_refused_with_strict(lock: Lock) -> None:
    with pytest.raises(InputError) as info:
        render_dockerfile(_inputs(lock, base_image="python:3.12-slim", strict=True))
    assert "--strict" in str(info.value) and info.value.exit_code == 2


def test_local_base_pinned_by_recorded_id_is_accepted_with_strict(lock: Lock) -> None:
    inputs = _inputs(lock, base_image="auditor-base:bookworm",
                     base_image_id="sha256:" + "7" * 64, strict=True)
    text = render_dockerfile(inputs)
    assert "WARNING" not in text and f"# Base image id when rendered: sha256:{'7' * 64}" in text


# ---- results and errors --------------------------------------------------------------


def test_differences_name_the_python_patch_and_package_drift(lock: Lock) -> None:
    found = differences(_inputs(lock), "3.11.2", {"six": "1.16.0", "pip": "23.0.1",
                                                  "setuptools": "66.1.1"})
    assert found == ["python 3.11.7 recorded, 3.11.2 in image",
                     "six: locked 1.17.0, installed 1.16.0"]


def test_hash_mismatch_log_maps_to_a_build_failure_naming_the_package() -> None:
    log = ["Collecting six==1.17.0",
           "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If ...",
           "    six==1.17.0 from https://files.example/six-1.17.0-py2.py3-none-any.whl (from -r"
           " /opt/auditor/requirements.lock (line 7)):",
           "        Expected sha256 4721f391ed90541e", "             Got        4721f391ed90541f"]
    error = install_failure(log, "image build")
    assert isinstance(error, ImageBuildFailed) and isinstance(error, BuildFailed)
    assert "hash mismatch for six==1.17.0" in str(error) and "\n" not in str(error)
    assert error.exit_code == 3 and "Got" in error.log


def test_missing_package_log_maps_to_a_wheelhouse_hint() -> None:
    error = install_failure(["ERROR: No matching distribution found for torch==2.13.0+cpu"],
                           "image build")
    assert "no wheel for torch==2.13.0+cpu" in str(error) and "--wheelhouse" in str(error)


# ---- the cache hit's probe, read from the image's top layer (issue 17 (d)) -----------


class _Image:
    """An image as the docker SDK describes it: only its ``attrs`` are read."""

    def __init__(self, upper: Path, driver: str = "overlay2") -> None:
        self.attrs = {"GraphDriver": {"Name": driver, "Data": {"UpperDir": str(upper)}}}


def test_the_top_layer_probe_is_read_without_following_any_link(tmp_path: Path) -> None:
    upper = tmp_path / "diff"
    (upper / "opt" / "auditor").mkdir(parents=True)
    probe = upper / "opt" / "auditor" / "environment.json"
    probe.write_text('{"python": "3.11.2"}')
    assert build._top_layer_file(_Image(upper), build.ENVIRONMENT_JSON) == probe.read_bytes()
    assert build._top_layer_file(_Image(upper, "vfs"), build.ENVIRONMENT_JSON) is None
    secret = tmp_path / "host-secret"
    secret.write_text("not for the build")
    probe.unlink()
    probe.symlink_to(secret)  # a layer whose probe is a link: never followed
    assert build._top_layer_file(_Image(upper), build.ENVIRONMENT_JSON) is None
    (upper / "opt" / "auditor").rename(tmp_path / "elsewhere")
    (upper / "opt" / "auditor").symlink_to(tmp_path / "elsewhere")  # a linked folder too
    assert build._top_layer_file(_Image(upper), build.ENVIRONMENT_JSON) is None
