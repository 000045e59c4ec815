"""Time in logs and outputs (T50): logs are evidence, not a verdict, by default; outputs
whose bytes or names embed a time (TensorBoard event files, torch zips, dated checkpoint
names) are compared by what they hold; a ``.bin`` that is no torch file is compared as
bytes; and the comparison says which outputs it read and which the policy left out."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from auditor.certify.decide import decide
from auditor.compare import Evidence, compare_runs, files
from auditor.compare.difference import Difference
from auditor.compare.pairing import pair_outputs, pattern
from auditor.core.policy import Policy, Tolerance, load_policy, loosenings
from auditor.core.schema import ArtifactRef
from tests.factories import EvidencePair


def verdict(left: Evidence, right: Evidence, policy: Policy) -> tuple[str, list[Difference]]:
    diffs = compare_runs(left, right, policy.compare, only=("weights", "files"))
    found = [d for ds in diffs.values() for d in ds]
    return decide(diffs, left.record, right.record, policy).level, found


# A training's stdout: timings, a date, a process id and a tqdm progress bar redrawn with \r.
STDOUT_A = ("started 2026-12-01 05:30:01 pid 4242\n"
            "| epoch   1 |   200/ 2983 batches | ms/batch 45.69 | loss  7.63 |\n"
            "epoch took 3.2 s\n"
            " 50%|█████     | 1/2 [00:01<00:01,  1.52it/s]\r100%|██████████| 2/2 "
            "[00:02<00:00,  1.61it/s]\n"
            "final loss 0.5\n")
STDOUT_B = ("started 2026-12-01 07:12:44 pid 17\n"
            "| epoch   1 |   200/ 2983 batches | ms/batch 51.02 | loss  7.63 |\n"
            "epoch took 4.1 s\n"
            " 33%|███       | 1/3 [00:00<00:01,  2.01it/s]\r 66%|██████    | 2/3 "
            "[00:01<00:00,  2.20it/s]\r100%|██████████| 2/2 [00:03<00:00,  0.66it/s]\n"
            "final loss 0.5\n")


# -- logs ------------------------------------------------------------------------------


def test_timings_dates_pids_and_progress_bars_in_stdout_are_masked(pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": STDOUT_A.encode(), "out/m.bin": b"m"},
                       {"logs/stdout.txt": STDOUT_B.encode(), "out/m.bin": b"m"},
                       logs=("logs/stdout.txt",))  # out/m.bin is the evidence
    assert files.compare(left, right, Policy().compare) == []
    strict = files.compare(left, right, Policy(compare_logs="strict").compare)
    assert [(d.kind, d.within_tolerance, d.stats.get("masked_only")) for d in strict] == [
        ("text", True, True)]  # the bytes did change, but only inside masks


def test_a_log_file_output_that_differs_is_informational_by_default(pair: EvidencePair) -> None:
    a = STDOUT_A.encode() + b"lr 0.1\n"
    b = STDOUT_B.encode() + b"lr 0.3\n"
    left, right = pair({"outputs/train.log": a, "outputs/model.bin": b"same"},
                       {"outputs/train.log": b, "outputs/model.bin": b"same"})
    level, found = verdict(left, right, Policy())
    assert level == "reproduced-bitwise"
    [diff] = found
    assert (diff.where, diff.kind, diff.stats["informational"]) == (
        "files/outputs/train.log", "text", True)
    assert diff.stats["first_line"] == 6
    assert (diff.left, diff.right) == ("'lr 0.1'", "'lr 0.3'")
    assert "first differing line (after masks): 'lr 0.1' → 'lr 0.3'" in diff.comments
    v = decide(compare_runs(left, right, Policy().compare, only=("files",)), left.record,
               right.record, Policy())
    assert v.loosenings and "files/outputs/train.log line 6: 'lr 0.1' → 'lr 0.3'" in (
        v.loosenings[0])
    assert v.outputs.informational == ["outputs/train.log"]


def test_compare_logs_strict_restores_logs_that_count(pair: EvidencePair) -> None:
    left, right = pair({"outputs/train.log": b"lr 0.1\n"}, {"outputs/train.log": b"lr 0.3\n"})
    policy = load_policy_text('[verify]\ncompare_logs = "strict"\n')
    level, found = verdict(left, right, policy)
    assert level == "not-reproduced"
    assert not found[0].within_tolerance and "informational" not in found[0].stats
    assert decide({"files": found}, left.record, right.record, policy).first_divergence == (
        "files/outputs/train.log")


def test_compare_logs_off_leaves_logs_out_and_says_so(pair: EvidencePair) -> None:
    left, right = pair({"outputs/train.log": b"a\n", "logs/stdout.txt": b"x\n"},
                       {"outputs/train.log": b"b\n", "logs/stdout.txt": b"y\n"},
                       logs=("logs/stdout.txt",))
    policy = Policy.model_validate({"compare_logs": False})  # the old bool still reads
    assert policy.compare.compare_logs == "off"
    assert files.compare(left, right, policy.compare) == []
    v = decide({"files": []}, left.record, right.record, policy)
    assert v.outputs.ignored == ["outputs/train.log"] and v.outputs.compared == []
    assert v.loosenings == ['compare_logs = "off": logs are not compared at all']


def test_an_unknown_log_mode_is_refused(tmp_path: Path) -> None:
    from auditor.core.errors import InputError

    with pytest.raises(InputError, match="compare_logs"):
        load_policy_text('[verify]\ncompare_logs = "sometimes"\n', tmp_path)


def load_policy_text(text: str, folder: Path | None = None) -> Policy:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder or tmp) / "auditor.toml"
        path.write_text(text)
        return load_policy(path)


# -- outputs whose names embed a time ---------------------------------------------------


def ref(name: str, sha: str = "a" * 64) -> ArtifactRef:
    return ArtifactRef(name=name, sha256=sha, size=1, kind="output")


def test_names_with_times_and_ids_share_a_pattern() -> None:
    assert pattern("ckpt-20261201-0530.pt") == pattern("ckpt-20261201-0612.pt") == "ckpt-#-#.pt"
    assert pattern("runs/events.out.tfevents.1764567890.host-a.123.0") == pattern(
        "runs/events.out.tfevents.1764569999.0f3a9c2b1d7e.9.0")
    assert pattern("run-01hzx3k9p0qrstvwxyz0123456/model.pt") == "run-#/model.pt"
    assert pattern("epoch3.pt") != pattern("epoch4.pt")  # a short number is no time


def test_pairing_prefers_equal_names_then_equal_contents_then_time_order() -> None:
    left = {n: ref(n, s) for n, s in [("model.pt", "1" * 64), ("ckpt-20261201-0530.pt", "2" * 64),
                                      ("ckpt-20261201-0600.pt", "3" * 64)]}
    right = {n: ref(n, s) for n, s in [("model.pt", "9" * 64), ("ckpt-20261202-0101.pt", "3" * 64),
                                       ("ckpt-20261202-0100.pt", "8" * 64), ("x.txt", "7" * 64)]}
    pairs = {(p.left.name if p.left else None, p.right.name if p.right else None)
             for p in pair_outputs(left, right)}
    assert pairs == {("model.pt", "model.pt"), ("ckpt-20261201-0600.pt", "ckpt-20261202-0101.pt"),
                     ("ckpt-20261201-0530.pt", "ckpt-20261202-0100.pt"), (None, "x.txt")}


def torch_bytes(tensors: dict[str, object], name: str) -> bytes:
    """What torch.save writes to a file of that name (the zip's folder is named after it)."""
    torch = pytest.importorskip("torch")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"{name}.pt")
        torch.save(tensors, path)
        return path.read_bytes()


def test_a_dated_checkpoint_name_is_paired_and_reported_as_renamed(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    left, right = pair({"ckpt/ckpt-20261201-0530.pt": torch_bytes(weights, "ckpt-20261201-0530")},
                       {"ckpt/ckpt-20261201-0612.pt": torch_bytes(weights, "ckpt-20261201-0612")})
    level, found = verdict(left, right, Policy())
    assert level == "reproduced-within-tolerance"  # torch.save named the zip's folder after
    [diff] = found  # the file, so the bytes differ: explained by the name, never bitwise
    assert (diff.where, diff.kind, diff.within_tolerance) == (
        "weights/ckpt/ckpt-20261201-0530.pt", "bytes", True)
    assert "every tensor is bit-identical" in " ".join(diff.comments)
    assert "the rerun wrote it as ckpt/ckpt-20261201-0612.pt" in " ".join(diff.comments)


def test_a_dated_checkpoint_with_other_weights_diverges_under_its_name(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    left, right = pair(
        {"ckpt-20261201-0530.pt": torch_bytes({"w": torch.zeros(3)}, "a")},
        {"ckpt-20261201-0612.pt": torch_bytes({"w": torch.ones(3)}, "b")})
    level, found = verdict(left, right, Policy())
    assert level == "not-reproduced"
    assert found[0].where == "weights/ckpt-20261201-0530.pt/w"
    assert any("the rerun wrote it as ckpt-20261201-0612.pt" in c for c in found[0].comments)


def test_torch_zip_metadata_alone_counts(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    weights = {"w": torch.arange(4.0)}
    left, right = pair({"model.pt": torch_bytes(weights, "one")},
                       {"model.pt": torch_bytes(weights, "two")})
    level, found = verdict(left, right, Policy())
    assert level == "not-reproduced"  # bytes a reader skipped are never hidden
    assert [(d.where, d.kind, d.stats.get("container")) for d in found] == [
        ("weights/model.pt", "bytes", True)]
    loose = Policy(metadata_outputs=("model.pt",))
    assert verdict(left, right, loose)[0] == "reproduced-within-tolerance"


def test_checkpoint_structure_is_compared_with_masks_and_tolerance(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")

    def ckpt(epoch: int, saved_at: str, lr: float) -> bytes:
        return torch_bytes({"model": {"w": torch.ones(2)}, "epoch": epoch, "saved_at": saved_at,
                            "opt": {"param_groups": [{"lr": lr, "nesterov": False}]}}, "c")

    same = ckpt(3, "2026-12-01 05:30:00", 0.1)
    left, right = pair({"c.pt": same}, {"c.pt": ckpt(3, "2026-12-01 07:00:12", 0.1)})
    level, found = verdict(left, right, Policy())
    assert level == "not-reproduced"  # masks are for logs
    level, found = verdict(left, right, Policy(mask_outputs=("c.pt",)))
    assert level == "reproduced-within-tolerance"  # a time in a string value is masked
    assert [(d.where, d.within_tolerance) for d in found] == [("weights/c.pt/saved_at", True)]
    left, right = pair({"c.pt": same}, {"c.pt": ckpt(4, "2026-12-01 05:30:00", 0.3)})
    level, found = verdict(left, right, Policy())
    assert level == "not-reproduced"
    assert [(d.where, d.left, d.right) for d in found] == [
        ("weights/c.pt/epoch", "3", "4"), ("weights/c.pt/opt.param_groups.0.lr", "0.1", "0.3")]


# -- a .bin that is no torch file ---------------------------------------------------------


def test_a_bin_output_that_is_not_torch_is_compared_as_bytes(pair: EvidencePair) -> None:
    left, right = pair({"outputs/model.bin": b"\x00\x02\x03raw"},
                       {"outputs/model.bin": b"\x00\x02\x04raw"})
    level, found = verdict(left, right, Policy())  # no InputError (exit 2)
    assert level == "not-reproduced"
    assert [(d.where, d.kind, d.stats.get("first_offset")) for d in found] == [
        ("files/outputs/model.bin", "bytes", 2)]


def test_a_bin_that_is_a_torch_checkpoint_is_still_read_as_tensors(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    left, right = pair({"pytorch_model.bin": torch_bytes({"w": torch.zeros(2)}, "a")},
                       {"pytorch_model.bin": torch_bytes({"w": torch.ones(2)}, "a")})
    _, found = verdict(left, right, Policy())
    assert [d.where for d in found] == ["weights/pytorch_model.bin/w"]


# -- TensorBoard event files --------------------------------------------------------------


def event_file(folder: Path, losses: list[float]) -> bytes:
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, loss in enumerate(losses):
        writer.add_scalar("train/loss", loss, step)
    writer.add_histogram("weights", torch.arange(8.0), 0)
    writer.close()
    [path] = folder.glob("events.out.tfevents.*")
    return path.read_bytes()


def test_event_files_are_compared_by_scalars_not_wall_time(pair: EvidencePair,
                                                           tmp_path: Path) -> None:
    a = event_file(tmp_path / "ea", [0.9, 0.5, 0.25])
    b = event_file(tmp_path / "eb", [0.9, 0.5, 0.25])
    assert a != b  # wall_time differs
    left, right = pair({"runs/events.out.tfevents.1764567890.host.1.0": a},
                       {"runs/events.out.tfevents.1764569999.c0ffee123456.7.0": b})
    level, found = verdict(left, right, Policy())
    assert level == "reproduced-within-tolerance"  # the bytes differ: never bitwise
    assert [(d.kind, d.within_tolerance) for d in found] == [("changed", True)]
    assert "differ only in wall_time" in " ".join(found[0].comments)
    assert "the rerun wrote it as" in " ".join(found[0].comments)


def test_event_files_with_other_scalars_name_the_tag_and_step(pair: EvidencePair,
                                                           tmp_path: Path) -> None:
    a = event_file(tmp_path / "ea", [0.9, 0.5, 0.25])
    b = event_file(tmp_path / "eb", [0.9, 0.5, 0.3])
    left, right = pair({"events.out.tfevents.1.h.1.0": a}, {"events.out.tfevents.1.h.1.0": b})
    level, found = verdict(left, right, Policy())
    assert level == "not-reproduced"
    [diff] = found
    assert (diff.where, diff.kind, diff.stats["first_step"]) == (
        "files/events.out.tfevents.1.h.1.0/train/loss", "value", 2)
    loose = Policy(metrics={"train/*": Tolerance(rtol=0.5, atol=0.0)})
    assert verdict(left, right, loose)[0] == "reproduced-within-tolerance"


# -- what was compared, what the policy left out --------------------------------------------


def test_ignored_outputs_are_named_and_shown_as_a_loosening(pair: EvidencePair) -> None:
    left, right = pair({"outputs/noise.bin": b"1", "outputs/model.safetensors": b"m"},
                       {"outputs/noise.bin": b"2", "outputs/model.safetensors": b"m"})
    policy = Policy(ignore_outputs=("outputs/noise*",))
    v = decide(compare_runs(left, right, policy.compare, only=("weights", "files")), left.record,
               right.record, policy)
    assert v.level == "reproduced-bitwise"
    assert (v.outputs.compared, v.outputs.ignored) == (["outputs/model.safetensors"],
                                                       ["outputs/noise.bin"])
    assert v.summary["compared_files"] == 1
    assert v.loosenings[0].startswith("ignore_outputs: outputs matching outputs/noise*")


def test_the_default_policy_loosens_nothing() -> None:
    assert loosenings(Policy()) == []
    assert loosenings(Policy(metric_tolerance=Tolerance(rtol=1e-6, atol=0.0))) == []  # tighter
    wide = loosenings(Policy(metric_tolerance=Tolerance(rtol=1e-2, atol=0.0),
                             allow_gpu_mismatch=True, log_masks=(r"\d+",)))
    assert [line.split(":")[0] for line in wide] == ["metric_tolerance", "log_masks",
                                                     "allow_gpu_mismatch"]
