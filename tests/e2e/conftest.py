"""The docker fixtures of the integration tests, shared with the end-to-end tests, and the
training project the `audit verify` end-to-end files record in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import add_training_files, git
from tests.integration.conftest import (  # noqa: F401 - fixtures are found by name
    base_image,
    ca_bundle,
    docker_client,
    skip_or_fail,
    torch_wheelhouse,
)


@pytest.fixture(scope="session")
def torch_rerun_env(
    base_image: tuple[str, str],  # noqa: F811 - the fixture imported above
    ca_bundle: Path,  # noqa: F811
    torch_wheelhouse: Path,  # noqa: F811
) -> dict[str, str]:
    """What `audit verify` needs to rebuild a torch training in docker on this machine."""
    return {
        "AUDITOR_BASE_IMAGE": base_image[0],
        "AUDITOR_WHEELHOUSE": str(torch_wheelhouse),
        "AUDITOR_CA_BUNDLE": str(ca_bundle),
    }


def training_project(parent: Path, gitignore: str | None) -> tuple[Path, dict[str, str]]:
    """A git repository `parent/proj` holding the bundled torch fixture, committed (with this
    .gitignore, or none), and the AUDITOR_STORE of a fresh store beside it."""
    root = parent / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    add_training_files(root)
    if gitignore is not None:
        (root / ".gitignore").write_text(gitignore)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    return root, {"AUDITOR_STORE": str(parent / "store")}


def six_venv(folder: Path) -> Path:
    """A virtualenv at folder (from `python3`) with six==1.17.0 installed; its python."""
    subprocess.run(["python3", "-m", "venv", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "pip"), "install", "-q", "six==1.17.0"], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return folder / "bin" / "python"
