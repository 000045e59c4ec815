"""verify() composes the stages with one backend object, chosen once.

The build half is a fake (a bare virtualenv made here, test only, so no package index is
needed); the rerun goes through the real venv sandbox (``VenvBackend.execute``), and its
sandbox notes are read back from the STORED rerun record and from the certificate file,
not from the in-memory plan.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor import verify as verify_module
from auditor.core.policy import load_policy
from auditor.env.spec import BuildInputs, BuildResult, Progress
from auditor.env.venv import ISOLATION_VENV, host_python
from auditor.rerun.backends import VenvBackend
from auditor.store import SqlStore
from auditor.verify import VerifyOptions, verify

LOCK = Path(__file__).resolve().parents[2] / "fixtures/locks/pip/small.requirements.lock"
SCRIPT = "import json\nprint(json.dumps({'loss': 0.5}))\n"


class PrebuiltVenv(VenvBackend):
    """FAKE build (test only): hands out a bare venv instead of installing the lock."""

    def __init__(self, env_dir: Path) -> None:
        self.env_dir = env_dir
        self.builds: list[BuildInputs] = []

    def build(self, inputs: BuildInputs, *, no_cache: bool, progress: Progress,
              venv_root: Path) -> BuildResult:
        self.builds.append(inputs)
        return BuildResult(backend="venv", tag=str(self.env_dir), image_id="venv:fake",
                           cached=True, log="", python_version=inputs.python_version,
                           packages={}, differences=[], isolation_note=ISOLATION_VENV,
                           inputs_digest="0" * 64, seconds=0.0)


@pytest.fixture
def bare_venv() -> Iterator[Path]:
    # outside pytest's 0700 tmp folder: the rerun user (uid 1000, as root) must read it
    folder = Path(tempfile.mkdtemp(prefix="auditor-fake-venv-"))
    os.chmod(folder, 0o755)
    python = host_python(f"{sys.version_info.major}.{sys.version_info.minor}")
    subprocess.run([python, "-m", "venv", "--without-pip", str(folder / "env")], check=True)
    yield folder / "env"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("bwrap", ["bwrap", "unisolated"])
def test_verify_chooses_once_and_stores_the_sandbox_notes(
    store: SqlStore, make_repo: Callable[..., Path], bare_venv: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, bwrap: str,
) -> None:
    if bwrap == "unisolated":
        monkeypatch.setenv("AUDITOR_BWRAP", "off")  # as where bubblewrap is not installed
    repo = make_repo({"t.py": SCRIPT, "requirements.lock": LOCK.read_text()})
    recorded = subprocess.run(  # the CLI: record_command in-process leaves its pipes open
        [sys.executable, "-m", "auditor.cli.main", "--json", "record", "--", sys.executable,
         "t.py"], cwd=repo, env={**os.environ, "AUDITOR_STORE": str(tmp_path / "store")},
        capture_output=True, text=True, check=True)
    original = store.get_record(json.loads(recorded.stdout.strip().splitlines()[-1])["id"])
    backend = PrebuiltVenv(bare_venv)
    chosen: list[str | None] = []

    def choose(name: str | None, progress: Any = None) -> PrebuiltVenv:
        chosen.append(name)
        return backend

    monkeypatch.setattr(verify_module, "choose", choose)
    certificate = tmp_path / "cert.json"
    result = verify(store, original, load_policy(None),
                    VerifyOptions(backend="venv", certificate=certificate))

    assert chosen == ["venv"] and len(backend.builds) == 1  # chosen once, built once
    assert backend.builds[0].run_id == original.identity.id
    assert set(result.seconds) == {"build", "rerun", "compare", "total"}
    stored = store.get_record(result.rerun_run)
    assert stored.identity.reproduces == original.identity.id
    sandbox = stored.not_captured["sandbox"]
    if bwrap == "bwrap":
        expected = "venv backend: bubblewrap: only its tree"
    elif os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        expected = "venv backend: network removed with unshare --net"
    else:
        expected = "venv backend: network not removed"
    assert expected in sandbox, sandbox
    statement = json.loads(base64.b64decode(json.loads(certificate.read_text())["payload"]))
    isolation = statement["predicate"]["isolation_notes"]
    assert any(n.startswith(expected) for n in isolation), isolation
    # the level the gate reads: a venv in bubblewrap, or unisolated (no gate accepts it)
    assert statement["predicate"]["isolation"] == ("venv" if bwrap == "bwrap" else "none")
    assert ISOLATION_VENV in isolation  # the build's note travels too
    assert statement["predicate"]["rerun_run"] == stored.identity.id
