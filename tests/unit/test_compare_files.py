"""The file comparers: outputs by digest, text line by line after masks, binary by bytes,
logs as information only; the thin weights comparer of the registry; and the Evidence
read from a store (artifacts re-hashed first)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from auditor.compare import Evidence, evidence_from_store, files
from auditor.core.errors import InputError, IntegrityError
from auditor.core.policy import ComparePolicy
from auditor.core.schema import (
    ArtifactRef,
    MetricsSummary,
)
from auditor.store import MetricPoint, SqlStore
from tests.factories import EvidencePair, make_record

REPORT = b"epoch 1 loss 0.5\nepoch 2 loss 0.4\nepoch 3 loss 0.3\n"


# -- the four standard tests -------------------------------------------------------------


def test_recognises_outputs_and_leaves_weights_to_the_weights_comparer(pair: EvidencePair) -> None:
    left, right = pair({"out/report.txt": REPORT, "out/model.safetensors": b"x"},
                       {"out/report.txt": REPORT + b"more\n", "out/model.safetensors": b"y"})
    found = files.compare(left, right, ComparePolicy())
    assert [d.where for d in found] == ["files/out/report.txt"]


def test_self_compare_is_empty(pair: EvidencePair) -> None:
    left, right = pair({"out/report.txt": REPORT, "out/blob.dat": b"\0\1\2"},
                       {"out/report.txt": REPORT, "out/blob.dat": b"\0\1\2"})
    assert files.compare(left, right, ComparePolicy()) == []
    assert files.compare_weights(left, right, ComparePolicy()) == []


def test_golden_text_difference(pair: EvidencePair) -> None:
    changed = b"epoch 1 loss 0.5\nepoch 2 loss 0.41\nepoch 3 loss 0.3\n"
    left, right = pair({"out/report.txt": REPORT}, {"out/report.txt": changed})
    (diff,) = files.compare(left, right, ComparePolicy())
    assert (diff.where, diff.kind, diff.within_tolerance) == ("files/out/report.txt", "text", False)
    assert diff.stats == {"left_lines": 4, "right_lines": 4, "changed_lines": 1, "first_line": 2}
    (line,) = diff.details
    assert line.where == "files/out/report.txt@line 2"
    assert (line.left, line.right) == ("epoch 2 loss 0.4", "epoch 2 loss 0.41")


def test_golden_binary_difference(pair: EvidencePair) -> None:
    left, right = pair({"out/blob.dat": b"\0\1\2\3\4"}, {"out/blob.dat": b"\0\1\2\7\4\5"})
    (diff,) = files.compare(left, right, ComparePolicy())
    assert diff.kind == "bytes" and not diff.within_tolerance
    assert diff.stats == {"left_size": 5, "right_size": 6, "first_offset": 3}


def test_missing_and_extra_outputs(pair: EvidencePair) -> None:
    left, right = pair({"out/a.txt": b"a\n"}, {"out/b.txt": b"b\n"})
    diffs = files.compare(left, right, ComparePolicy())
    assert [(d.where, d.kind) for d in diffs] == [("files/out/a.txt", "missing"),
                                                  ("files/out/b.txt", "extra")]
    digest = hashlib.sha256(b"a\n").hexdigest()
    assert diffs[0].left == f"sha256:{digest[:12]} (2 bytes)"


def test_file_not_available_is_an_error_difference(pair: EvidencePair) -> None:
    left, right = pair({"out/a.txt": b"a\n"}, {"out/a.txt": b"b\n"})
    right = Evidence(right.record, {}, (), right.series)
    (diff,) = files.compare(left, right, ComparePolicy())
    assert diff.kind == "error" and "rerun's file is not available" in diff.comments[0]


# -- masks and logs ----------------------------------------------------------------------


def test_text_differing_only_in_timestamps_is_equal_after_masks(pair: EvidencePair) -> None:
    a = b"2025-01-01T10:00:00Z start\nstep 1 took 0.52s\nloss 0.5\n"
    b = b"2025-03-04T11:12:13Z start\nstep 1 took 0.61s\nloss 0.5\n"
    left, right = pair({"out/run.txt": a, "logs/stdout.txt": a},
                       {"out/run.txt": b, "logs/stdout.txt": b}, logs=("logs/stdout.txt",))
    masked = ComparePolicy(mask_outputs=("out/run.txt",))  # masks apply to logs, else named
    (diff,) = files.compare(left, right, masked)  # the log says nothing at all
    assert diff.where == "files/out/run.txt" and diff.within_tolerance
    assert diff.stats == {"masked_only": True}
    (diff,) = files.compare(left, right, ComparePolicy())  # an output is not masked
    assert diff.where == "files/out/run.txt" and not diff.within_tolerance


def test_masked_text_that_still_differs_is_reported(pair: EvidencePair) -> None:
    a = b"10:00:00 step 1 loss 0.5\n10:00:01 step 2 loss 0.4\n"
    b = b"11:00:00 step 1 loss 0.5\n11:00:01 step 2 loss 0.9\n"
    left, right = pair({"out/run.txt": a}, {"out/run.txt": b})
    (diff,) = files.compare(left, right, ComparePolicy(mask_outputs=("out/*",)))
    assert diff.stats["first_line"] == 2 and not diff.within_tolerance
    assert diff.details[0].left == "<masked> step 2 loss 0.4"


def test_log_differences_are_informational(pair: EvidencePair) -> None:
    left, right = pair({"logs/stderr.txt": b"warning A\n", "out/m.bin": b"m"},
                       {"logs/stderr.txt": b"warning B\n", "out/m.bin": b"m"},
                       logs=("logs/stderr.txt",))  # out/m.bin is the evidence
    (diff,) = files.compare(left, right, ComparePolicy())
    assert diff.within_tolerance and diff.stats["informational"] is True
    assert files.compare(left, right, ComparePolicy(compare_logs="off")) == []


def test_ignored_outputs_are_not_compared(pair: EvidencePair) -> None:
    left, right = pair({"out/timing.json": b"1"}, {"out/timing.json": b"2"})
    assert files.compare(left, right, ComparePolicy(ignore_outputs=("out/timing*",))) == []


def test_a_bad_mask_is_an_input_error(pair: EvidencePair) -> None:
    left, right = pair({"out/a.txt": b"a\n"}, {"out/a.txt": b"b\n"})
    with pytest.raises(InputError, match="not a valid regex"):
        files.compare(left, right, ComparePolicy(log_masks=("(",)))


def test_first_differing_offset(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(bytes(3 << 20))
    b.write_bytes(bytes(3 << 20) + b"!")
    assert files.first_differing_offset(a, b) == 3 << 20
    b.write_bytes(bytes(2 << 20) + b"!" + bytes((1 << 20) - 1))
    assert files.first_differing_offset(a, b) == 2 << 20
    assert files.first_differing_offset(a, a) is None


# -- the weights comparer of the registry (the tensor work is weights.py's) --------------


def npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_weights_missing_extra_and_delegated(pair: EvidencePair) -> None:
    w = npy(np.arange(4, dtype=np.float32))
    w2 = npy(np.arange(4, dtype=np.float32) + 1)
    left, right = pair({"out/a.npy": w, "out/b.npy": w}, {"out/b.npy": w2, "out/c.npy": w})
    diffs = files.compare_weights(left, right, ComparePolicy())
    assert (diffs[0].where, diffs[0].kind) == ("weights/out/a.npy", "missing")
    assert diffs[-1].where == "weights/out/c.npy" and diffs[-1].kind == "extra"
    assert all(d.where.startswith("weights/out/b.npy") for d in diffs[1:-1]) and diffs[1:-1]


def test_unreadable_weights_that_differ_count_beyond_tolerance(pair: EvidencePair) -> None:
    """No reader explains bytes it cannot read: the difference counts (not bad input)."""
    left, right = pair({"out/model.safetensors": b"\x08\0\0\0\0\0\0\0{bad json"},
                       {"out/model.safetensors": b"\x08\0\0\0\0\0\0\0{also bad"})
    [diff] = files.compare_weights(left, right, ComparePolicy())
    assert (diff.where, diff.kind, diff.within_tolerance) == (
        "weights/out/model.safetensors", "bytes", False)
    assert "cannot explain them" in diff.comments[0] and "model.safetensors" in diff.comments[0]
    assert diff.stats["first_offset"] == 9


# -- evidence from the store ---------------------------------------------------------------


def test_evidence_from_store_reads_verified_files_and_series(store: SqlStore) -> None:
    sha, size = store.blobs.put_bytes(b"loss 0.5\n")
    log_sha, log_size = store.blobs.put_bytes(b"hello\n")
    record = make_record(
        metrics=MetricsSummary(final={"loss": 0.5}),
        artifacts=(ArtifactRef(name="out/r.txt", sha256=sha, size=size, kind="output"),
                   ArtifactRef(name="logs/stdout.txt", sha256=log_sha, size=log_size, kind="log"),
                   ArtifactRef(name="code/x.py", sha256=sha, size=size, kind="code")))
    store.put_record(record)
    store.add_metrics(record.identity.id, [MetricPoint("loss", 0, 1.0, 0.0),
                                           MetricPoint("acc", 0, 0.1, 0.0),
                                           MetricPoint("loss", 1, 0.5, 1.0)])
    ev = evidence_from_store(store, record)
    assert sorted(ev.files) == ["logs/stdout.txt", "out/r.txt"]
    assert ev.files["out/r.txt"].read_bytes() == b"loss 0.5\n"
    assert ev.metric_keys == ("loss",) and list(ev.series("loss")) == [(0, 1.0), (1, 0.5)]
    path = store.blobs.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(b"loss 0.6\n")
    with pytest.raises(IntegrityError, match="altered"):
        evidence_from_store(store, record)
