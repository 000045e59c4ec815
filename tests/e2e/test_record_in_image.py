"""`audit record --in-image IMAGE` end to end: a real docker engine, the real torch image
built from the fixture's lockfile (`audit build`), real processes and signals.

The run recorded inside its pinned image verifies bit for bit with no environment change
(read from the written certificate); a script that tees its log into the repository and
draws progress bars still records; a secret passed in the environment reaches the command
but never a command line or the record; a missing image or engine is one line and an exit
code with nothing stored; Ctrl-C stops the container and marks the run killed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT, GIT_ENV, audit
from tests.e2e.conftest import training_project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SECRET = "s3cr3t-in-image-9f2c7e-xyz"


@pytest.fixture(scope="module")
def pinned(
    tmp_path_factory: pytest.TempPathFactory, torch_rerun_env: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """The fixture project, one run recorded on this host, and that run's pinned image."""
    root, store = training_project(tmp_path_factory.mktemp("inimage"),
                                   gitignore="outputs/\n.auditor/\n")
    env = {**store, **torch_rerun_env}
    res = audit("--json", "record", "--name", "host", "--input", "data/blobs.csv", "--",
                sys.executable, "train_mlp.py", "--epochs", "1", "--out", "outputs-host",
                cwd=root, env=env)
    assert res.returncode == 0, res.stderr
    host = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    built = audit("--json", "build", host, cwd=root, env=env, timeout=1800)
    assert built.returncode == 0, built.stderr
    yield {"root": root, "env": env, "image": json.loads(built.stdout)["image_id"]}


def runs(p: dict[str, Any]) -> list[dict[str, Any]]:
    res = audit("--json", "list", "--limit", "0", cwd=p["root"], env=p["env"])
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout))


def show(p: dict[str, Any], run_id: str) -> dict[str, Any]:
    res = audit("--json", "show", run_id, cwd=p["root"], env=p["env"])
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def record_in_image(p: dict[str, Any], *argv: str, env: dict[str, str] | None = None
                    ) -> tuple[subprocess.CompletedProcess[str], str]:
    res = audit("--json", "record", "--in-image", p["image"], *argv, cwd=p["root"],
                env={**p["env"], **(env or {})}, timeout=600)
    lines = res.stdout.strip().splitlines()
    return res, (json.loads(lines[-1])["id"] if lines and lines[-1].startswith("{") else "")


def test_recorded_in_its_image_verifies_bitwise_with_no_environment_change(
    pinned: dict[str, Any], tmp_path: Path
) -> None:
    res, run_id = record_in_image(pinned, "--name", "in-image", "--input", "data/blobs.csv",
                                  "--", "python", "train_mlp.py", "--epochs", "2", "--seed", "7")
    assert res.returncode == 0, res.stderr
    rec = show(pinned, run_id)
    py = rec["environment"]["python"]
    assert py["executable"] == f"python in docker {pinned['image'][:19]}"
    assert rec["environment"]["container_image"] == pinned["image"]
    assert "torch" in py["packages"]
    assert rec["determinism"]["source"] == "observed-in-process"  # the probe's file was found
    assert rec["determinism"]["torch_num_threads"]
    assert rec["metrics"]["points"] > 0 and rec["identity"]["status"] == "finished"
    assert any(a["name"] == "outputs/outputs/model.safetensors" for a in rec["artifacts"])
    cert = tmp_path / "cert.json"
    done = audit("verify", run_id, "--certificate", str(cert), cwd=pinned["root"],
                 env=pinned["env"], timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    envelope = json.loads(cert.read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert predicate["verdict"] == "reproduced-bitwise"
    assert predicate["summary"]["environment_changes"] == 0, predicate["causes"]


def test_a_teed_log_and_progress_bars_still_record(pinned: dict[str, Any]) -> None:
    script = pinned["root"] / "progress.py"
    script.write_text(
        "import json, sys, time\n"
        "for i in range(3):\n"
        "    sys.stderr.write(f'\\r{i + 1}/3 [' + '#' * (i + 1) + ' ' * (2 - i) + ']')\n"
        "    sys.stderr.flush()\n"
        "    print(json.dumps({'step': i, 'loss': 1.0 / (i + 1)}), flush=True)\n"
        "sys.stderr.write('\\n')\n"
    )
    # the command tees its own log into the repository, and auditor's output is teed too
    cmd = (f"{AUDIT} --json record --in-image {pinned['image']} --name tee -- "
           "sh -c 'python progress.py | tee logs/progress.log' | tee own.log")
    (pinned["root"] / "logs").mkdir(exist_ok=True)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=pinned["root"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **GIT_ENV, **pinned["env"]})
    assert done.returncode == 0, done.stderr
    rec = show(pinned, json.loads(done.stdout.strip().splitlines()[-1])["id"])
    assert rec["identity"]["status"] == "finished"
    assert rec["metrics"]["final"] == {"loss": pytest.approx(1 / 3)}
    names = {a["name"] for a in rec["artifacts"]}
    assert "outputs/logs/progress.log" in names
    assert not any(n.endswith("own.log") for n in names if n.startswith("outputs/"))
    assert '"loss": 0.5' in (pinned["root"] / "logs" / "progress.log").read_text()
    assert "3/3 [###]" in done.stderr  # the bars streamed through (\r read as a newline)
    assert next(a for a in rec["artifacts"] if a["name"] == "logs/stderr.txt")["size"] > 20


def _docker_cli_of(run_label: str, within_s: float) -> list[str]:
    """The argv of the `docker run` process of the recording (read from /proc)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv if a]
            if len(args) > 2 and args[1] == "run" and any(run_label in a for a in args):
                return args
        time.sleep(0.1)
    raise AssertionError("no docker run process of the recording was seen")


def test_a_secret_reaches_the_command_by_name_only(pinned: dict[str, Any]) -> None:
    (pinned["root"] / "secret_check.py").write_text(
        "import os, sys, time\n"
        "time.sleep(4)\n"
        f"sys.exit(0 if os.environ.get('MY_API_TOKEN') == {SECRET!r} else 9)\n"
    )
    before = {r["id"] for r in runs(pinned)}
    proc = subprocess.Popen(
        [AUDIT, "--json", "record", "--in-image", pinned["image"], "--name", "secret", "--",
         "python", "secret_check.py"], cwd=pinned["root"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, **GIT_ENV, **pinned["env"], "MY_API_TOKEN": SECRET})
    try:
        argv = _docker_cli_of("auditor.record=", within_s=60)
    finally:
        _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # the value reached the command inside the container
    assert not any(SECRET in a for a in argv)
    passed = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--env"}
    assert "MY_API_TOKEN" in passed and not passed & {"PATH", "HOME", "VIRTUAL_ENV"}
    (new,) = {r["id"] for r in runs(pinned)} - before
    rec = show(pinned, new)
    assert rec["environment"]["env_vars"]["MY_API_TOKEN"] == "[REDACTED]"
    assert SECRET not in json.dumps(rec)


def test_a_missing_image_or_engine_is_one_line_and_stores_nothing(
    pinned: dict[str, Any]
) -> None:
    before = runs(pinned)
    missing = audit("record", "--in-image", "auditor-test/no-such-image:1", "--", "python",
                    "train_mlp.py", cwd=pinned["root"], env=pinned["env"])
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no such image" in missing.stderr
    no_engine = audit("record", "--in-image", pinned["image"], "--", "python", "train_mlp.py",
                      cwd=pinned["root"], env={**pinned["env"], "DOCKER_HOST": "unix:///nonexistent"})
    assert no_engine.returncode == 3
    assert no_engine.stderr.strip().count("\n") == 0 and "docker engine" in no_engine.stderr
    assert runs(pinned) == before  # no run row, running or otherwise
    # a host interpreter's path means nothing in the image: one line, the run stored failed
    host_python = audit("record", "--in-image", pinned["image"], "--", sys.executable,
                        "train_mlp.py", cwd=pinned["root"], env=pinned["env"])
    assert host_python.returncode == 2
    assert host_python.stderr.strip().splitlines()[-1].startswith(
        "error: command not found in image")
    ident = show(pinned, runs(pinned)[0]["id"])["identity"]
    assert (ident["status"], ident["exit_code"]) == ("failed", 127)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_container_and_marks_the_run_killed(
    pinned: dict[str, Any], signum: int
) -> None:
    (pinned["root"] / "sleeper.py").write_text(
        "import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen(
        [AUDIT, "--json", "record", "--in-image", pinned["image"], "--name", "sleeper", "--",
         "python", "sleeper.py"], cwd=pinned["root"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **GIT_ENV, **pinned["env"]})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    run_id = runs(pinned)[0]["id"]
    assert show(pinned, run_id)["identity"]["status"] == "running"
    started = time.monotonic()
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30, f"the container did not stop on signal {signum}"
    assert proc.returncode == 128 + signum, err
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=auditor.record={run_id}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []
    ident = show(pinned, run_id)["identity"]
    assert ident["status"] == "killed" and ident["exit_code"] == -signum
