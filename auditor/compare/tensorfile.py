"""Safe, bounded-memory readers of weight files: tensor name -> flat storage view.

Contract: ``auditor.compare.tensors.read_tensors(path)`` (the entry, by suffix) returns
the file's tensors in file order as ``Tensor`` values whose ``array()`` is the flat 1-D
element storage, memory-mapped wherever the format allows (safetensors, .npy, uncompressed
.npz members, torch zip checkpoints): reading a checkpoint costs address space and shared
page cache, not private memory. Dtypes numpy lacks keep their bits (bfloat16 as uint16,
float8 as uint8); ``Tensor.dtype`` names the real dtype ("float32", "bfloat16", "int64",
"float8_e4m3fn", ...).

Nothing in a file is executed. safetensors headers are parsed and validated here, so no
view ever reaches outside the file; numpy files are read with ``allow_pickle=False``;
torch checkpoints go through ``torch.load(weights_only=True, mmap=True)`` and, when that
refuses a pickled module, through ``InertUnpickler``: every global becomes an inert
placeholder except a short allowlist of tensor-rebuild functions we implement ourselves
over the zip's ``data/<key>`` records. Full unpickling happens only when the caller passes
``allow_unsafe_pickle=True``. Every failure is an ``InputError`` (``PickleRefused`` when
reading would mean trusting a pickle) with a one-line message naming the file.
"""

from __future__ import annotations

import json
import mmap
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from auditor.core.errors import InputError

MAX_HEADER = 100_000_000  # bytes: the safetensors reference implementation's limit
MAX_PICKLE = 1 << 30  # bytes of a torch checkpoint's data.pkl (tensor data lives elsewhere)

# safetensors dtype -> (our dtype name, numpy storage dtype)
SAFETENSORS_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("float64", "<f8"), "F32": ("float32", "<f4"), "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<u2"), "I64": ("int64", "<i8"), "I32": ("int32", "<i4"),
    "I16": ("int16", "<i2"), "I8": ("int8", "i1"), "U64": ("uint64", "<u8"),
    "U32": ("uint32", "<u4"), "U16": ("uint16", "<u2"), "U8": ("uint8", "u1"),
    "BOOL": ("bool", "?"), "C64": ("complex64", "<c8"), "F8_E4M3": ("float8_e4m3fn", "u1"),
    "F8_E5M2": ("float8_e5m2", "u1"), "F8_E4M3FNUZ": ("float8_e4m3fnuz", "u1"),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", "u1"), "F8_E8M0": ("float8_e8m0fnu", "u1"),
}


@dataclass(frozen=True)
class Tensor:
    """One tensor: dtype name, shape, and its flat element storage (or a loader of it)."""

    dtype: str
    shape: tuple[int, ...]
    source: np.ndarray | Callable[[], np.ndarray]

    def array(self) -> np.ndarray:
        """The flat 1-D storage; loaded now when the format cannot be memory-mapped."""
        data = self.source if isinstance(self.source, np.ndarray) else self.source()
        return data.reshape(-1)


def file_size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read weights file: {exc.strerror}") from None
    if size == 0:
        raise InputError(f"{path}: empty (zero-byte) weights file",
                         hint="the run did not finish writing it")
    return size


def map_file(path: Path) -> mmap.mmap:
    """A read-only shared mapping of the whole file (its pages are the page cache's)."""
    with path.open("rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _first_line(exc: BaseException, limit: int = 100) -> str:
    return " ".join(str(exc).split())[:limit]


# --- safetensors -------------------------------------------------------------------------


def _bad(path: Path, reason: str) -> InputError:
    return InputError(f"{path}: invalid safetensors file: {reason}")


def read_safetensors(path: Path, size: int) -> dict[str, Tensor]:
    """Validate the whole header first, then map each tensor's bytes (never past EOF)."""
    header_len, header = _read_header(path, size)
    data_size = size - 8 - header_len
    entries = [_entry(path, name, info, data_size) for name, info in header.items()]
    _check_layout(path, entries, data_size)
    blob = np.zeros(0, np.uint8)
    if data_size:
        blob = np.frombuffer(map_file(path), np.uint8, count=data_size, offset=8 + header_len)
    return {name: Tensor(dtype, shape, blob[begin:end].view(npdt))
            for name, dtype, npdt, shape, begin, end in entries}


def _read_header(path: Path, size: int) -> tuple[int, dict[str, Any]]:
    if size < 8:
        raise _bad(path, f"truncated: {size} bytes, shorter than the 8-byte header length")
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER:
            raise _bad(path, f"header of {header_len} bytes exceeds the {MAX_HEADER} byte limit")
        if header_len > size - 8:
            raise _bad(path, f"header length {header_len} exceeds the file size {size}")
        raw = handle.read(header_len)
    if not raw.startswith(b"{"):
        raise _bad(path, "header does not start with '{'")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constant)
    except _Duplicate as exc:
        raise _bad(path, f"duplicate tensor name {exc.args[0]!r}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, f"header is not valid JSON ({_first_line(exc, 80)})") from None
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(path, "__metadata__ must map strings to strings")
    return header_len, header


class _Duplicate(ValueError):
    """A JSON object repeats a key."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


Entry = tuple[str, str, str, tuple[int, ...], int, int]  # name dtype npdtype shape begin end


def _entry(path: Path, name: str, info: object, data_size: int) -> Entry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"tensor {name!r}: entry needs exactly dtype, shape and data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise _bad(path, f"tensor {name!r}: unknown dtype {str(code)[:20]!r}")
    if not _naturals(shape):
        raise _bad(path, f"tensor {name!r}: shape must be a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise _bad(path, f"tensor {name!r}: data_offsets must be [begin, end], begin <= end")
    begin, end = offsets
    if end > data_size:
        raise _bad(path, f"tensor {name!r}: data_offsets {offsets} past end of file "
                         f"(data is {data_size} bytes)")
    dtype, npdt = SAFETENSORS_DTYPES[code]
    needed = prod(shape) * np.dtype(npdt).itemsize
    if needed != end - begin:
        raise _bad(path, f"tensor {name!r}: dtype/shape size mismatch ({code} {tuple(shape)} "
                         f"is {needed} bytes, data_offsets span {end - begin})")
    return name, dtype, npdt, tuple(shape), begin, end


def _naturals(value: object) -> bool:
    return isinstance(value, list | tuple) and all(type(v) is int and v >= 0 for v in value)


def _check_layout(path: Path, entries: list[Entry], data_size: int) -> None:
    """Tensors must tile the data section exactly: no overlap, no hole, no trailing bytes."""
    position, previous = 0, ""
    for name, _, _, _, begin, end in sorted(entries, key=lambda e: (e[4], e[5])):
        if begin < position:
            raise _bad(path, f"tensors {previous!r} and {name!r} overlap (data_offsets)")
        if begin > position:
            raise _bad(path, f"hole of {begin - position} bytes before tensor {name!r}")
        position, previous = end, name
    if position != data_size:
        raise _bad(path, f"hole of {data_size - position} unused bytes after the last tensor")


# --- numpy -------------------------------------------------------------------------------


def read_npy(path: Path, size: int) -> Tensor:
    try:
        with path.open("rb") as handle:
            shape, fortran, dtype = _npy_header(handle)
            offset = handle.tell()
    except ValueError as exc:
        raise InputError(f"{path}: invalid .npy file: {_first_line(exc)}") from None
    nbytes = prod(shape) * dtype.itemsize
    if offset + nbytes > size:
        raise InputError(f"{path}: truncated .npy file ({size} bytes, needs {offset + nbytes})")
    if fortran or not dtype.isnative or nbytes == 0:
        return Tensor(_name(dtype), shape, lambda: _native(np.load(path, allow_pickle=False)))
    data = np.frombuffer(map_file(path), dtype, count=prod(shape), offset=offset)
    return Tensor(_name(dtype), shape, data)


def _npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which is refused")
    return tuple(shape), bool(fortran), dtype


def _native(array: np.ndarray) -> np.ndarray:
    """C order and native byte order, so that equal values have equal bits."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def _name(dtype: np.dtype[Any]) -> str:
    return "bool" if dtype == np.bool_ else dtype.name


def read_npz(path: Path) -> dict[str, Tensor]:
    mapped, tensors = map_file(path), {}
    with open_zip(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                tensors[info.filename[:-4]] = _npz_member(path, mapped, archive, info)
    return tensors


def _npz_member(path: Path, mapped: mmap.mmap, archive: zipfile.ZipFile,
                info: zipfile.ZipInfo) -> Tensor:
    try:
        with archive.open(info) as handle:
            shape, fortran, dtype = _npy_header(handle)
            header = handle.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: member {info.filename}: invalid array ({_first_line(exc)})"
                         ) from None
    if info.compress_type != zipfile.ZIP_STORED or fortran or not dtype.isnative:
        return Tensor(_name(dtype), shape, lambda: _load_member(path, info.filename))
    nbytes = prod(shape) * dtype.itemsize
    raw = member_bytes(path, mapped, info)[header : header + nbytes]
    if len(raw) != nbytes:
        raise InputError(f"{path}: member {info.filename} is shorter than its array header says")
    return Tensor(_name(dtype), shape, raw.view(dtype))


def _load_member(path: Path, member: str) -> np.ndarray:
    """A compressed member, decompressed when compared: one member in memory at a time."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
        return _native(np.lib.format.read_array(handle, allow_pickle=False))


# --- zip members (npz and torch checkpoints) ---------------------------------------------


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive, or an ``InputError`` saying it is truncated or not a zip at all."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{path}: truncated or corrupt archive (zip central directory missing)"
                         ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read archive: {exc.strerror}") from None


def member_bytes(path: Path, mapped: mmap.mmap, info: zipfile.ZipInfo) -> np.ndarray:
    """The stored (uncompressed) bytes of one zip member, as a read-only mapped array."""
    local = mapped[info.header_offset : info.header_offset + 30]
    if len(local) < 30 or local[:4] != b"PK\x03\x04" or info.compress_type != zipfile.ZIP_STORED:
        raise InputError(f"{path}: member {info.filename} is not a stored zip entry")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > len(mapped):
        raise InputError(f"{path}: truncated archive (member {info.filename} runs past the end)")
    return np.frombuffer(mapped, np.uint8, count=info.file_size, offset=start)


class PickleRefused(InputError):
    """Reading the checkpoint would mean executing (trusting) its pickle."""
