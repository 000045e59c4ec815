"""Spot-check verification and resume equivalence end to end (issue 19 items 3-5): real torch
trainings that checkpoint every epoch (``fixtures/ckpt``), real docker replays in the image
rebuilt from their lockfile (one image for the module), real certificates.

Caught (the first, third and fourth in one doctored run, recorded once): a checkpoint
produced from other data than recorded (its segment diverges), a checkpoint file altered
after recording (exit 3, nothing replayed), later segments trained with another learning
rate, a segment whose replay dies (that segment fails, the other one, replayed at the same
time, lands); a script that checkpoints its data-loader generator resumes
bitwise, one that does not is caught with the first diverging step and a data-loader cause.
Bad input: no checkpoints, a step with none, more segments than the run has, checkpoint
tensors that do not fit the model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.certify.certificate import open_envelope, read_certificate
from auditor.certify.segments import choose_segments
from auditor.store import open_store
from tests.conftest import FIXTURES, audit, git

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]  # a cold image build
PY = sys.executable
N = 20  # the fixture checkpoints at the end of each of its 20 epochs (5 steps each)
STEPS_PER_EPOCH = 5


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory,
            torch_rerun_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A git project holding the checkpointing fixture, and a store beside it."""
    parent = tmp_path_factory.mktemp("spot")
    root = parent / "proj"
    shutil.copytree(FIXTURES / "ckpt", root)
    shutil.copy(FIXTURES / "train" / "train_mlp.py", root)  # a training without checkpoints
    # the model's width from a variable a rerun does not get: recorded checkpoints whose
    # tensors do not fit the model the replay builds
    (root / "train_ckpt_wide.py").write_text(
        "import os, sys\n"
        "sys.argv += ['--hidden', os.environ.get('CKPT_TEST_HIDDEN', '32')]\n"
        "from train_ckpt import main\n"
        "main()\n")
    # one doctored run for three faults in known segments (recorded once, `doctored`):
    # CKPT_FIXTURE_NOISE_AT=6 (recorded) feeds epoch 6 other data (segment 6); a learning
    # rate the script sets itself before every update from step 50 on, from a variable a
    # rerun does not get (a hand-written schedule the record does not show: segments 10
    # and later); and its replay of the segment ending at step 15 dies at once (only a
    # replay gets AUDITOR_STOP_AT: segment 2). Segment 4 (steps 20 -> 25) is honest.
    (root / "train_ckpt_doctored.py").write_text(
        "import os, sys\n"
        "if os.environ.get('AUDITOR_STOP_AT') == '15':\n"
        "    sys.exit('segment crash: this replay stops before step 15')\n"
        "from torch.optim.optimizer import register_optimizer_step_pre_hook\n"
        "after = os.environ.get('CKPT_TEST_LR_AFTER')\n"
        "count = [0]\n"
        "def hook(opt, args, kwargs):\n"
        "    if after and count[0] >= int(after):\n"
        "        for group in opt.param_groups:\n"
        "            group['lr'] = 0.05 + 0.01 * (count[0] - int(after))\n"
        "    count[0] += 1\n"
        "register_optimizer_step_pre_hook(hook)\n"
        "from train_ckpt import main\n"
        "main()\n")
    (root / "data").mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "data" / "blobs.csv", root / "data")
    (root / ".gitignore").write_text("outputs/\n.auditor/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    yield {"root": root, "env": {"AUDITOR_STORE": str(parent / "store"), **torch_rerun_env}}


def record(project: dict[str, Any], script: str = "train_ckpt.py", *args: str,
           env: dict[str, str] | None = None) -> str:
    res = audit("--json", "record", "--name", script, "--", PY, script, *args,
                cwd=project["root"], env={**project["env"], **(env or {})}, timeout=600)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def verify(project: dict[str, Any], run_id: str, *args: str) -> tuple[int, dict[str, Any], str]:
    res = audit("--json", "verify", run_id, *args, cwd=project["root"], env=project["env"],
                timeout=900)
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    result = data.get("results", [{}])[0] if data.get("results") else {}
    return res.returncode, result, res.stderr


def seed_for(*segments: int) -> str:
    """A seed whose choice of ``len(segments)`` of N segments is exactly these (the test
    aims, as a verifier's recorded seed would replay)."""
    return next(f"aim-{i}" for i in range(100_000)
                if choose_segments(f"aim-{i}", N, len(segments)) == sorted(segments))


def reruns(project: dict[str, Any], run_id: str) -> list[str]:
    res = audit("--json", "list", "--include-reruns", "--limit", "0", cwd=project["root"],
                env=project["env"])  # (without the flag reruns are never listed)
    rows = json.loads(res.stdout)
    rows = rows["runs"] if isinstance(rows, dict) else rows
    return [r["id"] for r in rows if r.get("reproduces") == run_id]


@pytest.fixture(scope="module")
def honest(project: dict[str, Any]) -> str:
    return record(project)


@pytest.fixture(scope="module")
def doctored(project: dict[str, Any]) -> str:
    """The doctored run (``project``): other data in segment 6, another learning rate from
    step 50 (segments 10-19), a replay that dies in segment 2; segment 4 honest."""
    # one torch thread: its replays may run two at a time on 2 cores (a replay trains with
    # the original's thread count, and segments replay at once only where cores hold them)
    return record(project, "train_ckpt_doctored.py",
                  env={"CKPT_FIXTURE_NOISE_AT": "6", "CKPT_TEST_LR_AFTER": "50",
                       "OMP_NUM_THREADS": "1"})


def test_spot_check_of_an_honest_run_certifies_its_segments(
        project: dict[str, Any], honest: str, tmp_path: Path) -> None:
    cert = tmp_path / "spot.cert.json"
    code, result, err = verify(project, honest, "--segments", "2", "--certificate", str(cert))
    assert code == 0, err
    assert result["check"] == "spot-check"
    spot = result["spot_check"]
    assert spot["segments_total"] == N and len(spot["chosen"]) == 2
    assert spot["seed_source"].startswith("certificate-log head ")
    assert spot["chosen"] == choose_segments(spot["seed"], N, 2)  # anyone replays the choice
    assert spot["fraction"] == pytest.approx(2 * STEPS_PER_EPOCH / (N * STEPS_PER_EPOCH))
    assert spot["catch_one"] == pytest.approx(0.1)
    assert [s["level"] for s in result["segments"]] == ["reproduced-bitwise"] * 2
    pred = open_envelope(read_certificate(cert), None, require_signature=False).predicate
    assert pred.check == "spot-check" and pred.partial is not None
    assert pred.partial.chosen == spot["chosen"] and pred.partial.seed == spot["seed"]
    assert pred.partial.catch_tenth_k == 2 and pred.partial.catch_tenth == pytest.approx(
        1 - (18 * 17) / (20 * 19))


def test_a_checkpoint_from_other_data_fails_its_segment(project: dict[str, Any],
                                                        doctored: str) -> None:
    epoch = 6  # segment 6 ends at the checkpoint of step 35
    code, result, err = verify(project, doctored, "--segments", "1",
                               "--segment-seed", seed_for(epoch))
    assert code == 1, err
    (segment,) = result["segments"]
    assert segment["index"] == epoch and segment["level"] == "not-reproduced"
    assert segment["first_difference"].startswith("checkpoint@35/") or \
        "@step 3" in segment["first_difference"], segment


def test_later_segments_with_another_learning_rate_fail(project: dict[str, Any],
                                                       doctored: str) -> None:
    early, late = 4, 16  # steps 20 -> 25 (before the change), 80 -> 85 (after it)
    code, result, err = verify(project, doctored, "--segments", "2",
                               "--segment-seed", seed_for(early, late))
    assert code == 1, err
    before, after = result["segments"]
    assert before["index"] == early and before["level"] == "reproduced-bitwise"
    assert after["index"] == late and after["level"] == "not-reproduced"
    where = " ".join(d["where"] for d in after["differences"])
    assert "checkpoint@85/" in where, where
    assert "lr" in json.dumps(after["differences"]), after["differences"]


def test_a_failing_segment_replay_is_reported_as_that_segment(
        project: dict[str, Any], doctored: str) -> None:
    dies, fine = 2, 4  # replayed at once: one dies at its start, the other lands
    before = set(reruns(project, doctored))
    code, result, err = verify(project, doctored, "--segments", "2",
                               "--segment-seed", seed_for(dies, fine))
    assert code == 1, err
    if len(os.sched_getaffinity(0)) >= 2:
        assert "replaying 2 segment(s), 2 at a time" in err, err
    first, second = result["segments"]
    assert first["index"] == dies and first["level"] == "not-reproduced", first
    assert first["first_difference"] == "checkpoint@15", first
    said = json.dumps(first["differences"])
    assert "did not write the checkpoint at step 15" in said and "exit 1" in said, said
    assert second["index"] == fine and second["level"] == "reproduced-bitwise", second
    assert len(set(reruns(project, doctored)) - before) == 2  # each its own stored rerun


def test_an_altered_checkpoint_is_exit_3_before_any_replay(project: dict[str, Any],
                                                           tmp_path: Path) -> None:
    # a store of its own: checkpoints are content-addressed, and the honest runs of the
    # other tests share these very bytes
    project = {**project, "env": {**project["env"], "AUDITOR_STORE": str(tmp_path / "store")}}
    run_id = record(project)
    shown = json.loads(audit("--json", "show", run_id, cwd=project["root"],
                             env=project["env"]).stdout)
    art = next(a for a in shown["artifacts"]
               if a["name"].endswith("step-00000040/model.safetensors"))
    store = open_store(project["env"]["AUDITOR_STORE"])
    blob = store.blobs.path_for(art["sha256"])
    store.close()
    os.chmod(blob, 0o600)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    code, _, err = verify(project, run_id, "--segments", "2")
    assert code == 3, err
    assert "40" in err and "model.safetensors" in err, err
    assert reruns(project, run_id) == []  # nothing was replayed


def test_resume_with_the_loader_generator_is_bitwise(project: dict[str, Any],
                                                     honest: str) -> None:
    code, result, err = verify(project, honest, "--resume-at", "50")
    assert code == 0, err
    assert result["check"] == "resume" and result["verdict"]["level"] == "reproduced-bitwise"
    assert result["spot_check"]["restored"] == []


def test_resume_without_the_loader_generator_names_the_data_loader(
        project: dict[str, Any]) -> None:
    run_id = record(project, "train_ckpt_forgets_loader.py")
    code, result, err = verify(project, run_id, "--resume-at", "50")
    assert code == 1, err
    verdict = result["verdict"]
    assert "@step 5" in (verdict["first_divergence"] or ""), verdict["first_divergence"]
    step = int(verdict["first_divergence"].rsplit("@step ", 1)[1])
    assert step >= 50  # at or after the first resumed update (the fixture logs from 0)
    lead = verdict["causes"][0]
    text = f"{lead['what']} {lead['right']} {lead['explanation']}".lower()
    assert "data-loader" in text or "generator" in text, lead
    # named before the first resumed update, not only found as a diverging loss
    assert any("data-loader generator" in r for r in result["spot_check"]["restored"]), \
        result["spot_check"]


def test_bad_input_is_one_line_each(project: dict[str, Any], honest: str) -> None:
    plain = audit("--json", "record", "--", PY, "train_mlp.py", "--epochs", "1",
                  cwd=project["root"], env=project["env"])
    assert plain.returncode == 0, plain.stderr
    plain_id = json.loads(plain.stdout.strip().splitlines()[-1])["id"]
    for args, words in ((["--segments", "2"], "run.checkpoint"),
                        (["--resume-at", "10"], "run.checkpoint")):
        code, _, err = verify(project, plain_id, *args)
        assert code == 2 and words in err and "Traceback" not in err, err
    code, _, err = verify(project, honest, "--resume-at", "7")
    assert code == 2 and "5" in err and "10" in err, err  # the nearest checkpoints
    code, _, err = verify(project, honest, "--segments", "21")
    assert code == 2 and "only 20 segment" in err, err
    code, _, err = verify(project, honest, "--segment-seed", "x")
    assert code == 2 and "--segments" in err, err


def test_checkpoint_tensors_that_do_not_fit_the_model_are_named(
        project: dict[str, Any]) -> None:
    run_id = record(project, "train_ckpt_wide.py", env={"CKPT_TEST_HIDDEN": "48"})
    code, _, err = verify(project, run_id, "--segments", "1", "--segment-seed",
                          seed_for(4))
    assert code == 2, err
    assert "tensor `0.weight`" in err and "Traceback" not in err, err
