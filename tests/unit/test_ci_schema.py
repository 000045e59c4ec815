"""Every file `audit ci init` writes validates against the published schema of its CI
(``check-jsonschema --builtin-schema vendor.github-workflows`` / ``vendor.gitlab-ci``, the
real tool and its vendored SchemaStore schemas), for the default and for other settings;
a broken file is refused by the same check, so the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.release.ci import CiSettings, render_workflow

SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}
SETTINGS = [CiSettings(), CiSettings(schedule="0 2 * * MON-FRI", shards=1, models="out/*.pt",
                                     branches=("main", "release/*"), runner_tag="gpu-a100",
                                     pip_spec="auditor[team] @ https://h/auditor-0.1.0-py3"
                                              "-none-any.whl")]


def check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert found, "check-jsonschema is in the test extra (pip install -e '.[test]')"
    return found


def _check(provider: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([check_jsonschema(), "--builtin-schema", SCHEMAS[provider],
                           str(path)], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("provider", ["github", "gitlab"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["default", "custom"])
def test_generated_file_validates(provider: str, settings: CiSettings, tmp_path: Path) -> None:
    path = tmp_path / "ci.yml"
    path.write_text(render_workflow(provider, settings))
    res = _check(provider, path)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("provider", "old", "new"), [
    ("github", "permissions:\n  contents: read", "permissions:\n  contents: maybe"),
    ("github", "needs: verify", "needs: 7"),
    ("gitlab", "parallel: 4", "parallel: 0"),
    ("gitlab", "when: always\n    expose_as", "when: sometimes\n    expose_as"),
])
def test_the_schema_check_refuses_a_broken_file(provider: str, old: str, new: str,
                                                tmp_path: Path) -> None:
    text = render_workflow(provider)
    assert old in text
    path = tmp_path / "ci.yml"
    path.write_text(text.replace(old, new, 1))
    assert _check(provider, path).returncode != 0
