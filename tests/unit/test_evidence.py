"""No certificate without evidence (issue 16, items 1-3), at the comparer and verdict level:

1. a verdict of reproduced rests on compared items: when a run produced only its logs, the
   logs are the evidence and count; with nothing at all, could-not-verify (exit 3) and one
   line saying what to declare;
2. a structured reader never hides bytes: identical tensors in files whose bytes differ
   (safetensors ``__metadata__``, a torch zip, an npz's timestamps, an event file's
   wall_time) are never bitwise, and metadata differences count unless the policy's
   ``metadata_outputs`` names the file (a loosening);
3. the log masks apply to logs only, unless the policy's ``mask_outputs`` names an output
   (a loosening).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from auditor.certify.decide import decide
from auditor.certify.issue import subjects_of
from auditor.certify.loosen import from_verdict
from auditor.certify.verdict import Verdict
from auditor.compare import Evidence, compare_runs
from auditor.core.policy import Policy, loosenings
from tests.factories import EvidencePair, make_record

RANDOM_A = b"final loss: 0.8444218515250481\n"
RANDOM_B = b"final loss: 0.7579544029403025\n"


def verdict(left: Evidence, right: Evidence, policy: Policy | None = None) -> Verdict:
    policy = policy or Policy()
    return decide(compare_runs(left, right, policy.compare, only=("weights", "files")),
                  left.record, right.record, policy)


# -- 1. evidence ---------------------------------------------------------------------------


def test_a_run_that_produced_nothing_cannot_be_verified() -> None:
    left, right = make_record(), make_record()
    v = decide({"process": [], "files": [], "metrics": []}, left, right, Policy())
    assert v.level == "could-not-verify" and v.exit_code == 3
    assert v.summary["compared_metrics"] == v.summary["compared_files"] == 0
    assert "nothing to compare" in v.notes[-1] and "--output" in v.notes[-1]
    assert "printed nothing" in v.notes[-1] and "JSON lines" in v.notes[-1]


def test_empty_logs_are_no_evidence(pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": b""}, {"logs/stdout.txt": b""},
                       logs=("logs/stdout.txt",))
    v = verdict(left, right)
    assert v.level == "could-not-verify" and "printed nothing" in v.notes[-1]


def test_logs_that_differ_fail_when_they_are_the_only_evidence(pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": b"epoch 1\n" + RANDOM_A},
                       {"logs/stdout.txt": b"epoch 1\n" + RANDOM_B}, logs=("logs/stdout.txt",))
    v = verdict(left, right)
    assert v.level == "not-reproduced" and v.exit_code == 1
    assert v.first_divergence == "files/logs/stdout.txt"
    [diff] = v.differences["files"]
    assert not diff.within_tolerance and "informational" not in diff.stats
    assert diff.stats["first_line"] == 2
    assert v.outputs.evidence_logs == ["logs/stdout.txt"] and v.summary["compared_logs"] == 1
    assert any(n.startswith("evidence: ") and "logs/stdout.txt" in n for n in v.notes)


def test_identical_logs_alone_reproduce_and_are_the_certified_evidence(
        pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": RANDOM_A}, {"logs/stdout.txt": RANDOM_A},
                       logs=("logs/stdout.txt",))
    v = verdict(left, right)
    assert v.level == "reproduced-bitwise" and v.summary["compared_logs"] == 1
    assert any(n.startswith("evidence: ") for n in v.notes)
    names = [s.name for s in subjects_of(left.record, v)]
    assert names[0] == "logs/stdout.txt" and names[1].startswith("record:")


def test_logs_alone_differing_only_in_masked_times_are_within_tolerance(
        pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": b"started 05:30:01\nloss 0.5\n"},
                       {"logs/stdout.txt": b"started 07:12:44\nloss 0.5\n"},
                       logs=("logs/stdout.txt",))
    assert verdict(left, right).level == "reproduced-within-tolerance"  # bytes differ


def test_logs_stay_informational_when_an_output_is_the_evidence(pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": RANDOM_A, "outputs/model.bin": b"m"},
                       {"logs/stdout.txt": RANDOM_B, "outputs/model.bin": b"m"},
                       logs=("logs/stdout.txt",))
    v = verdict(left, right)
    assert v.level == "reproduced-bitwise" and v.outputs.evidence_logs == []
    assert v.loosenings[0].startswith('compare_logs = "informational": 1 log file(s) differ')
    assert next(s.name for s in subjects_of(left.record, v)) == "outputs/model.bin"


def test_logs_left_out_by_the_policy_leave_nothing_to_verify(pair: EvidencePair) -> None:
    left, right = pair({"logs/stdout.txt": RANDOM_A}, {"logs/stdout.txt": RANDOM_B},
                       logs=("logs/stdout.txt",))
    v = verdict(left, right, Policy(compare_logs="off"))
    assert v.level == "could-not-verify"
    assert 'compare_logs = "off"' in v.notes[-1] and "--output" in v.notes[-1]


def test_an_ignored_output_is_no_evidence(pair: EvidencePair) -> None:
    left, right = pair({"outputs/noise.bin": b"1"}, {"outputs/noise.bin": b"2"})
    v = verdict(left, right, Policy(ignore_outputs=("outputs/noise*",)))
    assert v.level == "could-not-verify"


# -- 2. bytes a structured reader does not read ------------------------------------------


def st_bytes(note: str | None, value: float = 1.0) -> bytes:
    tensors = {"w": np.full(3, value, np.float32)}
    return safetensors_bytes(tensors, metadata=None if note is None else {"note": note})


def test_safetensors_metadata_that_differs_is_never_bitwise(pair: EvidencePair) -> None:
    left, right = pair({"model.safetensors": st_bytes("9f2c41")},
                       {"model.safetensors": st_bytes("03be77")})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    [diff] = v.differences["weights"]
    assert (diff.where, diff.kind, diff.stats["container"]) == (
        "weights/model.safetensors", "bytes", True)
    assert "__metadata__ key differ ('note': '9f2c41' → '03be77')" in diff.comments[0]
    assert "metadata_outputs" in diff.comments[1]


def test_metadata_outputs_accepts_it_within_tolerance_as_a_loosening(pair: EvidencePair) -> None:
    left, right = pair({"model.safetensors": st_bytes("9f2c41")},
                       {"model.safetensors": st_bytes(None)})
    policy = Policy(metadata_outputs=("*.safetensors",))
    v = verdict(left, right, policy)
    assert v.level == "reproduced-within-tolerance"  # never bitwise: the bytes differ
    assert [(x.kind, x.detail.split(":")[0]) for x in from_verdict(v)] == [
        ("metadata_outputs", "metadata_outputs")]
    assert verdict(left, right, Policy(metadata_outputs=("*.safetensors",), bitwise=True)
                   ).level == "not-reproduced"


def test_identical_safetensors_files_stay_bitwise(pair: EvidencePair) -> None:
    left, right = pair({"model.safetensors": st_bytes("n")}, {"model.safetensors": st_bytes("n")})
    assert verdict(left, right).level == "reproduced-bitwise"


def torch_bytes(obj: object, folder: str) -> bytes:
    torch = pytest.importorskip("torch")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"{folder}.pt")
        torch.save(obj, path)
        return path.read_bytes()


def test_a_torch_zip_with_another_folder_counts(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    weights = {"w": torch.arange(4.0)}
    left, right = pair({"model.pt": torch_bytes(weights, "model")},
                       {"model.pt": torch_bytes(weights, "c0ffee")})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    [diff] = v.differences["weights"]
    assert "the zip's folder is model vs c0ffee" in diff.comments[0]


def test_a_torch_file_saved_twice_under_its_name_is_bitwise(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    weights = {"w": torch.arange(4.0)}
    left, right = pair({"model.pt": torch_bytes(weights, "model")},
                       {"model.pt": torch_bytes(weights, "model")})
    assert verdict(left, right).level == "reproduced-bitwise"


def test_a_torch_zip_with_an_extra_record_counts(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")
    clean = torch_bytes({"w": torch.arange(4.0)}, "model")
    buffer = io.BytesIO(clean)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("model/extra/note", "a random note")
    left, right = pair({"model.pt": clean}, {"model.pt": buffer.getvalue()})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    assert "records differ in content, size or timestamp: extra/note" in (
        v.differences["weights"][0].comments[0])


def npz_bytes(when: tuple[int, int, int, int, int, int]) -> bytes:
    buffer, member = io.BytesIO(), io.BytesIO()
    np.save(member, np.arange(3.0))
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("x.npy", date_time=when), member.getvalue())
    return buffer.getvalue()


def test_an_npz_whose_timestamps_differ_counts(pair: EvidencePair) -> None:
    left, right = pair({"a.npz": npz_bytes((2026, 12, 1, 5, 30, 0))},
                       {"a.npz": npz_bytes((2026, 12, 1, 7, 0, 0))})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    assert "x.npy" in v.differences["weights"][0].comments[0]
    assert verdict(left, right, Policy(metadata_outputs=("a.npz",))).level == (
        "reproduced-within-tolerance")


# -- 3. masks are for logs ----------------------------------------------------------------

TIMING_A = (b"worker 0x7f3a9c2b1d7e pid 4242 started 05:30:01\n"
            b"epoch took 3.2 s, 1.52 it/s\n")
TIMING_B = (b"worker 0x0badc0ffee42 pid 17 started 07:12:44\n"
            b"epoch took 4.1 s, 0.66 it/s\n")


def test_a_text_output_of_hex_words_times_and_pids_is_not_masked(pair: EvidencePair) -> None:
    left, right = pair({"timing.txt": TIMING_A}, {"timing.txt": TIMING_B})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    [diff] = v.differences["files"]
    assert diff.details[0].left == "worker 0x7f3a9c2b1d7e pid 4242 started 05:30:01"
    assert next(s.name for s in subjects_of(left.record, v)) == "timing.txt"


def test_mask_outputs_applies_the_log_masks_to_a_named_output(pair: EvidencePair) -> None:
    left, right = pair({"timing.txt": TIMING_A, "other.txt": b"x\n"},
                       {"timing.txt": TIMING_B, "other.txt": b"x\n"})
    policy = Policy(mask_outputs=("timing.txt",))
    v = verdict(left, right, policy)
    assert v.level == "reproduced-within-tolerance"
    assert [x.kind for x in from_verdict(v)] == ["mask_outputs"]
    assert loosenings(policy)[0].startswith("mask_outputs: the log masks")


def test_a_log_output_is_still_masked(pair: EvidencePair) -> None:
    left, right = pair({"train.log": TIMING_A, "model.bin": b"m"},
                       {"train.log": TIMING_B, "model.bin": b"m"})
    v = verdict(left, right)
    assert v.level == "reproduced-bitwise" and v.outputs.informational == ["train.log"]


def test_a_time_in_a_checkpoint_string_counts_unless_masked(pair: EvidencePair) -> None:
    torch = pytest.importorskip("torch")

    def ckpt(saved_at: str) -> bytes:
        return torch_bytes({"w": torch.ones(2), "saved_at": saved_at}, "c")

    left, right = pair({"c.pt": ckpt("2026-12-01 05:30:00")},
                       {"c.pt": ckpt("2026-12-01 07:00:12")})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    assert [d.where for d in v.differences["weights"]] == ["weights/c.pt/saved_at"]
    assert verdict(left, right, Policy(mask_outputs=("c.pt",))).level == (
        "reproduced-within-tolerance")


def test_the_new_keys_read_from_a_policy_file(tmp_path: Path) -> None:
    from auditor.core.policy import load_policy

    path = tmp_path / "auditor.toml"
    path.write_text('[verify]\nmask_outputs = ["timing.txt"]\n'
                    'metadata_outputs = ["outputs/*.safetensors"]\n')
    policy = load_policy(path)
    assert policy.compare.is_masked_output("outputs/timing.txt")
    assert policy.compare.metadata_may_differ("outputs/model.safetensors")
    assert not policy.compare.is_masked_output("outputs/model.txt")
    assert [line.split(":")[0] for line in loosenings(policy)] == ["mask_outputs",
                                                                    "metadata_outputs"]



def test_event_files_with_bytes_outside_their_records_count(pair: EvidencePair,
                                                            tmp_path: Path) -> None:
    from tests.unit.test_compare_time_in_outputs import event_file

    a = event_file(tmp_path / "ea", [0.9, 0.5])
    b = event_file(tmp_path / "eb", [0.9, 0.5])
    name = "runs/events.out.tfevents.1.h.1.0"
    left, right = pair({name: a}, {name: b})
    assert verdict(left, right).level == "reproduced-within-tolerance"  # wall_time: never bitwise
    left, right = pair({name: a}, {name: b + b"hidden bytes"})
    v = verdict(left, right)
    assert v.level == "not-reproduced"
    assert "bytes lie outside the records" in v.differences["files"][0].comments[0]
