"""`audit record` end to end: real git repos, real SQLite, a real torch training run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.record.capture.git import rebuild_tree
from auditor.store import open_store
from tests.conftest import AUDIT, GIT_ENV, audit, git

PY = sys.executable


def only_run(store_dir: Path):  # type: ignore[no-untyped-def]
    opened = open_store(str(store_dir), create=False)
    runs = opened.list_runs()
    assert len(runs) == 1
    return opened, opened.get_record(runs[0].id)


def test_record_torch_fixture_completely(train_repo: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    res = audit(
        "record",
        "--name",
        "mlp",
        "--input",
        "data/blobs.csv",
        "--",
        PY,
        "train_mlp.py",
        "--epochs",
        "3",
        "--lr",
        "0.1",
        "--seed",
        "7",
        cwd=train_repo,
        env={"AUDITOR_STORE": str(store_dir)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count('"loss"') == 3  # streamed live to our stdout
    opened, rec = only_run(store_dir)
    assert rec.identity.status == "finished" and rec.identity.exit_code == 0
    # argparse's whole namespace, as the script sees it (--seed has no type: text)
    assert {k: rec.params[k] for k in ("epochs", "lr", "seed", "batch_size")} == {
        "epochs": 3, "lr": 0.1, "seed": "7", "batch_size": 32}
    assert rec.not_captured["params"].endswith("typed: epochs, lr, seed")
    assert rec.code and rec.code.commit and not rec.code.dirty and rec.code.vcs == "git"
    assert rec.data[0].path == "data/blobs.csv" and len(rec.data[0].sha256) == 64
    assert rec.metrics.points == 6 and set(rec.metrics.final) == {"loss", "accuracy"}
    assert [p.step for p in opened.iter_metrics(rec.identity.id, "loss")] == [0, 1, 2]
    det = rec.determinism
    assert det is not None and det.source == "observed-in-process"
    assert det.torch_num_threads is not None and det.torch_deterministic_algorithms is False
    assert rec.seeds.torch_initial_seed == 7
    assert rec.seeds.pythonhashseed and rec.seeds.pythonhashseed_chosen_by_auditor
    py = rec.environment.python
    assert (
        py is not None and py.executable != "" and py.packages.get("torch", "").startswith("2.13.0")
    )
    assert (
        py.lock is not None
        and py.lock.origin == "project"
        and py.lock.artifact.endswith("requirements.lock")
    )
    outputs = {a.name for a in rec.outputs()}
    assert "outputs/outputs/model.safetensors" in outputs or "outputs/model.safetensors" in outputs
    assert rec.environment.system and rec.environment.system.cpu_count
    assert "environment.accelerators.gpus" in rec.not_captured  # no nvidia-smi here: said so


def test_exit_code_passes_through_and_failed_status(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo({"fail.py": "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n"})
    res = audit("record", "--", PY, "fail.py", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 3 and "boom" in res.stderr
    _, rec = only_run(tmp_path / "s")
    assert rec.identity.status == "failed" and rec.identity.exit_code == 3


def test_command_not_found_is_one_line(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo()
    res = audit(
        "record", "--", "no-such-command-xyz", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")}
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: command not found: no-such-command-xyz"]


def test_unreadable_input_is_refused_before_running(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo({"t.py": "open('ran','w').write('1')\n"})
    res = audit(
        "record",
        "--input",
        "missing.csv",
        "--",
        PY,
        "t.py",
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 2 and "missing.csv" in res.stderr and "Traceback" not in res.stderr
    assert not (repo / "ran").exists()


def test_metrics_json_and_regex_and_bad_lines(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import json\n"
        "print(json.dumps({'step': 0, 'loss': float('nan')}))\n"
        'print(\'{"step": 1, "loss": Infinity}\')\n'
        "print({'a python': 'repr, not a metrics line'})\n"
        "print('epoch 5 acc 0.75')\n"
    )
    repo = make_repo({"m.py": script})
    res = audit(
        "record",
        "--metrics-regex",
        r"epoch (?P<step>\d+) acc (?P<acc>\S+)",
        "--",
        PY,
        "m.py",
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 0 and "warning" not in res.stderr
    opened, rec = only_run(tmp_path / "s")
    points = {(p.key, p.step): p.value for p in opened.iter_metrics(rec.identity.id)}
    assert points[("loss", 1)] == float("inf") and points[("acc", 5)] == 0.75
    assert points[("loss", 0)] != points[("loss", 0)]  # NaN kept as NaN


def test_metrics_line_that_is_not_json_fails_after_storing_the_run(make_repo,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    script = "print('{\"step\": 0, \"loss\": 0.5}')\nprint('{\"step\": 1, \"loss\": 0.4,}')\n"
    repo = make_repo({"m.py": script})
    env = {"AUDITOR_STORE": str(tmp_path / "s")}
    res = audit("record", "--", PY, "m.py", cwd=repo, env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stdout line 2 is a metrics line")
    _, rec = only_run(tmp_path / "s")  # stored, with what could be read
    assert rec.identity.status == "finished" and rec.metrics.final == {"loss": 0.5}
    lenient = audit("record", "--lenient-metrics", "--", PY, "m.py", cwd=repo, env=env)
    assert lenient.returncode == 0 and "warning: stdout line 2" in lenient.stderr


def test_bad_metrics_regex_is_usage_error(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo()
    res = audit(
        "record",
        "--metrics-regex",
        "(",
        "--",
        PY,
        "-c",
        "1",
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 2 and res.stderr.startswith("error: --metrics-regex")


def test_dirty_tree_is_rebuilt_exactly(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo({"a.py": "print('a')\n", "pkg/b.py": "B = 1\n", "gone.txt": "bye\n"})
    (repo / "a.py").write_text("print('changed')\n")  # unstaged
    (repo / "pkg" / "b.py").write_text("B = 2\n")
    git(repo, "add", "pkg/b.py")  # staged
    (repo / "gone.txt").unlink()  # deleted
    (repo / "new_module.py").write_text("NEW = True\n")  # untracked
    (repo / "bin.dat").write_bytes(bytes(range(256)))  # untracked binary
    (repo / ".gitignore").write_text("ignored.log\n")
    (repo / "ignored.log").write_text("noise")
    res = audit(
        "record", "--", PY, "-c", "pass", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")}
    )
    assert res.returncode == 0, res.stderr
    opened, rec = only_run(tmp_path / "s")
    assert rec.code and rec.code.dirty and rec.code.diff_artifact == "code/diff.patch"
    dest = tmp_path / "rebuilt"
    rebuild_tree(rec.code, {a.name: a for a in rec.artifacts}, opened.blobs, dest)
    assert (dest / "a.py").read_text() == "print('changed')\n"
    assert (dest / "pkg/b.py").read_text() == "B = 2\n"
    assert not (dest / "gone.txt").exists()
    assert (dest / "new_module.py").read_text() == "NEW = True\n"
    assert (dest / "bin.dat").read_bytes() == bytes(range(256))
    assert not (dest / "ignored.log").exists()
    # and through the CLI
    res = audit(
        "checkout",
        rec.identity.id[:12],
        str(tmp_path / "co"),
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 0, res.stderr


def test_store_inside_repo_is_never_captured(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo({"t.py": "pass\n"})
    for _ in range(2):  # the second run sees the store created by the first
        assert audit("record", "--", PY, "t.py", cwd=repo).returncode == 0
    opened = open_store(str(repo / ".auditor"))
    for summary in opened.list_runs():
        rec = opened.get_record(summary.id)
        assert rec.code and not rec.code.dirty
        assert not any(".auditor" in a.name for a in rec.artifacts)


def test_outside_git_snapshots_code_dir(tmp_path: Path) -> None:
    work = tmp_path / "plain"
    work.mkdir()
    (work / "t.py").write_text("open('out.txt','w').write('42')\n")
    res = audit("record", "--", PY, "t.py", cwd=work, env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 0, res.stderr
    opened, rec = only_run(tmp_path / "s")
    assert (
        rec.code
        and rec.code.vcs == "snapshot"
        and "code/untracked/t.py" in rec.code.untracked_artifacts
    )
    out = rec.artifact("outputs/out.txt")
    assert out is not None and opened.blobs.read_bytes(out.sha256) == b"42"


def test_api_under_wrapper_adds_to_the_same_run(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import auditor\n"
        "with auditor.start_run(name='x', params={'width': 8}, seed=5) as run:\n"
        "    for i in range(3):\n"
        "        run.log_metric('val', i * 0.5)\n"
        "    open('w.bin','wb').write(b'abc')\n"
        "    run.log_artifact('w.bin')\n"
    )
    repo = make_repo({"api.py": script})
    res = audit(
        "record",
        "--output",
        "none-declared",
        "--",
        PY,
        "api.py",
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 0, res.stderr
    opened, rec = only_run(tmp_path / "s")  # one run, not two
    assert rec.params["width"] == 8 and rec.seeds.seed == 5
    assert set(rec.seeds.seeded) >= {"random", "numpy", "torch"}
    assert [p.value for p in opened.iter_metrics(rec.identity.id, "val")] == [0.0, 0.5, 1.0]
    assert rec.artifact("outputs/w.bin") is not None
    assert rec.determinism and rec.determinism.torch_deterministic_algorithms is True


def test_api_standalone_records_a_run(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import auditor\n"
        "with auditor.start_run(name='solo', params={'lr': 0.1}) as run:\n"
        "    run.log_metrics({'loss': 1.0, 'acc': 0.5}, step=0)\n"
    )
    repo = make_repo({"solo.py": script})
    res = subprocess.run(
        [PY, "solo.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, "AUDITOR_STORE": str(tmp_path / "s")},
    )
    assert res.returncode == 0, res.stderr
    _, rec = only_run(tmp_path / "s")
    assert rec.identity.name == "solo" and rec.command.mode == "api"
    assert rec.metrics.final == {"loss": 1.0, "acc": 0.5} and rec.identity.status == "finished"


def test_pythonhashseed_kept_when_set(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo()
    res = audit(
        "record",
        "--",
        PY,
        "-c",
        "print(hash('a'))",
        cwd=repo,
        env={"AUDITOR_STORE": str(tmp_path / "s"), "PYTHONHASHSEED": "123"},
    )
    _, rec = only_run(tmp_path / "s")
    assert rec.seeds.pythonhashseed == "123" and not rec.seeds.pythonhashseed_chosen_by_auditor
    expected = subprocess.run(
        [PY, "-c", "print(hash('a'))"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout
    assert res.stdout == expected


def test_killed_child_is_marked_killed(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import json, os, signal, time\n"
        "print(json.dumps({'step': 0, 'loss': 1.5}), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    repo = make_repo({"k.py": script})
    res = audit("record", "--", PY, "k.py", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 128 + signal.SIGKILL
    _opened, rec = only_run(tmp_path / "s")
    assert rec.identity.status == "killed" and rec.metrics.final == {"loss": 1.5}


def test_recorder_killed_leaves_readable_store_marked_crashed(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import json, time\n"
        "for i in range(100):\n"
        "    print(json.dumps({'step': i, 'loss': 1.0 / (i + 1)}), flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    repo = make_repo({"slow.py": script})
    env = {**os.environ, **GIT_ENV, "AUDITOR_STORE": str(tmp_path / "s")}
    proc = subprocess.Popen(
        [AUDIT, "record", "--", PY, "slow.py"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    opened = None
    while time.time() < deadline:
        time.sleep(0.5)
        if (tmp_path / "s" / "store.db").exists():
            opened = open_store(str(tmp_path / "s"), create=False)
            if opened.list_runs() and list(opened.iter_metrics(opened.list_runs()[0].id)):
                break
    os.killpg(proc.pid, signal.SIGKILL)  # recorder and child both die
    proc.wait()
    assert opened is not None
    assert opened.integrity_check() == "ok"
    res = audit("list", "--json", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)
    assert runs[0]["status"] == "crashed"
    rec = opened.get_record(runs[0]["id"])
    assert rec.code is not None and "end" in rec.not_captured  # what was captured is kept
    assert audit("fsck", cwd=repo, env={"AUDITOR_STORE": str(tmp_path / "s")}).returncode == 0


def test_list_and_show_and_prefix(train_repo: Path, tmp_path: Path) -> None:
    env = {"AUDITOR_STORE": str(tmp_path / "s")}
    assert (
        audit(
            "record", "--", PY, "train_mlp.py", "--epochs", "1", cwd=train_repo, env=env
        ).returncode
        == 0
    )
    listing = audit("list", cwd=train_repo, env=env)
    assert listing.returncode == 0 and "finished" in listing.stdout and "loss=" in listing.stdout
    run_id = json.loads(audit("list", "--json", cwd=train_repo, env=env).stdout)[0]["id"]
    shown = audit("show", run_id[:12], cwd=train_repo, env=env)
    assert shown.returncode == 0 and "determinism" in shown.stdout and "torch" in shown.stdout
    full = json.loads(audit("--json", "show", run_id, cwd=train_repo, env=env).stdout)
    assert full["identity"]["id"] == run_id and full["schema_version"] == 1


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "abc", "zzzzzzzzzz", "a/../../b"])
def test_bad_run_ids_one_line(train_repo: Path, tmp_path: Path, bad: str) -> None:
    env = {"AUDITOR_STORE": str(tmp_path / "s")}
    audit("record", "--", PY, "-c", "pass", cwd=train_repo, env=env)
    res = audit("show", bad, cwd=train_repo, env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr


def test_corrupt_store_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.db").write_bytes(b"this is not a database" * 100)
    res = audit("list", cwd=tmp_path, env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 2 and res.stderr.startswith("error:")
    assert len(res.stderr.strip().splitlines()) == 1


def test_help_lists_commands() -> None:
    res = subprocess.run([AUDIT, "--help"], capture_output=True, text=True, check=True)
    for cmd in ("record", "list", "show", "checkout", "fsck"):
        assert cmd in res.stdout
    assert shutil.which(AUDIT)
