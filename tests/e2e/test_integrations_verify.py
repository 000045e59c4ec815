"""The Lightning and Hugging Face integrations under real use: real `lightning` and
`transformers` trainings recorded with `audit record` and verified in a docker container.

Each fixture script (fixtures/integrations/) resumes from its own checkpoint in a second
Trainer, loads batches in worker processes from a seeded generator, and asks its framework
for determinism; the integration must attach to the run `audit record` opened (one run in
the store, not two) and the rerun must reproduce it bitwise (the Hugging Face run recorded
in its pinned image: see the test). One lock (torch, lightning,
transformers, accelerate) and so one image serve the whole module. A data loader whose
workers draw from an unseeded generator must not reproduce, and the verdict must say so.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, audit, git

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold image build
PY = sys.executable
SCRIPTS = ("train_lightning.py", "train_hf.py", "requirements.in", "requirements.lock")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            torch_rerun_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    parent = tmp_path_factory.mktemp("integrations")
    root = parent / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for name in SCRIPTS:
        shutil.copy(FIXTURES / "integrations" / name, root)
    (root / ".gitignore").write_text("lightning_logs/\nhf-out/\n.auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    env = {"AUDITOR_STORE": str(parent / "store"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", **torch_rerun_env}
    yield {"root": root, "env": env}


def run_ids(project: dict[str, Any]) -> list[str]:
    if not Path(project["env"]["AUDITOR_STORE"]).exists():
        return []
    res = audit("--json", "list", cwd=project["root"], env=project["env"])
    assert res.returncode == 0, res.stderr
    return [r["id"] for r in json.loads(res.stdout)]


def record(project: dict[str, Any], name: str, *argv: str) -> tuple[str, dict[str, Any]]:
    """`audit record` of one fixture script (``argv``: the script and its arguments, run by
    this interpreter; or record options, ``--``, and a whole command): the run id and its
    record."""
    before = set(run_ids(project))
    command = list(argv) if "--" in argv else ["--", PY, *argv]
    res = audit("--json", "record", "--name", name, *command,
                cwd=project["root"], env=project["env"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run_id = str(json.loads(res.stdout.strip().splitlines()[-1])["id"])
    # the integration attached to the run `audit record` opened: one new run, not two
    assert set(run_ids(project)) - before == {run_id}
    shown = audit("--json", "show", run_id, cwd=project["root"], env=project["env"])
    return run_id, json.loads(shown.stdout)


def verify(project: dict[str, Any], run_id: str) -> tuple[int, dict[str, Any], str]:
    res = audit("--json", "verify", run_id, cwd=project["root"], env=project["env"],
                timeout=1200)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, data, res.stderr


def locked(record: dict[str, Any], *packages: str) -> str:
    """The run's lock (the project's requirements.lock), checked to pin these packages at
    the versions the training ran with: no drift names them."""
    lock = record["environment"]["python"]["lock"]
    assert lock["origin"] == "project", lock
    drifted = {_drift_name(line) for line in lock["drift"]}  # "torch" is not "torchmetrics"
    for package in packages:
        assert package not in drifted, [d for d in lock["drift"] if _drift_name(d) == package]
    return str(lock["artifact"])


def _drift_name(line: str) -> str:
    """The package a drift line names (core/lockfile.py): `name: locked A, installed B`,
    `missing from lock: name==v`, or `locked but not installed: name`."""
    text = line.split(": ", 1)[1] if line.startswith(("missing from lock", "locked but not")) \
        else line
    return text.split(":", 1)[0].split("==", 1)[0].strip().lower()


def test_lightning_training_is_recorded_and_reproduces_bitwise(project: dict[str, Any]) -> None:
    run_id, rec = record(project, "lightning", "train_lightning.py", "--workers", "2")
    params = rec["params"]
    assert params["hparams.lr"] == 0.05 and params["hparams.hidden"] == 16
    assert params["trainer.deterministic"] is True and params["trainer.max_epochs"] == 3
    assert params["trainer.ckpt_path"] == "lightning_logs/auditor/checkpoints/last.ckpt"
    assert params["workers"] == 2  # the script's own argparse, beside the framework's
    assert rec["seeds"]["seed"] == 0 and "workers" in rec["seeds"]["seeded"]
    assert rec["determinism"]["torch_deterministic_algorithms"] is True
    assert {"train_loss_step", "train_loss_epoch"} <= set(rec["metrics"]["final"])
    assert rec["metrics"]["points"] > 18  # every step of both fits
    assert locked(rec, "lightning", "torch") == "env/lock/requirements.lock"
    names = {a["name"] for a in rec["artifacts"]}
    assert "outputs/lightning_logs/auditor/checkpoints/last.ckpt" in names
    # each saved checkpoint registered at its step (last.ckpt at the same step is not new)
    assert [(c["step"], c["kind"]) for c in rec["checkpoints"]] == [
        (6, "registered"), (12, "registered"), (18, "registered")]

    code, data, err = verify(project, run_id)
    assert code == 0, (err[-3000:], data)
    result = data["results"][0]
    assert result["verdict"]["level"] == "reproduced-bitwise", result["verdict"]
    assert result["backend"] == "docker"


def test_hf_training_is_recorded_and_reproduces_bitwise(project: dict[str, Any]) -> None:
    host_id, rec = record(project, "hf", "train_hf.py", "--workers", "2")
    params = rec["params"]
    assert params["args.seed"] == 0 and params["args.dataloader_num_workers"] == 2
    assert params["args.full_determinism"] is True
    assert params["model.hidden_size"] == 16 and params["model.model_type"] == "bert"
    assert params["trainer.resumed_from_step"] == 8  # the second Trainer resumed
    assert rec["seeds"]["seed"] == 0
    final = rec["metrics"]["final"]
    assert "loss" in final and not any(k.endswith("_runtime") for k in final)
    assert locked(rec, "transformers", "accelerate", "torch") == "env/lock/requirements.lock"
    names = {a["name"] for a in rec["artifacts"]}
    assert "outputs/hf-out/checkpoint-12/model.safetensors" in names
    assert [(c["step"], c["kind"]) for c in rec["checkpoints"]] == [
        (4, "registered"), (8, "registered"), (12, "registered")]

    # Every checkpoint holds training_args.bin, a pickle of TrainingArguments whose enums
    # Python 3.11.2 (the image's) and this host's 3.11 pickle differently: bitwise needs the
    # run recorded in the environment its lock describes, the image `audit build` makes.
    built = audit("--json", "build", host_id, cwd=project["root"], env=project["env"],
                  timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    image = json.loads(built.stdout)["image_id"]
    shutil.rmtree(project["root"] / "hf-out")
    run_id, rec = record(project, "hf-in-image", "--in-image", image, "--", "python",
                         "train_hf.py", "--workers", "2")
    assert [c["step"] for c in rec["checkpoints"]] == [4, 8, 12]
    assert rec["environment"]["python"]["lock"]["drift"] == []

    code, data, err = verify(project, run_id)
    assert code == 0, (err[-3000:], data)
    result = data["results"][0]
    assert result["verdict"]["level"] == "reproduced-bitwise", result["verdict"]


def test_lightning_run_seeded_from_the_clock_is_caught_and_explained(
        project: dict[str, Any]) -> None:
    shutil.rmtree(project["root"] / "lightning_logs", ignore_errors=True)  # a fresh folder
    run_id, rec = record(project, "lightning-clock", "train_lightning.py", "--seed", "clock",
                         "--epochs", "1", "--resume-epochs", "0", "--workers", "0")
    assert isinstance(rec["seeds"]["seed"], int)  # the seed Lightning set, recorded
    code, data, err = verify(project, run_id)
    assert code == 1, err[-3000:]
    verdict = data["results"][0]["verdict"]
    assert verdict["level"] == "not-reproduced"
    assert verdict["first_divergence"].startswith("metrics/"), verdict
    assert verdict["causes"][0]["category"] == "seed", verdict["causes"][:3]
