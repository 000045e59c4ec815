"""auditor as a normal package: a wheel built by ``pip wheel .`` and installed (not
editable) runs the commands that need its templates (issue 10: templates were found only
beside a source checkout). CI (.ci/run) also runs the demo's record → verify → gate with
the wheel in a clean venv with every dependency installed from the index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, GIT_ENV, REPO, git

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "demo-out", ".auditor", "build", "dist",
                                     "*.egg-info", "__pycache__", ".*_cache", "bench")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the built wheel; its dependencies come from this venv's
    site-packages through a .pth line (the editable install's finder is not loaded)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=COPY_IGNORE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, text=True)
    wheel = next((root / "dist").glob("auditor-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"auditor/templates/Dockerfile.j2", "auditor/templates/report.html.j2",
            "auditor/templates/gate.toml", "auditor/templates/ci/github.yml.j2",
            "auditor/templates/ci/gitlab.yml.j2", "auditor/templates/ui/runs.html.j2"
            } <= set(names), names
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    return venv


def _audit(venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "audit"), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV, **(env or {})}, timeout=300,
                          check=False)


@pytest.mark.slow
def test_the_installed_wheel_finds_its_templates(installed: Path, make_repo, tmp_path: Path
                                                 ) -> None:  # type: ignore[no-untyped-def]
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import auditor.env.build as b; print(b.TEMPLATE_PATH)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(installed)), where  # the wheel's copy, not the checkout's
    repo = make_repo({"requirements.lock":
                      (FIXTURES / "locks" / "pip" / "small.requirements.lock").read_text(),
                      "t.py": "print('{\"step\": 0, \"loss\": 1.0}')\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_BASE_IMAGE": "python:3.11-slim"}
    made = _audit(installed, "--json", "record", "--", sys.executable, "t.py", cwd=repo, env=env)
    assert made.returncode == 0, made.stderr
    run_id = json.loads(made.stdout.strip().splitlines()[-1])["id"]
    printed = _audit(installed, "build", run_id, "--print", "--backend", "venv", cwd=repo,
                     env=env)
    assert printed.returncode == 0, printed.stderr
    assert "FROM python:3.11-slim AS base" in printed.stdout
    ci = _audit(installed, "ci", "init", "github", cwd=repo)
    assert ci.returncode == 0, ci.stderr
    workflow = (repo / ".github" / "workflows" / "audit.yml").read_text()
    assert "Written by `audit ci init github`" in workflow
    html = tmp_path / "r.html"
    report = _audit(installed, "report", "--from-json",
                    str(FIXTURES / "verify" / "not_reproduced.json"), "--html", str(html),
                    cwd=repo)
    assert report.returncode == 0, report.stderr
    assert "<html" in html.read_text()
    git(repo, "status")
