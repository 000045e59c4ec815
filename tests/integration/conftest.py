"""Docker fixtures for integration tests.

- ``docker_client``: a connected ``docker.DockerClient``. When no engine answers the test
  is skipped, except under CI (``CI`` set), where it fails: a skip in CI must fail the run.
- ``base_image``: ``(tag, image id)`` of the debootstrap base ``auditor-base:bookworm``,
  built once (about a minute) or reused; ``.ci/docker-setup.sh`` builds it ahead of time.
- ``torch_wheelhouse``: the folder holding the torch CPU wheel (``$PIP_FIND_LINKS``).
- ``ca_bundle``: the TLS CA bundle pip needs on this host (``$PIP_CERT``, else the system
  bundle), an explicit build input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.core.errors import AuditorError, EngineUnavailable
from auditor.env.baseimage import build_base_image
from auditor.env.engine import docker_client as connect

BASE_TAG = "auditor-base:bookworm"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs a docker engine (CI starts one; a skip in CI fails the run)")
    config.addinivalue_line(
        "markers", "slow: end-to-end tests that take more than a few seconds (CI runs them)")


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail under CI, where nothing may pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        client = connect()
    except EngineUnavailable as exc:
        skip_or_fail(str(exc))
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> tuple[str, str]:
    try:
        return build_base_image("bookworm", BASE_TAG)
    except AuditorError as exc:
        skip_or_fail(f"cannot build {BASE_TAG}: {exc}")
        raise


@pytest.fixture(scope="session")
def ca_bundle() -> Path:
    path = Path(os.environ.get("PIP_CERT") or SYSTEM_CA_BUNDLE)
    if not path.is_file():
        skip_or_fail(f"no CA bundle at {path} (set PIP_CERT)")
    return path


@pytest.fixture(scope="session")
def torch_wheelhouse() -> Path:
    folder = Path(os.environ.get("PIP_FIND_LINKS") or "/opt/wheels")
    if not (folder / TORCH_WHEEL).is_file():
        skip_or_fail(f"no {TORCH_WHEEL} in {folder} (set PIP_FIND_LINKS)")
    return folder
