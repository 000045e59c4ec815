"""The safe weight-file readers: every malformed safetensors case, numpy, torch paths (T22-T24)."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from auditor.compare import tensorfile
from auditor.compare.tensorfile import PickleRefused
from auditor.compare.tensors import read_tensors
from auditor.core.errors import InputError

PACKAGE = Path(tensorfile.__file__).resolve().parent.parent


def write_st(path: Path, header: bytes | dict[str, Any], data: bytes = b"",
             length: int | None = None) -> Path:
    """A safetensors file from a raw or JSON header, data bytes and an optional lying length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def f32(offsets: list[int], shape: list[int] | None = None, dtype: str = "F32") -> dict[str, Any]:
    shape = shape or [(offsets[1] - offsets[0]) // 4]
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


GOOD = {"a": f32([0, 8]), "b": f32([8, 16])}
MALFORMED: dict[str, tuple[bytes | dict[str, Any], bytes, int | None, str]] = {
    "empty header": (b"", b"", None, "does not start with '{'"),
    "header length > file size": (GOOD, bytes(16), 10_000, "exceeds the file size"),
    "header > 100 MB": (GOOD, bytes(16), 200_000_000, "exceeds the 100000000 byte limit"),
    "first byte not {": (b'["a"]', b"", None, "does not start with '{'"),
    "invalid JSON": (b'{"a": ', b"", None, "not valid JSON"),
    "NaN literal": (b'{"a": NaN}', b"", None, "not valid JSON"),
    "not UTF-8": (b'{"\xff": 1}', b"", None, "not valid JSON"),
    "duplicate names": (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                        bytes(8), None, "duplicate tensor name 'a'"),
    "overlapping offsets": ({"a": f32([0, 8]), "b": f32([4, 12])}, bytes(12), None, "overlap"),
    "hole": ({"a": f32([0, 8]), "b": f32([12, 20])}, bytes(20), None,
             "hole of 4 bytes before tensor 'b'"),
    "trailing bytes": (GOOD, bytes(20), None, "4 unused bytes after the last tensor"),
    "offsets past EOF": (GOOD, bytes(12), None, "past end of file"),
    "dtype/shape mismatch": ({"a": f32([0, 8], shape=[3])}, bytes(8), None, "size mismatch"),
    "metadata not strings": ({"__metadata__": {"epoch": 3}, **GOOD}, bytes(16), None,
                             "__metadata__ must map strings to strings"),
    "unknown dtype": ({"a": f32([0, 8], dtype="F33")}, bytes(8), None, "unknown dtype 'F33'"),
    "negative shape": ({"a": f32([0, 8], shape=[-2])}, bytes(8), None, "shape must be"),
    "reversed offsets": ({"a": f32([8, 0], shape=[2])}, bytes(8), None, "data_offsets must be"),
    "entry not an object": ({"a": [1, 2]}, b"", None, "entry needs exactly"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_rejected_with_named_reason(tmp_path: Path, case: str) -> None:
    header, data, length, reason = MALFORMED[case]
    path = write_st(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(InputError, match=r"invalid safetensors") as err:
        read_tensors(path)
    assert reason in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_file_shorter_than_the_length_field(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02\x03")
    with pytest.raises(InputError, match=r"short.safetensors: invalid safetensors file: truncated"):
        read_tensors(tmp_path / "short.safetensors")


@settings(max_examples=150, deadline=None, database=None)
@given(header=st.binary(max_size=200), data=st.binary(max_size=64))
def test_any_header_bytes_give_tensors_or_input_error(tmp_path_factory: pytest.TempPathFactory,
                                                      header: bytes, data: bytes) -> None:
    path = write_st(tmp_path_factory.mktemp("fuzz") / "x.safetensors", header, data)
    try:
        tensors = read_tensors(path)
    except InputError:
        return
    assert all(t.array().nbytes <= len(data) for t in tensors.values())


def test_safetensors_reader_matches_the_reference_library(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(5, dtype=np.int64),
        "m": np.array([True, False]), "h": np.ones(3, np.float16),
        "empty": np.zeros((0, 4), np.float32)}
    save_file(arrays, str(tmp_path / "a.safetensors"), metadata={"format": "np"})
    tensors = read_tensors(tmp_path / "a.safetensors")
    assert set(tensors) == set(arrays)
    for name, array in arrays.items():
        assert tensors[name].shape == array.shape and tensors[name].dtype == str(array.dtype)
        np.testing.assert_array_equal(tensors[name].array(), array.reshape(-1))


def test_bfloat16_kept_as_bits(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    values = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    save_torch({"b": values}, str(tmp_path / "b.safetensors"))
    tensor = read_tensors(tmp_path / "b.safetensors")["b"]
    assert tensor.dtype == "bfloat16" and tensor.array().dtype == np.uint16
    np.testing.assert_array_equal(tensor.array(), values.view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("size", [0, None])
def test_missing_or_zero_byte_file(tmp_path: Path, size: int | None) -> None:
    path = tmp_path / "model.safetensors"
    if size is not None:
        path.write_bytes(b"")
    with pytest.raises(InputError, match=r"model.safetensors: (weights file not found|empty)"):
        read_tensors(path)


# --- numpy -------------------------------------------------------------------------------


def test_npy_and_npz_members(tmp_path: Path) -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "s.npz", a=a, b=b)
    np.savez_compressed(tmp_path / "c.npz", a=a, b=b)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    assert read_tensors(tmp_path / "a.npy")[""].shape == (2, 3)
    np.testing.assert_array_equal(read_tensors(tmp_path / "f.npy")[""].array(), a.reshape(-1))
    for name in ("s.npz", "c.npz"):
        tensors = read_tensors(tmp_path / name)
        assert list(tensors) == ["a", "b"]
        np.testing.assert_array_equal(tensors["b"].array(), b)


def test_numpy_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o.npy: invalid .npy file: object arrays"):
        read_tensors(tmp_path / "o.npy")


def test_truncated_npy_and_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones(100, np.float32))
    np.savez(tmp_path / "a.npz", a=np.ones(100, np.float32))
    for name in ("a.npy", "a.npz"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
        with pytest.raises(InputError, match=rf"{name}: truncated"):
            read_tensors(tmp_path / name)


# --- torch -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


def test_nested_checkpoint_is_flattened_to_dotted_names(tmp_path: Path, torch: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2, 3)}},
                 "param_groups": [{"lr": 0.1, "params": [0]}]}  # torch.optim.Adam's layout
    state = {"model": model.state_dict(), "optimizer": optimizer, "epoch": 3}
    torch.save(state, tmp_path / "ckpt.pt")
    tensors = read_tensors(tmp_path / "ckpt.pt")
    assert {"model.0.weight", "model.1.running_mean", "model.1.num_batches_tracked",
            "optimizer.state.0.exp_avg", "optimizer.state.0.step"} <= set(tensors)
    np.testing.assert_array_equal(tensors["model.0.weight"].array(),
                                  model[0].weight.detach().numpy().reshape(-1))


def test_whole_module_pickle_is_read_without_running_it(tmp_path: Path, torch: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model[0].weight.data[:] = torch.arange(6.0).reshape(2, 3)
    torch.save(model, tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    inert, plain = read_tensors(tmp_path / "model.pt"), read_tensors(tmp_path / "state.pt")
    assert list(inert) == list(plain)
    for name, tensor in plain.items():
        assert (inert[name].dtype, inert[name].shape) == (tensor.dtype, tensor.shape)
        np.testing.assert_array_equal(inert[name].array(), tensor.array())


def test_inert_reader_handles_views_bf16_and_shared_storage(tmp_path: Path, torch: Any) -> None:
    module = _holder(torch)  # a custom class: weights_only refuses it, the inert reader reads it
    torch.save(module, tmp_path / "holder.pt")
    found = read_tensors(tmp_path / "holder.pt")
    np.testing.assert_array_equal(found["t"].array(), module.t.contiguous().numpy().reshape(-1))
    np.testing.assert_array_equal(found["row"].array(), module.row.numpy())
    assert found["b"].dtype == "bfloat16"
    bits = module.b.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(found["b"].array(), bits)


def _holder(torch: Any) -> Any:
    base = torch.arange(12.0).reshape(3, 4)
    module = Holder()
    module.register_buffer("t", base.t())  # a non-contiguous view
    module.register_buffer("row", base[1])  # an offset into a shared storage
    module.register_buffer("b", torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    return module


try:  # a module-level custom class, so that torch.save can pickle it by reference
    import torch as _torch

    class Holder(_torch.nn.Module):
        """A module class that torch.load(weights_only=True) does not allow."""

except ImportError:  # pragma: no cover - torch is optional
    pass


class _Marker:
    """Pickles as a call that would create a marker file if anything unpickled it for real."""

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def _malicious(tmp_path: Path, torch: Any, call: Callable[..., Any], *args: Any) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "payload": _Marker(call, *args)}, path)
    return path


def test_malicious_pickle_never_runs_and_is_refused_in_one_line(tmp_path: Path, torch: Any) -> None:
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path, torch, os.system, f"touch {marker}")
    with pytest.raises(PickleRefused) as err:
        read_tensors(path)
    assert not marker.exists()
    message = str(err.value)
    assert "evil.pt" in message and "system" in message and "\n" not in message


def test_unknown_callables_stay_inert(tmp_path: Path, torch: Any) -> None:
    marker = tmp_path / "pwned.log"
    path = _malicious(tmp_path, torch, logging.FileHandler, str(marker))  # opening creates it
    assert list(read_tensors(path)) == ["w"]
    assert not marker.exists()


def test_getattr_chains_are_refused(tmp_path: Path, torch: Any) -> None:
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path, torch, Path.write_text, marker, "x")  # pickled via getattr
    with pytest.raises(PickleRefused, match=r"builtins.getattr"):
        read_tensors(path)
    assert not marker.exists()


def test_unsupported_tensor_layouts_name_file_and_tensor(tmp_path: Path, torch: Any) -> None:
    torch.save({"adjacency": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(InputError, match=r"sparse.pt: adjacency: unsupported tensor"):
        read_tensors(tmp_path / "sparse.pt")


STORAGE = object()  # stands for one 4-element float32 storage record in crafted pickles


class _Rebuild:
    """Pickles as a torch tensor-rebuild call with chosen arguments and an optional BUILD."""

    def __init__(self, torch: Any, size: tuple[int, ...], state: dict[str, Any] | None,
                 stride: tuple[int, ...] | None = None) -> None:
        self.call, self.size, self.state = torch._utils._rebuild_tensor_v2, size, state
        self.stride = stride or tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))

    def __reduce__(self) -> tuple[Any, ...]:
        args = (STORAGE, 0, self.size, self.stride, False, OrderedDict[str, Any]())
        return (self.call, args) if self.state is None else (self.call, args, self.state)


class Plain:
    """A class torch.load(weights_only=True) refuses, so that the inert reader takes over."""


def crafted_checkpoint(path: Path, torch: Any, obj: object) -> Path:
    """A torch-layout zip whose data.pkl is ``obj`` pickled with a storage record."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = (  # type: ignore[method-assign]
        lambda o: ("storage", torch.FloatStorage, "0", "cpu", 4) if o is STORAGE else None)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    return path


def test_crafted_records_cannot_escape_their_storage(tmp_path: Path, torch: Any) -> None:
    record = _Rebuild(torch, (2, 2), None)
    good = crafted_checkpoint(tmp_path / "good.pt", torch, {"m": Plain(), "w": record})
    np.testing.assert_array_equal(read_tensors(good)["w"].array(), np.arange(4, dtype=np.float32))
    cases = {"past the end of its storage": _Rebuild(torch, (100,), None),
             "larger than its storage": _Rebuild(torch, (10**12,), None, stride=(0,)),
             "rewrite a tensor record": _Rebuild(torch, (4,), {"source": "x"})}
    for reason, record in cases.items():
        path = crafted_checkpoint(tmp_path / "bad.pt", torch, {"m": Plain(), "w": record})
        with pytest.raises(PickleRefused, match=reason):
            read_tensors(path)


def test_legacy_pickle_refused_unless_trusted(tmp_path: Path, torch: Any) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(PickleRefused, match=r"old.pt: legacy"):
        read_tensors(path)
    assert list(read_tensors(path, allow_unsafe_pickle=True)) == ["w"]


def test_truncated_and_zero_byte_checkpoints(tmp_path: Path, torch: Any) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1000)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"model.pt: truncated or corrupt"):
        read_tensors(path)
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"model.pt: empty"):
        read_tensors(path)


def test_other_binaries_are_not_mistaken_for_pickles(tmp_path: Path, torch: Any) -> None:
    (tmp_path / "raw.bin").write_bytes(bytes(range(64)))
    with pytest.raises(InputError, match=r"raw.bin: not a torch checkpoint") as err:
        read_tensors(tmp_path / "raw.bin", allow_unsafe_pickle=True)
    assert not isinstance(err.value, PickleRefused)


def test_without_torch_safetensors_work_and_pt_says_why(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "a.pt").write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert list(read_tensors(tmp_path / "a.safetensors")) == ["w"]
    with pytest.raises(InputError, match=r"a.pt: torch is not installed"):
        read_tensors(tmp_path / "a.pt")


def test_full_unpickling_appears_once_and_only_behind_the_opt_in() -> None:
    sources = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
    hits = [(p, text) for p, text in sources.items() if "weights_only=False" in text]
    assert sum(text.count("weights_only=False") for _, text in hits) <= 1
    for path, text in hits:
        assert path.name == "torchfile.py"
        before = text[: text.index("weights_only=False")].rsplit("def ", 1)[1]
        assert "if not allow_unsafe_pickle:" in before and before.startswith("read_torch(")
