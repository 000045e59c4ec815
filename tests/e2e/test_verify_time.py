"""Time in logs and outputs, end to end (issue 9, T50): real torch trainings in a throwaway
git repository, recorded, rebuilt from their lockfile into one shared image, rerun under
a real docker engine and compared.

``fixtures/train/train_timed.py`` prints its start date and process id, a progress bar
redrawn with \\r, ms/batch and "epoch took" timings; it writes a TensorBoard event file
(named by time, host and pid), and a checkpoint named by the clock into the ``checkpoints/``
folder that the repository already has. Seeded, it reproduces bit for bit, and must be
certified so; each deliberately nondeterministic variant must still be caught, with the
right first divergence and a real cause.
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

# The first verify builds the module's image (torch + tensorboard): minutes on 2 cores.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]
PY = sys.executable


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, base_image: tuple[str, str],
            ca_bundle: Path, torch_wheelhouse: Path) -> Iterator[dict[str, Any]]:
    """The timed training (its own lockfile, with tensorboard) and a store."""
    pytest.importorskip("tensorboard")  # the original run writes event files too
    root = tmp_path_factory.mktemp("timed") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    shutil.copy(FIXTURES / "train" / "train_timed.py", root)
    shutil.copy(FIXTURES / "train" / "requirements-timed.lock", root / "requirements.lock")
    (root / "data").mkdir()
    shutil.copy(FIXTURES / "data" / "blobs.csv", root / "data")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / ".gitkeep").write_text("")
    (root / ".gitignore").write_text(".auditor/\ndata/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    env = {"AUDITOR_STORE": str(root.parent / "store"), "AUDITOR_BASE_IMAGE": base_image[0],
           "AUDITOR_WHEELHOUSE": str(torch_wheelhouse), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    yield {"root": root, "env": env}


def record(project: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> str:
    res = audit("--json", "record", "--name", "timed", "--input", "data/blobs.csv", "--",
                PY, "train_timed.py", "--tensorboard", *args, cwd=project["root"],
                env={**project["env"], **(env or {})})
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def verify(project: dict[str, Any], run_id: str) -> tuple[int, dict[str, Any], str]:
    res = audit("--json", "verify", run_id, cwd=project["root"], env=project["env"],
                timeout=1200)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    assert len(data.get("results", [])) == 1, (res.returncode, res.stderr[-2000:])
    return res.returncode, data["results"][0], res.stderr


def counted(verdict: dict[str, Any]) -> list[str]:
    """Where the verdict counted a difference (outside the environment's notes)."""
    return [d["where"] for kind, diffs in verdict["differences"].items()
            if kind != "environment" for d in diffs if d["kind"] != "renamed"]


def outputs(result: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [d for diffs in result["verdict"]["differences"].values() for d in diffs
            if d["where"].startswith(where)]


def test_a_seeded_run_with_time_everywhere_is_certified(project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "3")
    code, result, err = verify(project, run_id)
    verdict = result["verdict"]
    assert code == 0, (verdict["first_divergence"], verdict["causes"][:2], err[-1500:])
    # the event file's wall times and the checkpoint's time-named zip folder are bytes that
    # differ: within tolerance (explained, counted), never bitwise
    assert verdict["level"] == "reproduced-within-tolerance", counted(verdict)
    assert sorted(w.split("/")[0] + "/" + w.rsplit(".", 1)[-1] for w in counted(verdict)) == [
        "files/0", "weights/pt"], counted(verdict)
    assert result["certificate_sha256"]
    compared = verdict["outputs"]["compared"]
    assert any("tfevents" in n for n in compared)
    assert any("/checkpoints/ckpt-" in n for n in compared)
    # the event file and the dated checkpoint were written under other names, paired by
    # pattern and compared: the scalars and the tensors agree, the clock is within tolerance
    events = [(d["kind"], d["within_tolerance"]) for d in outputs(result, "files/")
              if "tfevents" in d["where"]]
    checkpoints = [(d["kind"], d["within_tolerance"])
                   for d in outputs(result, "weights/outputs/checkpoints/ckpt-")]
    assert (events, checkpoints) == ([("changed", True)], [("bytes", True)])
    # the timings, the date, the pid and the progress bar in stdout did not count
    assert verdict["summary"]["beyond_tolerance"] == 0


def test_clock_seeded_variant_diverges_at_step_0_in_the_printed_metrics(
        project: dict[str, Any]) -> None:
    code, result, _ = verify(project, record(project, "--seed", "clock"))
    verdict = result["verdict"]
    assert code == 1 and verdict["level"] == "not-reproduced"
    assert verdict["first_divergence"] == "metrics/loss@step 0"
    assert verdict["causes"][0]["what"] == "unseeded"


def test_event_file_noise_is_caught_at_its_tag_and_step(project: dict[str, Any]) -> None:
    code, result, _ = verify(project, record(project, "--seed", "3", "--tb-noise"))
    verdict = result["verdict"]
    assert code == 1 and verdict["level"] == "not-reproduced"
    first = verdict["first_divergence"]
    assert "tfevents" in first and first.endswith("/train/loss"), first
    [diff] = [d for d in outputs(result, "files/") if d["where"] == first]
    assert diff["stats"]["first_step"] == 0
    assert any("the rerun wrote it as" in c for c in diff["comments"])
    assert verdict["causes"][0]["what"] == "unexplained"
    assert first in verdict["causes"][0]["explanation"]


def test_checkpoint_noise_is_caught_in_the_dated_checkpoint(project: dict[str, Any]) -> None:
    code, result, _ = verify(project, record(project, "--seed", "3", "--ckpt-noise"))
    verdict = result["verdict"]
    assert code == 1 and verdict["level"] == "not-reproduced"
    first = verdict["first_divergence"]
    assert first.startswith("weights/outputs/checkpoints/ckpt-") and ".pt/" in first, first
    assert verdict["causes"][0]["what"] == "unexplained"


def test_an_unlisted_learning_rate_variable_is_named_with_its_fix(
        project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "3", env={"TRAIN_LR": "0.3"})
    code, result, _ = verify(project, run_id)
    verdict = result["verdict"]
    assert code == 1 and verdict["level"] == "not-reproduced"
    assert verdict["first_divergence"] == "metrics/loss@step 0"
    top = verdict["causes"][0]
    assert (top["category"], top["what"]) == ("env", "TRAIN_LR"), verdict["causes"][:3]
    assert "--env-allow TRAIN_LR" in top["explanation"]


def test_a_second_run_overwriting_last_pt_in_checkpoints_is_certified(
        project: dict[str, Any]) -> None:
    # The first run leaves checkpoints/last.pt (untracked); the second overwrites it in its
    # own writable copy of the tree. Both reproduce.
    first = record(project, "--seed", "5", "--keep-last")
    assert (project["root"] / "checkpoints" / "last.pt").is_file()
    second = record(project, "--seed", "5", "--keep-last")
    for run_id in (second, first):
        code, result, err = verify(project, run_id)
        verdict = result["verdict"]
        assert code == 0, (verdict["first_divergence"], verdict["causes"][:2], err[-1500:])
        # only the time-named files differ (wall times, the zip folder named after the
        # file): within tolerance, never bitwise; last.pt is byte for byte the same
        assert verdict["level"] == "reproduced-within-tolerance", counted(verdict)
        assert [w for w in counted(verdict) if "tfevents" not in w and "/ckpt-" not in w
                ] == [], counted(verdict)
        assert "outputs/checkpoints/last.pt" in verdict["outputs"]["compared"]
