"""The files `audit ci init` writes, run as generated: every shell step of the GitHub and
GitLab workflows is taken out of the YAML (``release.ci.shell_steps``) and executed by
bash, job by job, with the secrets as environment variables, in a fresh venv holding the
built wheel of auditor (``--auditor 'auditor[team] @ file://…whl'``), against a real
store and the real docker engine. So a template cannot drift from the CLI.

What stands in for the CI service: ``${{ secrets.* }}``, ``${{ github.run_id }}``,
``${{ matrix.shard }}`` are substituted as Actions would; matrix jobs and GitLab's
``parallel`` jobs run one after another (``CI_NODE_INDEX``/``CI_NODE_TOTAL`` set);
``uses:`` steps are the runner's: the checkout is the project folder, setup-python is the
fresh venv first on ``PATH``, artifacts stay in the folder. The fresh venv takes the
wheel's dependencies from this venv (``PYTHONPATH``, ``PIP_NO_INDEX``: no network), and
the runner's docker settings (base image, wheelhouse, CA bundle) come from its environment
as on a self-hosted runner. Also: two batches started at once on the same runs certify
each run once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from auditor.release.ci import CiSettings, ShellStep, render_workflow, shell_steps
from auditor.store import open_store
from auditor.store.batches import shard_of
from tests.conftest import audit
from tests.e2e.conftest import training_project
from tests.e2e.test_packaging import COPY_IGNORE, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold image build
PY = sys.executable
MODELS = "outputs/*.safetensors"
T = TypeVar("T")
_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The built wheel (once) and a fresh venv standing in for setup-python (each job
    below gets a venv of its own, as each matrix job gets a machine of its own)."""
    root = tmp_path_factory.mktemp("ci-runner")
    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=COPY_IGNORE)
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("auditor-*.whl"))
    subprocess.run([PY, "-m", "venv", str(root / "venv")], check=True)
    return {"wheel": wheel, "bin": root / "venv" / "bin", "tmp": root}


def _project(parent: Path, runs: int) -> tuple[Path, dict[str, str], list[str]]:
    """The fixture training, recorded ``runs`` times (seeded) into a fresh store."""
    root, env = training_project(parent, gitignore="outputs/\n.auditor/\ndata/\n"
                                 ".audit-venv/\naudit-reports/\nkeys/\n")
    ids = []
    for seed in range(runs):
        res = audit("--json", "record", "--name", f"mlp-{seed}", "--input", "data/blobs.csv",
                    "--", PY, "train_mlp.py", "--epochs", "2", "--seed", "7", cwd=root,
                    env=env)
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout.strip().splitlines()[-1])["id"])
    keys = audit("keys", "generate", "--dir", str(parent / "keys"), cwd=root, env=env)
    assert keys.returncode == 0, keys.stderr
    return root, env, ids


def _job_venv(runner: dict[str, Any], job: str) -> Path:
    """A fresh venv for one job (made once per job name): jobs that run at once never
    install into one venv, as on CI where each matrix job has a runner of its own."""
    folder = runner["tmp"] / f"venv-{job}"
    if not folder.exists():
        subprocess.run([PY, "-m", "venv", str(folder)], check=True)
    return folder / "bin"


def _runner_env(runner: dict[str, Any], rerun_env: dict[str, str],
                job: str = "") -> dict[str, str]:
    venv = _job_venv(runner, job) if job else runner["bin"]
    return {**os.environ, **rerun_env,
            "PATH": f"{venv}:{os.environ['PATH']}",
            "PYTHONPATH": sysconfig.get_paths()["purelib"],  # the wheel's dependencies
            "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "NO_COLOR": "1"}


def _run(step: ShellStep, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step.shell], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=1200, check=False)


def _parallel(call: Callable[[str], T], args: list[str]) -> list[T]:
    """``call`` for each argument at once (a matrix's jobs), results in order."""
    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


def _github_env(step: ShellStep, context: dict[str, str]) -> dict[str, str]:
    """The step's environment with ``${{ … }}`` evaluated as Actions would."""
    def value(match: re.Match[str]) -> str:
        assert match.group(1) in context, f"unknown expression {match.group(0)}"
        return context[match.group(1)]

    return {k: _EXPR.sub(value, v) for k, v in step.env.items()}


def test_github_workflow_runs_as_generated(runner: dict[str, Any],
                                           torch_rerun_env: dict[str, str],
                                           tmp_path: Path) -> None:
    root, env, ids = _project(tmp_path, runs=2)
    text = render_workflow("github", CiSettings(
        shards=2, models=MODELS, pip_spec=f"auditor[team] @ file://{runner['wheel']}"))
    steps = shell_steps("github", text)
    assert [s.job for s in steps].count("verify") == 3  # install, key, verify
    secrets = {"AUDITOR_STORE": env["AUDITOR_STORE"], "AUDITOR_BLOBS": "",
               "AUDITOR_AWS_ACCESS_KEY_ID": "", "AUDITOR_AWS_SECRET_ACCESS_KEY": "",
               "AUDITOR_S3_ENDPOINT": "",
               "AUDITOR_SIGNING_KEY": (tmp_path / "keys" / "auditor.key").read_text(),
               "AUDITOR_PUBLIC_KEY": (tmp_path / "keys" / "auditor.pub").read_text()}
    summary = tmp_path / "step-summary.md"
    base = {**_runner_env(runner, torch_rerun_env), "GITHUB_STEP_SUMMARY": str(summary)}

    def job(name: str, run_id: str, shard: str = "") -> list[subprocess.CompletedProcess[str]]:
        context = {f"secrets.{k}": v for k, v in secrets.items()} | {
            "github.run_id": run_id, "github.run_attempt": "1", "matrix.shard": shard}
        temp = tmp_path / f"runner-temp-{name}-{run_id}-{shard}"
        temp.mkdir()
        machine = {**base, **_runner_env(runner, torch_rerun_env, f"gh-{name}-{shard}")}
        done = []
        for step in (s for s in steps if s.job == name):
            done.append(_run(step, root, {**machine, **_github_env(step, context),
                                          "RUNNER_TEMP": str(temp)}))
        return done

    gate = job("gate", "100")  # before any verification: no certificate, no release
    assert gate[-1].returncode == 1, gate[-1].stdout + gate[-1].stderr
    assert "gate failed" in gate[-1].stderr
    shards = _parallel(lambda shard: job("verify", "4242", shard), ["1", "2"])  # a matrix
    for out in shards:
        assert all(r.returncode == 0 for r in out), [r.stderr[-2000:] for r in out]
    agg = job("summary", "4242")
    assert all(r.returncode == 0 for r in agg), [r.stderr[-2000:] for r in agg]
    suites = ET.parse(root / "audit-reports" / "junit.xml").getroot()
    assert suites.get("failures") == "0" and suites.get("errors") == "0"
    assert {s.get("name", "").split("(")[-1].rstrip(")") for s in suites} == set(ids)
    shown = summary.read_text()
    assert "auditor batch gh-4242-1" in shown and "reproduced (bitwise)" in shown
    certs = json.loads(audit("--json", "batch", "show", "gh-4242-1", cwd=root, env=env).stdout)
    assert {i["run_id"]: i["state"] for i in certs["items"]} == dict.fromkeys(ids, "done")
    assert all(i["certificate_sha256"] and i["node"] and i["gpu"] == "cpu"
               for i in certs["items"])
    gate = job("gate", "101")  # a release now passes
    assert gate[-1].returncode == 0, gate[-1].stdout + gate[-1].stderr
    # the next night: nothing lacks a certificate, nothing is verified again
    busy = str(shard_of(ids[0], 2))
    again = job("verify", "4243", busy)
    assert all(r.returncode == 0 for r in again)
    assert "0 verified" in again[2].stderr
    assert f"{ids[0]}: skipped: verified by an earlier batch" in again[2].stderr


def test_gitlab_pipeline_runs_as_generated(runner: dict[str, Any],
                                           torch_rerun_env: dict[str, str],
                                           tmp_path: Path) -> None:
    root, env, ids = _project(tmp_path, runs=1)
    text = render_workflow("gitlab", CiSettings(
        shards=2, models=MODELS, pip_spec=f"auditor[team] @ file://{runner['wheel']}"))
    steps = {s.job: s for s in shell_steps("gitlab", text)}
    assert set(steps) == {"audit-verify", "audit-report", "audit-gate"}
    variables = {"AUDITOR_STORE": env["AUDITOR_STORE"],  # CI/CD variables; keys are Files
                 "AUDITOR_SIGNING_KEY": str(tmp_path / "keys" / "auditor.key"),
                 "AUDITOR_PUBLIC_KEY": str(tmp_path / "keys" / "auditor.pub"),
                 "CI_PIPELINE_ID": "77", "CI_PROJECT_DIR": str(root)}

    def job(name: str, **extra: str) -> subprocess.CompletedProcess[str]:
        known = {**variables, **extra}
        own = {k: re.sub(r"\$(\w+)", lambda m: known.get(m.group(1), ""), v)
               for k, v in steps[name].env.items()}  # GitLab expands variables in variables
        machine = _runner_env(runner, torch_rerun_env,
                              f"gl-{name}-{extra.get('CI_NODE_INDEX', '')}")
        return _run(steps[name], root, {**machine, **known, **own})

    assert job("audit-gate").returncode == 1  # no certificate yet
    # a job with a broken shard spec fails in one line, exit 2 (after its install)
    broken = job("audit-verify", CI_NODE_INDEX="3", CI_NODE_TOTAL="2")
    assert broken.returncode == 2 and "error: invalid shard '3/2'" in broken.stderr
    for res in _parallel(lambda index: job("audit-verify", CI_NODE_INDEX=index,
                                           CI_NODE_TOTAL="2"), ["1", "2"]):  # `parallel: 2`
        assert res.returncode == 0, res.stderr[-3000:]
    report = job("audit-report")
    assert report.returncode == 0, report.stderr[-3000:]
    suites = ET.parse(root / "audit-reports" / "junit.xml").getroot()
    assert [s.get("name", "").split("(")[-1].rstrip(")") for s in suites] == ids
    gate = job("audit-gate")
    assert gate.returncode == 0, gate.stdout + gate.stderr


@pytest.fixture
def two_runs(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], list[str]]]:
    yield _project(tmp_path, runs=1)


def test_two_batches_racing_certify_each_run_once(
        two_runs: tuple[Path, dict[str, str], list[str]],
        torch_rerun_env: dict[str, str]) -> None:
    root, env, ids = two_runs
    full = {**env, **torch_rerun_env}
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def start(batch: str) -> None:
        results[batch] = audit("verify", "--all", "--batch", batch, cwd=root, env=full,
                               timeout=1200)

    threads = [threading.Thread(target=start, args=(b,)) for b in ("race-a", "race-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results.values()), [
        r.stderr[-2000:] for r in results.values()]
    store = open_store(env["AUDITOR_STORE"])
    try:
        for run_id in ids:  # verified once, by one batch: one rerun, one certificate
            assert len(store.certificates(run_id=run_id)) == 1
            assert len(store.run_ids_reproducing(run_id)) == 1
    finally:
        store.close()
    items = [i for b in ("race-a", "race-b") for i in json.loads(audit(
        "--json", "batch", "show", b, cwd=root, env=env).stdout)["items"]]
    assert sorted(i["run_id"] for i in items if i["state"] == "done") == sorted(ids)
    assert all(i["state"] == "skipped" for i in items if i["state"] != "done")
