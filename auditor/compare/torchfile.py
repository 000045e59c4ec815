"""Torch checkpoints, read without running them: ``read_torch``.

``torch.load(weights_only=True, mmap=True)`` first; when that refuses a pickled module
(``torch.save(model)``), the ``InertUnpickler``: every global becomes an inert placeholder
except a short allowlist of tensor-rebuild functions implemented here over the zip's
``data/<key>`` records, so tensors are found without importing or calling anything the
file names. Full unpickling happens only behind ``allow_unsafe_pickle=True``. Split from
``tensorfile.py``, which holds the shared ``Tensor`` and the other formats.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from auditor.compare.tensorfile import (
    MAX_PICKLE,
    PickleRefused,
    Tensor,
    _first_line,
    _naturals,
    map_file,
    member_bytes,
    open_zip,
)
from auditor.core.errors import InputError

# --- torch checkpoints -------------------------------------------------------------------


def read_torch(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors of a torch checkpoint, flattened to dotted names ("model.fc1.weight")."""
    torch = _import_torch(path)
    try:
        return _read_torch_safely(torch, path)
    except PickleRefused:
        if not allow_unsafe_pickle:
            raise
    # The explicit opt-in (allow_unsafe_pickle=True): this runs code from the file.
    obj = _torch_load(path, lambda: torch.load(path, map_location="cpu", weights_only=False))
    return flatten(path, obj, _torch_leaf)


MAX_LEAVES = 10_000  # non-tensor values kept from one checkpoint
Leaf = bool | int | float | str | None


def read_torch_structure(path: Path) -> dict[str, Leaf]:
    """The non-tensor values of a torch checkpoint (epoch counters, hyperparameters, the
    optimizer's settings) by dotted name, as ``read_torch`` names tensors: numbers, strings,
    booleans and None as they are, anything else as ``<type name>``. Read with
    ``torch.load(weights_only=True)``; a file only the inert reader can read (a pickled
    module) gives ``{}``: its tensors are still compared."""
    torch = _import_torch(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, *_LOAD_ERRORS):
        return {}
    leaves: dict[str, Leaf] = {}
    stack: list[tuple[str, object, int]] = [("", obj, 0)]
    while stack and len(leaves) < MAX_LEAVES:
        name, node, depth = stack.pop()
        if isinstance(node, torch.Tensor):
            continue
        if isinstance(node, dict | list | tuple) and depth <= 100:
            children = _children(node)
            stack.extend((_join(name, k), v, depth + 1) for k, v in reversed(children))
        elif isinstance(node, bool | int | float | str | None):
            leaves[name] = node
        else:
            leaves[name] = f"<{type(node).__name__}>"
    return leaves


def _import_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: torch is not installed; it is needed to read torch checkpoints",
                         hint="pip install 'auditor[torch]'") from None
    return torch


def _read_torch_safely(torch: Any, path: Path) -> dict[str, Tensor]:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy format
        raise PickleRefused(f"{path}: legacy (non-zip) torch checkpoint: reading it means "
                            "unpickling it, which is refused",
                            hint="re-save it with torch.save, or trust it explicitly")
    if magic != b"PK\x03\x04":
        raise InputError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    with open_zip(path) as archive:
        prefix = _pickle_prefix(path, archive)  # structural checks before torch sees the file
        try:
            obj = _torch_load(path, lambda: torch.load(path, map_location="cpu",
                                                       weights_only=True, mmap=True))
        except _WeightsOnlyRefused:  # a pickled module or custom class: read it inertly
            return flatten(path, InertUnpickler.load_checkpoint(path, archive, prefix),
                           _inert_leaf)
    return flatten(path, obj, _torch_leaf)


class _WeightsOnlyRefused(Exception):
    """torch.load(weights_only=True) met a global it does not allow."""


_LOAD_ERRORS = (RuntimeError, ValueError, EOFError, OSError, KeyError, TypeError,
                AttributeError, IndexError, struct.error, zipfile.BadZipFile)


def _torch_load(path: Path, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except pickle.UnpicklingError:
        raise _WeightsOnlyRefused() from None
    except _LOAD_ERRORS as exc:
        raise InputError(f"{path}: truncated or corrupt checkpoint "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None


def _pickle_prefix(path: Path, archive: zipfile.ZipFile) -> str:
    records = [i for i in archive.infolist() if i.filename.endswith("data.pkl")]
    if len(records) != 1:
        raise InputError(f"{path}: not a torch checkpoint (no single data.pkl record)")
    if records[0].file_size > MAX_PICKLE:  # it is read into memory whole
        raise InputError(f"{path}: data.pkl of {records[0].file_size} bytes is implausibly large")
    return records[0].filename[: -len("data.pkl")]


_TORCH_NUMPY = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                "bool", "complex64", "complex128", "uint16", "uint32", "uint64"}


def _torch_leaf(obj: object) -> Tensor | None:
    torch = sys.modules["torch"]
    if not isinstance(obj, torch.Tensor):
        return None
    t = obj.detach()
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise ValueError(f"unsupported tensor ({t.layout}, {t.device}, quantized={t.is_quantized})")
    dtype = str(t.dtype).removeprefix("torch.")
    t = t.contiguous().reshape(-1)  # copies only tensors saved as non-contiguous views
    if dtype in _TORCH_NUMPY:
        return Tensor(dtype, tuple(obj.shape), t.numpy())
    size = t.element_size()
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    return Tensor(dtype, tuple(obj.shape), t.view(bits).numpy().view(f"u{size}"))


def _inert_leaf(obj: object) -> Tensor | None:
    return obj if isinstance(obj, _Rebuilt) else None


def flatten(path: Path, root: object, leaf: Callable[[object], Tensor | None]) -> dict[str, Tensor]:
    """Tensors in nested dicts, lists, tuples and inert objects, by dotted name, in order."""
    out: dict[str, Tensor] = {}
    stack: list[tuple[str, object, int]] = [("", root, 0)]
    seen: set[int] = set()
    while stack:
        name, obj, depth = stack.pop()
        try:
            tensor = leaf(obj)
        except ValueError as exc:
            raise InputError(f"{path}: {name}: {exc}") from None
        if tensor is not None:
            out[_unique(out, name)] = tensor
        elif id(obj) not in seen:
            seen.add(id(obj))
            if depth > 100:
                raise InputError(f"{path}: checkpoint nested more than 100 levels deep")
            children = [(_join(name, key), child, depth + 1) for key, child in _children(obj)]
            stack.extend(reversed(children))  # depth first, in file order
    return out


def _join(name: str, key: str) -> str:
    return f"{name}.{key}" if name and key else name or key


def _unique(out: dict[str, Tensor], name: str) -> str:
    candidate, n = name, 1
    while candidate in out:
        n += 1
        candidate = f"{name}#{n}"
    return candidate


def _children(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, list | tuple):
        return [(str(i), v) for i, v in enumerate(obj)]
    return obj.children() if isinstance(obj, Inert) else []


# --- the inert unpickler: pickled modules read without running or importing anything ----


class Inert:
    """Stands in for any class or function a pickle names: records what it gets, runs nothing."""

    qualname = "?"
    args: tuple[Any, ...] = ()
    items: dict[str, object]
    state: object = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = super().__new__(cls)
        obj.args, obj.items = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any constructor call (REDUCE) and do nothing."""

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __setitem__(self, key: object, value: object) -> None:
        self.items[str(key)] = value

    def append(self, value: object) -> None:
        self.items[str(len(self.items))] = value

    def extend(self, values: list[object]) -> None:
        for value in values:
            self.append(value)

    def children(self) -> list[tuple[str, object]]:
        """Module state: _parameters, _buffers and _modules are transparent; _private skipped."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | None):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        found = list(self.items.items())
        for key, value in state.items() if isinstance(state, dict) else ():
            if key in ("_parameters", "_buffers", "_modules"):
                found.append(("", value))
            elif isinstance(key, str) and not key.startswith("_"):
                found.append((key, value))
        return found


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _DType:
    name: str


class _Refused(pickle.UnpicklingError):
    """The inert reader stops here; the message says why, in one line."""


class _Sealed:
    """Objects the inert reader builds itself: a pickle may not rewrite them (BUILD)."""

    def __setstate__(self, state: object) -> None:
        raise _Refused("the pickle tries to rewrite a tensor record")


@dataclass(frozen=True)
class _Storage(_Sealed):
    raw: np.ndarray
    dtype: str


@dataclass(frozen=True)
class _Rebuilt(Tensor, _Sealed):
    """A tensor rebuilt by the inert reader."""


# torch dtype -> numpy storage dtype (the bits, for dtypes numpy lacks)
TORCH_STORAGE: dict[str, str] = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8",
    "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?", "uint16": "<u2",
    "uint32": "<u4", "uint64": "<u8", "complex64": "<c8", "complex128": "<c16",
    "float8_e4m3fn": "u1", "float8_e5m2": "u1", "float8_e4m3fnuz": "u1",
    "float8_e5m2fnuz": "u1", "float8_e8m0fnu": "u1",
}
_STORAGE_CLASSES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
# Never needed by a checkpoint; named only by payloads. Nothing runs either way: this is
# only so that such a file is reported rather than read.
_SUSPICIOUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "ctypes", "code", "pickle", "_pickle", "marshal", "webbrowser", "multiprocessing",
    "asyncio", "urllib", "http", "requests", "pdb", "timeit",
})
_SUSPICIOUS_BUILTINS = frozenset({"eval", "exec", "compile", "open", "__import__", "getattr",
                                  "setattr", "delattr", "globals", "breakpoint", "input"})


def _view(storage: object, dtype: str, offset: Any, size: Any, stride: Any) -> Tensor:
    """A tensor over its storage record, after checking every index stays inside it."""
    if not (isinstance(storage, _Storage) and dtype in TORCH_STORAGE and _naturals(size)
            and _naturals(stride) and type(offset) is int and offset >= 0
            and len(size) == len(stride)):
        raise _Refused("malformed tensor record")
    shape, stride = tuple[int, ...](size), tuple[int, ...](stride)
    npdt = np.dtype(TORCH_STORAGE[dtype])
    typed = storage.raw[: len(storage.raw) // npdt.itemsize * npdt.itemsize].view(npdt)
    numel = prod(shape)
    if numel == 0:
        return _Rebuilt(dtype, shape, typed[:0])
    if offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) >= len(typed):
        raise _Refused("tensor record points past the end of its storage")
    if all(s == prod(shape[i + 1 :]) for i, (n, s) in enumerate(zip(shape, stride, strict=True))
           if n > 1):
        return _Rebuilt(dtype, shape, typed[offset : offset + numel])
    if numel > len(typed):  # an expanded (stride 0) view: copying it could exhaust memory
        raise _Refused("tensor record is larger than its storage")
    strides = [s * npdt.itemsize for s in stride]
    view = np.lib.stride_tricks.as_strided(typed[offset:], shape, strides)
    return _Rebuilt(dtype, shape, np.ascontiguousarray(view).reshape(-1))  # saved views: a copy


def _rebuild_v2(storage: object, offset: object, size: object, stride: object,
                *_: object) -> Tensor:
    return _view(storage, getattr(storage, "dtype", ""), offset, size, stride)


def _rebuild_v3(storage: object, offset: object, size: object, stride: object, _grad: object,
                _hooks: object, dtype: object, *_: object) -> Tensor:
    return _view(storage, dtype.name if isinstance(dtype, _DType) else "", offset, size, stride)


def _first(data: object, *_: object) -> object:
    return data


def _from_type(func: object, _type: object, args: object, *_: object) -> Tensor:
    if func not in (_rebuild_v2, _rebuild_v3) or not isinstance(args, tuple):
        raise _Refused("unsupported tensor subclass record")
    rebuilt: Tensor = func(*args)
    return rebuilt


_SAFE_GLOBALS: dict[str, object] = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_v2,
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_parameter": _first,
    "torch._utils._rebuild_parameter_with_state": _first,
    "torch._tensor._rebuild_from_type_v2": _from_type,
    "torch.Size": tuple,
}


class InertUnpickler(pickle.Unpickler):
    """Resolves only ``_SAFE_GLOBALS``, storages and dtypes; any other global is ``Inert``."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str) -> None:
        self.path, self.archive, self.prefix = path, archive, prefix
        self.mapped = map_file(path)
        self.storages: dict[str, np.ndarray] = {}
        self.inert: dict[str, type[Inert]] = {}
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))

    @classmethod
    def load_checkpoint(cls, path: Path, archive: zipfile.ZipFile, prefix: str) -> object:
        """The checkpoint's object graph, or ``PickleRefused`` / ``InputError`` saying why not."""
        order = f"{prefix}byteorder"
        if order in archive.NameToInfo and archive.read(order) != b"little":
            raise InputError(f"{path}: big-endian torch checkpoints are not supported")
        try:
            return cls(path, archive, prefix).load()
        except _Refused as exc:
            raise PickleRefused(f"{path}: refused to read the checkpoint's pickle: {exc}; "
                                "nothing from it was executed",
                                hint="save a state_dict instead, or trust the file explicitly"
                                ) from None
        except (*_LOAD_ERRORS, pickle.UnpicklingError, RecursionError) as exc:
            raise InputError(f"{path}: corrupt checkpoint pickle "
                             f"({type(exc).__name__}: {_first_line(exc)})") from None

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol 2 names
        qualname = f"{module}.{name}"
        if qualname in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualname]
        if module in ("torch", "torch.cuda", "torch.storage") and name in _STORAGE_CLASSES:
            return _StorageType(_STORAGE_CLASSES[name])
        if module == "torch" and name in TORCH_STORAGE:
            return _DType(name)
        if qualname.startswith("torch._utils._rebuild"):
            raise _Refused(f"unsupported tensor kind {qualname}")
        top = module.split(".")[0]
        if top in _SUSPICIOUS_MODULES or (top == "builtins" and name in _SUSPICIOUS_BUILTINS):
            raise _Refused(f"it references {qualname} (a possibly malicious checkpoint)")
        if qualname not in self.inert:
            self.inert[qualname] = type(name, (Inert,), {"qualname": qualname})
        return self.inert[qualname]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise _Refused("unexpected persistent id")
        key = pid[2]
        if key not in self.storages:
            info = self.archive.NameToInfo.get(f"{self.prefix}data/{key}")
            if info is None:
                raise _Refused(f"storage record data/{key} is missing")
            self.storages[key] = member_bytes(self.path, self.mapped, info)
        return _Storage(self.storages[key], pid[1].dtype)
