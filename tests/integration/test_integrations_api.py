"""The Lightning and Hugging Face integrations without `audit record`, with the real
packages: the script alone opens its one run (however many Trainers it builds), the hooks
record nothing off the main process, and an unsupported framework version stops the
script with one line and exit 2 before any training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditor.integrations import _run
from tests.conftest import FIXTURES, audit

PY = sys.executable


def standalone(tmp_path: Path, script: str, *argv: str) -> tuple[str, dict[str, Any]]:
    """Run a fixture script alone (no `audit record`): the one run it left, as shown."""
    shutil.copy(FIXTURES / "integrations" / script, tmp_path)
    env = {**os.environ, "AUDITOR_STORE": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1"}
    env.pop("AUDITOR_PROBE_DIR", None)
    env.pop("AUDITOR_RUN_ID", None)
    done = subprocess.run([PY, script, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = audit("--json", "list", cwd=tmp_path, env={"AUDITOR_STORE": str(tmp_path / "store")})
    runs = json.loads(listed.stdout)
    assert len(runs) == 1, runs  # two fits (the second resumed), one run
    assert f"recorded run {runs[0]['id']} (finished)" in done.stderr
    shown = audit("--json", "show", runs[0]["id"], cwd=tmp_path,
                  env={"AUDITOR_STORE": str(tmp_path / "store")})
    return runs[0]["id"], json.loads(shown.stdout)


@pytest.mark.slow
def test_lightning_script_alone_opens_its_one_run(tmp_path: Path) -> None:
    _, rec = standalone(tmp_path, "train_lightning.py", "--epochs", "1", "--resume-epochs",
                        "1", "--workers", "0")
    assert rec["identity"]["status"] == "finished"
    assert rec["params"]["hparams.lr"] == 0.05
    assert rec["params"]["trainer.max_epochs"] == 2  # the resumed fit's
    assert rec["seeds"]["seed"] == 0
    assert rec["determinism"]["torch_deterministic_algorithms"] is True
    assert rec["metrics"]["points"] >= 12 and "train_loss_step" in rec["metrics"]["final"]
    assert [c["step"] for c in rec["checkpoints"]] == [6, 12]  # one per epoch, both fits


@pytest.mark.slow
def test_hf_script_alone_opens_its_one_run(tmp_path: Path) -> None:
    _, rec = standalone(tmp_path, "train_hf.py", "--steps", "4", "--resume-steps", "2",
                        "--save-steps", "2", "--workers", "0")
    assert rec["identity"]["status"] == "finished"
    assert rec["params"]["args.max_steps"] == 6 and rec["params"]["model.hidden_size"] == 16
    assert rec["params"]["trainer.resumed_from_step"] == 4
    assert rec["seeds"]["seed"] == 0
    assert "loss" in rec["metrics"]["final"]
    assert [c["step"] for c in rec["checkpoints"]] == [2, 4, 6]


@pytest.mark.parametrize(("package", "module", "old"), [
    ("lightning", "auditor.integrations.lightning", "1.9.5"),
    ("transformers", "auditor.integrations.transformers", "4.30.2"),
])
def test_unsupported_version_is_one_line_and_exit_2(package: str, module: str,
                                                    old: str) -> None:
    # The installed package, made to report an old version: installing one would pull
    # another torch (the version check reads `__version__`, as it would of a real install).
    code = f"import {package}; {package}.__version__ = {old!r}; import {module}"
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("auditor:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"auditor: error: {module} supports {package} >=")
    assert f"{package} {old}" in lines[0]


def test_version_ranges() -> None:
    assert _run.unsupported("x", "lightning", "2.6.6", "2.0", "2.7") is None
    assert _run.unsupported("x", "lightning", "2.7.0", "2.0", "2.7") is not None
    assert _run.unsupported("x", "transformers", "5.0.0rc1", "4.46", "6") is None
    assert _run.unsupported("x", "transformers", "4.45.2", "4.46", "6") is not None
    assert _run.unsupported("x", "lightning", "garbage", "2.0", "2.7") is not None


def test_hf_callback_records_nothing_off_the_main_process(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from transformers import TrainerState, TrainingArguments

    from auditor.integrations.transformers import AuditorCallback

    monkeypatch.setenv("AUDITOR_PROBE_DIR", str(tmp_path))
    monkeypatch.setenv("AUDITOR_RUN_ID", "r1")
    monkeypatch.setattr(_run, "_RUN", None)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    callback = AuditorCallback()
    other = TrainerState(is_world_process_zero=False, global_step=3)
    callback.on_train_begin(args, other, None)
    callback.on_log(args, other, None, logs={"loss": 0.5})
    callback.on_save(args, other, None)
    assert callback._run is None  # never even attached on another rank
    main = TrainerState(is_world_process_zero=True, global_step=3)
    callback.on_log(args, main, None, logs={"loss": 0.5, "train_runtime": 1.0})
    callback.run.flush()
    points = [json.loads(ln) for ln in next(tmp_path.glob("metrics-*.jsonl")).read_text()
              .splitlines()]
    assert [(p[0], p[1]) for p in points] == [("loss", 3)]  # the timing is left out


def test_lightning_logger_records_nothing_off_rank_zero(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from auditor.integrations.lightning import AuditorLogger

    monkeypatch.setenv("AUDITOR_PROBE_DIR", str(tmp_path))
    monkeypatch.setenv("AUDITOR_RUN_ID", "r1")
    monkeypatch.setattr(_run, "_RUN", None)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AuditorLogger()
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 0.5}, step=1)
    assert logger._run is None and not list(tmp_path.iterdir())
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.finalize("success")
    assert list(tmp_path.glob("metrics-*.jsonl"))


def test_attached_integrations_load_nothing_a_rerun_lacks(tmp_path: Path) -> None:
    # inside a rerun only the `auditor` package is mounted, without its dependencies: an
    # attached integration must not reach the standalone recorder or the store
    code = ("import sys; import auditor.integrations.lightning, auditor.integrations.transformers;"
            " from auditor.integrations import _run; run = _run.process_run();"
            " print(type(run).__name__, sorted(m for m in sys.modules if m.startswith("
            "('auditor.record.tracker', 'auditor.store', 'auditor.core.schema'))))")
    env = {**os.environ, "AUDITOR_PROBE_DIR": str(tmp_path), "AUDITOR_RUN_ID": "r1"}
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300,
                          env=env, check=True)
    assert done.stdout.strip() == "AttachedRun []", done.stdout
