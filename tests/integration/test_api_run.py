"""The Python API on its own (issue 18 item 8): a standalone run says its id on stderr once,
and a run the script never ends (no ``with``, no ``run.end()``) still ends when the
interpreter exits, with the seeds and determinism switches ``seed_everything`` set, instead
of staying "crashed" with empty sections. Real interpreters, real torch, real SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import GIT_ENV, audit
from tests.integration.test_record import only_run

PY = sys.executable
NOT_ENDED = (
    "import auditor\n"
    "auditor.seed_everything(7, deterministic=True)\n"
    "run = auditor.start_run(name='loose', params={'lr': 0.1})\n"
    "run.log_metric('loss', 0.5, step=0)\n"
    "print('id', run.id)\n"
)


def run_script(repo: Path, script: str, store: Path,
               **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, script], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **GIT_ENV, "AUDITOR_STORE": str(store), **env})


def test_a_run_never_ended_finishes_at_exit_with_seeds_and_determinism(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo({"loose.py": NOT_ENDED})
    res = run_script(repo, "loose.py", tmp_path / "s")
    assert res.returncode == 0, res.stderr
    _, rec = only_run(tmp_path / "s")
    assert rec.identity.status == "finished" and rec.identity.exit_code == 0
    assert rec.seeds.seed == 7 and "torch" in rec.seeds.seeded
    assert rec.determinism is not None
    assert rec.determinism.torch_deterministic_algorithms is True
    assert rec.determinism.cudnn_benchmark is False
    assert rec.metrics.final == {"loss": 0.5} and rec.params == {"lr": 0.1}
    # its id, once, on stderr (stdout stays the script's)
    assert res.stderr.count(rec.identity.id) == 2  # "recorded run ID …; `audit show ID`"
    assert res.stderr.count("recorded run") == 1 and "recorded run" not in res.stdout


def test_a_run_ended_by_an_uncaught_exception_is_failed(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo({"boom.py": NOT_ENDED + "raise ValueError('boom')\n"})
    res = run_script(repo, "boom.py", tmp_path / "s")
    assert res.returncode == 1 and "ValueError: boom" in res.stderr
    _, rec = only_run(tmp_path / "s")
    assert rec.identity.status == "failed" and rec.seeds.seed == 7
    assert f"recorded run {rec.identity.id} (failed)" in res.stderr


def test_the_run_id_line_follows_the_quiet_settings(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    script = ("import auditor\n"
              "with auditor.start_run(name='q', quiet=True) as run:\n"
              "    run.log_metric('loss', 1.0)\n")
    repo = make_repo({"q.py": script, "loose.py": NOT_ENDED})
    quiet = run_script(repo, "q.py", tmp_path / "a")
    assert quiet.returncode == 0 and "recorded run" not in quiet.stderr, quiet.stderr
    by_env = run_script(repo, "loose.py", tmp_path / "b", AUDITOR_QUIET="1")
    assert by_env.returncode == 0 and "recorded run" not in by_env.stderr, by_env.stderr


def test_an_attached_run_never_ended_still_leaves_params_and_seed(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo({"loose.py": NOT_ENDED})
    res = audit("record", "--output", "none-declared", "--", PY, "loose.py", cwd=repo,
                env={"AUDITOR_STORE": str(tmp_path / "s")})
    assert res.returncode == 0, res.stderr
    _, rec = only_run(tmp_path / "s")  # one run: the wrapper's
    assert rec.params.get("lr") == 0.1 and rec.seeds.seed == 7
    assert res.stderr.count("recorded") == 1  # the wrapper's line, not a second one
