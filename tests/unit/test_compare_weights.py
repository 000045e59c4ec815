"""The weights comparer: the four standard tests, then policies, dtypes, formats (T22-T25)."""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from safetensors.numpy import save_file

from auditor.compare import weights
from auditor.compare.difference import Difference
from auditor.compare.weights import WEIGHT_SUFFIXES, compare_weight_files, is_weights_file
from auditor.core.errors import InputError
from auditor.core.policy import ComparePolicy, Tolerance

STATS = {"elements", "differing", "max_abs", "max_rel", "max_ulp", "cosine", "dtype", "shape"}


def save(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def pair(tmp_path: Path, left: dict[str, np.ndarray], right: dict[str, np.ndarray],
         policy: ComparePolicy | None = None) -> list[Difference]:
    a, b = save(tmp_path / "a.safetensors", left), save(tmp_path / "b.safetensors", right)
    return compare_weight_files(a, b, policy or ComparePolicy())


def one(diffs: list[Difference]) -> Difference:
    assert len(diffs) == 1, diffs
    return diffs[0]


def bump(values: np.ndarray, index: int, ulps: int = 1) -> np.ndarray:
    """A copy with one element moved by ``ulps`` units in the last place."""
    out = values.copy()
    bits = out.reshape(-1).view(f"i{out.itemsize}")
    bits[index] += ulps
    return out


# --- the four standard tests ------------------------------------------------------------


def test_recognises_weight_files() -> None:
    for suffix in WEIGHT_SUFFIXES:
        assert is_weights_file(Path(f"out/model{suffix}"))
        assert is_weights_file(Path(f"MODEL{suffix.upper()}"))
    for name in ("metrics.json", "train.log", "model.onnx.txt", "safetensors"):
        assert not is_weights_file(Path(name))


def test_self_compare_is_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "w": rng.standard_normal((8, 8), dtype=np.float32), "h": np.ones(3, np.float16),
        "d": np.arange(4.0), "i": np.arange(5), "m": np.array([True, False]),
        "nan": np.array([np.nan, 1.0, -np.inf], np.float32), "empty": np.zeros((0, 3), np.float32)}
    path = save(tmp_path / "a.safetensors", tensors)
    assert compare_weight_files(path, path, ComparePolicy()) == []
    assert compare_weight_files(path, path, ComparePolicy(bitwise=True)) == []
    assert pair(tmp_path, tensors, {k: v.copy() for k, v in tensors.items()}) == []


def test_golden_difference_with_known_numbers(tmp_path: Path) -> None:
    left = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    right = np.array([[1.0, 2.5], [3.0, 4.0]], np.float32)
    diff = one(pair(tmp_path, {"fc1.weight": left}, {"fc1.weight": right}))
    assert (diff.where, diff.kind, diff.magnitude) == ("weights/fc1.weight", "value", 0.5)
    assert not diff.within_tolerance
    assert set(diff.stats) == STATS
    assert diff.stats | {"cosine": None} == {
        "elements": 4, "differing": 1, "max_abs": 0.5, "max_rel": 0.25,
        "max_ulp": 0x40200000 - 0x40000000, "cosine": None, "dtype": "float32", "shape": "(2, 2)"}
    assert diff.stats["cosine"] == pytest.approx(31 / math.sqrt(30 * 32.25), abs=1e-12)
    assert diff.comments[0].startswith("fc1.weight: 1 of 4 elements differ")


def test_missing_input_file_names_it(tmp_path: Path) -> None:
    path = save(tmp_path / "a.safetensors", {"w": np.ones(2, np.float32)})
    with pytest.raises(InputError, match=r"model.safetensors: weights file not found") as err:
        compare_weight_files(path, tmp_path / "model.safetensors", ComparePolicy())
    assert err.value.exit_code == 2


def test_equal_digests_short_cut_without_reading(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.safetensors"
    assert compare_weight_files(missing, missing, ComparePolicy(), left_sha256="ab" * 32,
                                right_sha256="ab" * 32) == []


# --- structure (T25) ---------------------------------------------------------------------


def test_shape_and_dtype_changes_are_reported_not_raised(tmp_path: Path) -> None:
    left = {"layer3.weight": np.zeros((64, 32), np.float32), "layer4.bias": np.zeros(4, np.float32)}
    right: dict[str, np.ndarray] = {"layer3.weight": np.zeros((64, 33), np.float32),
             "layer4.bias": np.zeros(4, np.float16)}
    shape, dtype = pair(tmp_path, left, right)
    assert (shape.kind, shape.left, shape.right) == ("shape", "(64, 32)", "(64, 33)")
    assert shape.comments == ("layer3.weight: shape (64, 32) vs (64, 33)",)
    assert (dtype.kind, dtype.left, dtype.right) == ("dtype", "float32", "float16")
    assert dtype.where == "weights/layer4.bias"
    assert not shape.within_tolerance and not dtype.within_tolerance


def test_missing_and_extra_tensors_are_listed(tmp_path: Path) -> None:
    w = np.ones(3, np.float32)
    diffs = pair(tmp_path, {"a": w, "gone": w}, {"a": w, "new": w})
    assert [(d.kind, d.where) for d in diffs] == [("missing", "weights/gone"),
                                                  ("extra", "weights/new")]
    assert not any(d.within_tolerance for d in diffs)


# --- values, NaN and policies -----------------------------------------------------------


def test_nan_at_the_same_place_is_equal_only_under_nan_equal(tmp_path: Path) -> None:
    values = np.array([1.0, np.nan, 3.0], np.float32)
    assert pair(tmp_path, {"w": values}, {"w": values.copy()}) == []
    diff = one(pair(tmp_path, {"w": values}, {"w": values.copy()}, ComparePolicy(nan_equal=False)))
    assert diff.stats["differing"] == 1 and not diff.within_tolerance


def test_nan_against_a_number_differs(tmp_path: Path) -> None:
    left = np.array([1.0, np.nan, 3.0, np.inf], np.float32)
    right = np.array([1.0, 2.0, 3.0, np.inf], np.float32)
    diff = one(pair(tmp_path, {"w": left}, {"w": right}))
    assert diff.stats["differing"] == 1 and diff.magnitude == math.inf and not diff.within_tolerance
    assert "1 elements are NaN or infinite on one side only" in diff.comments


def test_one_ulp_fails_bitwise_but_is_within_tolerance(tmp_path: Path) -> None:
    values = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    moved = bump(values, 17)
    loose = one(pair(tmp_path, {"w": values}, {"w": moved}))
    assert loose.within_tolerance and loose.stats["max_ulp"] == 1 and loose.stats["differing"] == 1
    strict = one(pair(tmp_path, {"w": values}, {"w": moved}, ComparePolicy(bitwise=True)))
    assert not strict.within_tolerance and "bitwise policy: any difference fails" in strict.comments


def test_tolerance_is_per_tensor_and_relative_to_the_original(tmp_path: Path) -> None:
    left = {"fc.weight": np.full(4, 100.0, np.float32), "fc.bias": np.full(4, 100.0, np.float32)}
    right = {k: v + np.float32(0.01) for k, v in left.items()}
    policy = ComparePolicy(tensors={"*.bias": Tolerance(rtol=1e-3, atol=0.0)})
    found = {d.where: d for d in pair(tmp_path, left, right, policy)}
    weight, bias = found["weights/fc.weight"], found["weights/fc.bias"]
    assert not weight.within_tolerance and bias.within_tolerance
    assert bias.stats["max_rel"] == pytest.approx(1e-4, rel=1e-3)


def test_integer_tensors_are_exact(tmp_path: Path) -> None:
    loose = ComparePolicy(dtype_tolerances={"float32": Tolerance(rtol=1.0, atol=10.0)})
    diff = one(pair(tmp_path, {"step": np.array([41, 7])}, {"step": np.array([42, 7])}, loose))
    assert diff.stats["max_abs"] == 1.0 and diff.stats["max_ulp"] is None
    assert not diff.within_tolerance


def test_ulp_distance_across_zero(tmp_path: Path) -> None:
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    left, right = np.array([tiny, 0.0, -0.0], np.float32), np.array([-tiny, -0.0, 0.0], np.float32)
    diff = one(pair(tmp_path, {"w": left}, {"w": right}))
    assert diff.stats["max_ulp"] == 2 and diff.stats["differing"] == 3


def test_cosine_resolves_tiny_differences(tmp_path: Path) -> None:
    left = np.random.default_rng(2).standard_normal(50_000).astype(np.float32)
    right = (left * np.float32(1 + 1e-6)).astype(np.float32)
    right[::7] += np.float32(1e-6)
    diff = one(pair(tmp_path, {"w": left}, {"w": right}))
    a, b = left.astype(np.float64), right.astype(np.float64)
    exact = a @ b / math.sqrt((a @ a) * (b @ b))
    cosine = diff.stats["cosine"]
    assert isinstance(cosine, float) and 1 - cosine == pytest.approx(1 - exact, rel=1e-3)


def test_chunks_and_threads_give_the_same_statistics(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    left: dict[str, np.ndarray] = {"w": rng.standard_normal(1000).astype(np.float32),
                                   "i": np.arange(1000)}
    right = {"w": left["w"] + rng.standard_normal(1000).astype(np.float32) * np.float32(1e-3),
             "i": np.where(np.arange(1000) % 97 == 0, 0, left["i"])}
    right["w"][500:600] = left["w"][500:600]
    whole = pair(tmp_path, left, right)
    monkeypatch.setattr(weights, "CHUNK", 16)
    monkeypatch.setattr(weights, "SCAN_CHUNK", 64)
    chunked = pair(tmp_path, left, right)
    for a, b in zip(whole, chunked, strict=True):
        assert a.stats | {"cosine": 0} == b.stats | {"cosine": 0}
        assert a.stats["cosine"] == pytest.approx(b.stats["cosine"], abs=1e-9)
        assert a.within_tolerance == b.within_tolerance


def test_memory_stays_a_few_chunks_whatever_the_size(tmp_path: Path) -> None:
    left = np.arange(1 << 24, dtype=np.float32)  # 64 MiB per file, every element differs
    right = left * np.float32(1 + 1e-6) + np.float32(1e-3)
    a = save(tmp_path / "a.safetensors", {"w": left})
    b = save(tmp_path / "b.safetensors", {"w": right})
    del left, right
    tracemalloc.start()
    try:
        diff = one(compare_weight_files(a, b, ComparePolicy()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert diff.stats["differing"] == 1 << 24
    assert peak < 16 << 20, f"{peak / 2**20:.1f} MiB traced for two 64 MiB files"


def _ordered(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(2**31) - bits, bits)


BOUND = float(np.float32(1e30))
finite32 = st.floats(-BOUND, BOUND, width=32)


@settings(max_examples=40, deadline=None, database=None)
@given(left=arrays(np.float32, st.integers(1, 40), elements=finite32),
       data=st.data())
def test_statistics_match_a_reference(tmp_path_factory: pytest.TempPathFactory, left: np.ndarray,
                                      data: st.DataObject) -> None:
    right = data.draw(arrays(np.float32, left.shape, elements=finite32))
    right = np.where(data.draw(arrays(np.bool_, left.shape)), left, right)
    diffs = pair(tmp_path_factory.mktemp("ref"), {"w": left}, {"w": right})
    differing = int(np.count_nonzero(left.view(np.int32) != right.view(np.int32)))
    if differing == 0:
        assert diffs == []
        return
    stats = one(diffs).stats
    with np.errstate(over="ignore"):
        max_abs = float(np.max(np.abs(right - left)))
    assert stats["differing"] == differing and stats["max_abs"] == max_abs
    assert stats["max_ulp"] == int(np.max(np.abs(_ordered(left) - _ordered(right))))


# --- dtypes and formats ------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


def test_bfloat16_one_ulp(tmp_path: Path, torch: Any) -> None:
    from safetensors.torch import save_file as save_torch

    values = torch.tensor([1.0, -2.5, 3.140625, 0.0], dtype=torch.bfloat16)
    moved = values.clone()
    moved.view(torch.int16)[2] += 1
    save_torch({"b": values}, str(tmp_path / "a.safetensors"))
    save_torch({"b": moved}, str(tmp_path / "b.safetensors"))
    diff = one(compare_weight_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                                    ComparePolicy()))
    assert diff.stats["dtype"] == "bfloat16" and diff.stats["max_ulp"] == 1
    assert diff.magnitude == pytest.approx(float(moved[2]) - float(values[2]))
    assert diff.within_tolerance  # bf16 tolerance rtol 1.6e-2


def test_float16_and_float8_decoding(tmp_path: Path, torch: Any) -> None:
    from safetensors.torch import save_file as save_torch

    half = np.array([1.0, 2.0, -3.0], np.float16)
    diff = one(pair(tmp_path, {"h": half}, {"h": bump(half, 1, 3)}))
    assert diff.stats["max_ulp"] == 3 and diff.stats["dtype"] == "float16"
    codes = torch.arange(256, dtype=torch.uint8)
    for dtype in ("float8_e4m3fn", "float8_e5m2"):
        expected = codes.view(getattr(torch, dtype)).float().numpy()
        decoded = np.empty(256, np.float32)
        weights._FLOATS[dtype].decode(codes.numpy(), decoded)  # type: ignore[misc]
        np.testing.assert_array_equal(decoded, expected)
    save_torch({"q": codes.view(torch.float8_e4m3fn)}, str(tmp_path / "q.safetensors"))
    same = tmp_path / "q.safetensors"
    assert compare_weight_files(same, same, ComparePolicy()) == []


def unaligned(path: Path, b: np.ndarray) -> Path:
    """A safetensors file whose float64 tensor starts at byte 3 of the data (legal, packed)."""
    header = json.dumps({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                         "b": {"dtype": "F64", "shape": [4], "data_offsets": [3, 35]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(3) + b.tobytes())
    return path


def test_unaligned_tensors(tmp_path: Path) -> None:
    left = unaligned(tmp_path / "a.safetensors", np.arange(4.0))
    right = unaligned(tmp_path / "b.safetensors", np.array([0.0, 1.0, 2.5, 3.0]))
    assert compare_weight_files(left, left, ComparePolicy()) == []
    diff = one(compare_weight_files(left, right, ComparePolicy()))
    assert diff.where == "weights/b" and diff.stats["max_abs"] == 0.5 and diff.stats["max_ulp"]


def test_npz_members_compare_by_name(tmp_path: Path) -> None:
    a = {"w": np.arange(6, dtype=np.float32), "b": np.zeros(2, np.float32)}
    np.savez(tmp_path / "a.npz", w=a["w"], b=a["b"])
    np.savez_compressed(tmp_path / "b.npz", w=a["w"], b=np.ones(2, np.float32))
    diff = one(compare_weight_files(tmp_path / "a.npz", tmp_path / "b.npz", ComparePolicy()))
    assert diff.where == "weights/b" and diff.stats["differing"] == 2


def _model(torch: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def adam_state(torch: Any, model: Any, step: int) -> dict[str, Any]:
    """The layout of ``torch.optim.Adam(...).state_dict()`` (importing torch.optim takes 2 s)."""
    state = {i: {"step": torch.tensor(float(step)), "exp_avg": p.detach() * 0.1 * step,
                 "exp_avg_sq": p.detach() ** 2 * 0.01}
             for i, p in enumerate(model.parameters())}
    return {"state": state, "param_groups": [{"lr": 0.1, "params": list(state)}]}


def test_nested_state_dict_with_optimizer(tmp_path: Path, torch: Any) -> None:
    model, paths = _model(torch, 0), list[Path]()
    for step in (1, 2):
        with torch.no_grad():
            model[0].weight += 0.01
        paths.append(tmp_path / f"ckpt{step}.pt")
        checkpoint = {"model": model.state_dict(), "optimizer": adam_state(torch, model, step)}
        torch.save(checkpoint, paths[-1])
    wheres = [d.where for d in compare_weight_files(paths[0], paths[1], ComparePolicy())]
    assert wheres == ["weights/model.0.weight", "weights/optimizer.state.0.step",
                      "weights/optimizer.state.0.exp_avg", "weights/optimizer.state.0.exp_avg_sq",
                      *(f"weights/optimizer.state.{i}.{k}" for i in (1, 2, 3)
                        for k in ("step", "exp_avg"))]
    assert compare_weight_files(paths[0], paths[0], ComparePolicy()) == []


def test_whole_module_save_compares_through_the_safe_path(tmp_path: Path, torch: Any) -> None:
    model = _model(torch, 0)
    torch.save(model, tmp_path / "module.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    same = compare_weight_files(tmp_path / "module.pt", tmp_path / "state.pt", ComparePolicy())
    assert same == []
    torch.save(_model(torch, 1), tmp_path / "other.pt")
    diffs = compare_weight_files(tmp_path / "module.pt", tmp_path / "other.pt", ComparePolicy())
    assert [d.where for d in diffs] == ["weights/0.weight", "weights/0.bias",
                                        "weights/2.weight", "weights/2.bias"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, torch: Any) -> None:
    marker = tmp_path / "marker"
    torch.save({"w": torch.ones(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    for left, right in (("evil.pt", "good.pt"), ("good.pt", "evil.pt")):
        with pytest.raises(InputError, match=r"evil.pt: refused") as err:
            compare_weight_files(tmp_path / left, tmp_path / right, ComparePolicy())
        assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert not marker.exists()


def test_truncated_and_zero_byte_checkpoints(tmp_path: Path, torch: Any) -> None:
    torch.save({"w": torch.ones(1000)}, tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"model.pt: truncated or corrupt"):
        compare_weight_files(tmp_path / "good.pt", tmp_path / "model.pt", ComparePolicy())
    with pytest.raises(InputError, match=r"empty.pt: empty"):
        compare_weight_files(tmp_path / "empty.pt", tmp_path / "good.pt", ComparePolicy())
