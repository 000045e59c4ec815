"""Two `audit record` runs at the same time in one checkout: each run's outputs are the
files its own processes wrote (record/concurrent.py, the probe's write hook), never the
other's; a file missing in a rerun is reported as missing, never as nondeterminism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import AUDIT, GIT_ENV, audit

pytestmark = [pytest.mark.slow]

# Each waits (when WAIT_FOR is set: never in a rerun) for the other's file, so each
# recording's window holds both writes.
TORCH_A = """import os, time, torch
from safetensors.torch import save_file
os.makedirs("outputs", exist_ok=True)
deadline = time.time() + 60
while os.environ.get("WAIT_FOR") and not os.path.exists(os.environ["WAIT_FOR"]) \\
        and time.time() < deadline:
    time.sleep(0.05)
torch.manual_seed(0)
save_file({"w": torch.randn(4, 4)}, "outputs/a.safetensors")
print('{"step": 0, "loss": 0.5}')
"""
TORCH_B = """import os, time, torch
os.makedirs("outputs", exist_ok=True)
torch.save({"w": torch.ones(4, 4)}, "outputs/b.pt")
deadline = time.time() + 60
while os.environ.get("WAIT_FOR") and not os.path.exists(os.environ["WAIT_FOR"]) \\
        and time.time() < deadline:
    time.sleep(0.05)
print('{"step": 0, "loss": 0.25}')
"""


def _start(repo: Path, store: Path, script: str, wait_for: str,
           python: str = sys.executable) -> subprocess.Popen[str]:
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": str(store), "WAIT_FOR": wait_for}
    return subprocess.Popen([AUDIT, "--json", "record", "--", python, script], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _both(repo: Path, store: Path, a: tuple[str, str], b: tuple[str, str],
          python: str = sys.executable) -> tuple[dict[str, object], dict[str, object]]:
    """Record a and b (script, the file it waits for) at once; their records."""
    procs = [_start(repo, store, *a, python=python), _start(repo, store, *b, python=python)]
    shown = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        run_id = json.loads(out.strip().splitlines()[-1])["id"]
        res = audit("--json", "show", run_id, cwd=repo, env={"AUDITOR_STORE": str(store)})
        shown.append(json.loads(res.stdout))
    return shown[0], shown[1]


def _outputs(rec: dict[str, object]) -> set[str]:
    """The files stored as the run's outputs (artifact names are `outputs/<path>`)."""
    return {a["name"].removeprefix("outputs/") for a in rec["artifacts"]  # type: ignore[attr-defined]
            if a["kind"] == "output"}


def test_concurrent_torch_recordings_store_only_their_own_files(make_repo,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    """Native writers (safetensors' save_file, torch.save) are attributed too."""
    repo = make_repo({"a.py": TORCH_A, "b.py": TORCH_B, ".gitignore": "outputs/\n"})
    a, b = _both(repo, tmp_path / "store", ("a.py", "outputs/b.pt"),
                 ("b.py", "outputs/a.safetensors"))
    assert _outputs(a) == {"outputs/a.safetensors"}
    assert _outputs(b) == {"outputs/b.pt"}
    b_id, a_id = b["identity"]["id"], a["identity"]["id"]  # type: ignore[index]
    assert f"written by run {b_id}" in a["not_captured"]["outputs.skipped.outputs/b.pt"]  # type: ignore[index]
    assert f"written by run {a_id}" in b["not_captured"][  # type: ignore[index]
        "outputs.skipped.outputs/a.safetensors"]


PLAIN = """import json, os, time
os.makedirs("outputs", exist_ok=True)
deadline = time.time() + 60
def wait():
    while os.environ.get("WAIT_FOR") and not os.path.exists(os.environ["WAIT_FOR"]) \\
            and time.time() < deadline:
        time.sleep(0.05)
{body}
print(json.dumps({{"step": 0, "loss": {loss}}}))
"""


def test_concurrent_recordings_each_verify_reproduced(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without the attribution, the slow run stored the other's file and its rerun, which
    does not write it, was not reproduced."""
    slow = PLAIN.format(body="wait()\nwith open('outputs/a.safetensors', 'wb') as fh:\n"
                             "    fh.write(b'A' * 64)", loss=0.5)
    fast = PLAIN.format(body="with open('outputs/b.safetensors', 'wb') as fh:\n"
                             "    fh.write(b'B' * 64)\nwait()", loss=0.25)
    python = tmp_path / "env"
    subprocess.run(["python3", "-m", "venv", str(python)], check=True)
    repo = make_repo({"slow.py": slow, "fast.py": fast, ".gitignore": "outputs/\n"})
    store = tmp_path / "store"
    a, b = _both(repo, store, ("slow.py", "outputs/b.safetensors"),
                 ("fast.py", "outputs/a.safetensors"), python=str(python / "bin" / "python"))
    assert _outputs(a) == {"outputs/a.safetensors"} and _outputs(b) == {"outputs/b.safetensors"}
    for rec in (a, b):
        res = audit("--json", "verify", rec["identity"]["id"], "--backend", "venv",  # type: ignore[index]
                    cwd=repo, env={"AUDITOR_STORE": str(store)}, timeout=600)
        result = json.loads(res.stdout)["results"][0]
        assert result["verdict"]["level"] == "reproduced-bitwise", res.stdout[-3000:]
        assert res.returncode == 0


def test_changed_file_no_one_was_seen_writing_is_ambiguous(make_repo,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    """A file a non-Python writer (a shell redirect) changed while another recording ran
    in the tree: the recorder cannot tell whose it is, says so and does not store it."""
    shell = ("import os, subprocess, time\nos.makedirs('outputs', exist_ok=True)\n"
             "subprocess.run('echo x > outputs/shell.txt', shell=True, check=True)\n"
             "deadline = time.time() + 60\n"
             "while not os.path.exists(os.environ['WAIT_FOR']) and time.time() < deadline:\n"
             "    time.sleep(0.05)\n")
    other = ("import os, time\ndeadline = time.time() + 60\n"
             "while not os.path.exists(os.environ['WAIT_FOR']) and time.time() < deadline:\n"
             "    time.sleep(0.05)\nopen('outputs/other.txt', 'w').write('o')\n")
    repo = make_repo({"shell.py": shell, "other.py": other, ".gitignore": "outputs/\n"})
    proc = subprocess.Popen(
        [AUDIT, "--json", "record", "--", sys.executable, "shell.py"], cwd=repo,
        env={**os.environ, **GIT_ENV, "AUDITOR_STORE": str(tmp_path / "store"),
             "WAIT_FOR": "outputs/other.txt"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = audit("--json", "record", "--", sys.executable, "other.py", cwd=repo,
                env={"AUDITOR_STORE": str(tmp_path / "store"), "WAIT_FOR": "outputs/shell.txt"})
    assert res.returncode == 0, res.stderr
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    run_id = json.loads(out.strip().splitlines()[-1])["id"]
    rec = json.loads(audit("--json", "show", run_id, cwd=repo,
                           env={"AUDITOR_STORE": str(tmp_path / "store")}).stdout)
    assert _outputs(rec) == set()
    note = rec["not_captured"]["outputs.skipped.outputs/shell.txt"]
    assert note.startswith("ambiguous: another recording") and "--output" in note
    assert "warning: output outputs/shell.txt: ambiguous" in err
    assert "outputs.skipped.outputs/other.txt" in rec["not_captured"]


def test_file_missing_in_the_other_run_is_reported_as_missing(make_repo,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    script = ("import json, os\nif os.environ.get('WRITE_IT'):\n"
              "    open('out.txt', 'w').write('same')\n"
              "print(json.dumps({'step': 0, 'loss': 0.5}))\n")
    repo = make_repo({"t.py": script, ".gitignore": "out.txt\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    ids = []
    for write in ("1", ""):
        (repo / "out.txt").unlink(missing_ok=True)
        res = audit("--json", "record", "--", sys.executable, "t.py", cwd=repo,
                    env={**env, "WRITE_IT": write})
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout.strip().splitlines()[-1])["id"])
    res = audit("--json", "compare", "--as-rerun", *ids, cwd=repo, env=env)
    verdict = json.loads(res.stdout)
    assert res.returncode == 1 and verdict["level"] == "not-reproduced"
    first = verdict["causes"][0]
    assert first["what"] == "missing in the rerun" and "outputs/out.txt" in first["explanation"]
    assert not any("varies from run to run" in c["explanation"] for c in verdict["causes"])
    assert not any(c["what"] == "unexplained" for c in verdict["causes"])
