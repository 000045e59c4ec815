"""Checkpoints inside the training process: write, finish, restore (issue 19 items 1-2).

Standard library only at import; torch (and numpy, when the script uses it) are imported
when a checkpoint is written or restored, so this module loads inside a rerun that has the
mounted ``auditor`` package and the script's own packages, nothing else (like
``attached.py``). Both run objects (``tracker.Run``, ``attached.AttachedRun``) take their
``checkpoint`` / ``log_checkpoint`` / ``resume`` from ``CheckpointMixin``.

A checkpoint is a folder of files (the *spool*): ``model.safetensors`` and
``optimizer.safetensors`` written here by a streaming safetensors writer (header first,
then each tensor's bytes, one tensor's CPU copy at a time; no pickle, no ``safetensors``
package needed), ``state.json`` (step, scheduler, RNG states, generators, extra, metrics
so far, the optimizer's non-tensor part), and ``manifest.json``: every file's sha256 and
size plus the state snapshot (per-tensor digests, one digest per RNG state), written last
and atomically. The caller's thread only writes the tensor bytes; hashing and the manifest
(and, for a standalone run, storing into the blob store) happen in one background thread.

The environment drives a segment: ``AUDITOR_RESUME_FROM=<folder>`` (a materialised
checkpoint: the files and ``manifest.json``) makes ``run.resume`` restore it;
``AUDITOR_STOP_AT=<step>`` makes the checkpoint call at that step end the process (exit 0)
once its checkpoint is written. Errors met here end the process with one ``auditor:
error:`` line and the exit code of ``core/errors.py`` (2 bad input, 3 altered checkpoint).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import io
import json
import mmap
import os
import queue
import random
import shutil
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from auditor.core.errors import AuditorError, InputError, IntegrityError

FORMAT = "auditor.checkpoint/1"
RESUME_ENV = "AUDITOR_RESUME_FROM"
STOP_ENV = "AUDITOR_STOP_AT"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
API_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
CHUNK = 1 << 20
MAX_HEADER = 100 << 20

# torch dtype name -> safetensors dtype
_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}
_OPT_SHAPED = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
               "acc_delta", "sum", "ax", "grad_avg"}


class CheckpointError(InputError):
    """A checkpoint that does not fit the script's objects, or is missing (exit 2)."""


def step_dir(step: int, kind: str = "step") -> str:
    """The folder (and artifact prefix) name of a checkpoint: ``step-00000020``."""
    return f"{kind}-{step:08d}"


def canonical(data: Any) -> bytes:
    """The bytes a JSON value is hashed as (sorted keys, no whitespace)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True,
                      ensure_ascii=False).encode("utf-8")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def float_bits(value: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", value))[0])


# --- tensors as bytes ---------------------------------------------------------------------

def _cpu(tensor: Any) -> Any:
    """A contiguous CPU tensor with the same bytes (a copy only when needed)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous()


def tensor_view(tensor: Any) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without copying them."""
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * size).from_address(tensor.data_ptr())).cast("B")


def dtype_name(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise InputError(f"tensor dtype {name} cannot be stored in a checkpoint")
    return _DTYPES[name]


def _torch_dtype(st: str) -> Any:
    import torch

    for name, code in _DTYPES.items():
        if code == st:
            return getattr(torch, name)
    raise IntegrityError(f"unknown safetensors dtype {st!r}")


def _safetensors_head(tensors: Sequence[tuple[str, Any]],
                      metadata: Mapping[str, str] | None) -> tuple[bytes, int]:
    """The length prefix and header of a safetensors file of ``tensors``, and the number
    of tensor bytes that follow it."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": dtype_name(t), "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, tensors: Sequence[tuple[str, Any]],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write ``tensors`` as a safetensors file, streamed: header first, then each tensor's
    bytes from its own (CPU, contiguous) memory. Returns the file's size."""
    head, offset = _safetensors_head(tensors, metadata)
    with open(path, "wb") as fh:
        fh.write(head)
        for _name, t in tensors:
            flat = _cpu(t)  # held while its bytes are written: it may be a fresh copy
            fh.write(tensor_view(flat))
            del flat
    return len(head) + offset


def encode_safetensors(tensors: Sequence[tuple[str, Any]],
                       metadata: Mapping[str, str] | None = None) -> bytes:
    """``write_safetensors``'s bytes, in memory (for a small checkpoint)."""
    head, _ = _safetensors_head(tensors, metadata)
    parts = [head]
    for _name, t in tensors:
        flat = _cpu(t)
        parts.append(bytes(tensor_view(flat)))
        del flat
    return b"".join(parts)


def read_header(fh: IO[bytes], size: int, label: str) -> tuple[int, dict[str, Any]]:
    """(data start, header) of a safetensors file; IntegrityError when malformed."""
    first = fh.read(8)
    if len(first) < 8:
        raise IntegrityError(f"{label}: truncated safetensors file")
    (length,) = struct.unpack("<Q", first)
    if length > MAX_HEADER or 8 + length > size:
        raise IntegrityError(f"{label}: safetensors header of {length} bytes does not fit")
    try:
        header = json.loads(fh.read(length))
    except ValueError:
        raise IntegrityError(f"{label}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{label}: safetensors header is not an object")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
            ok = (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop
                  and isinstance(info["shape"], list) and isinstance(info["dtype"], str))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise IntegrityError(f"{label}: tensor {name!r} has a malformed header entry")
        end = max(end, stop)
    if 8 + length + end > size:
        raise IntegrityError(f"{label}: truncated ({size} bytes, the header needs "
                             f"{8 + length + end})")
    return 8 + length, header


def safetensors_digests(path: Path, label: str) -> tuple[dict[str, dict[str, Any]], str, int]:
    """Per-tensor ``{name: {dtype, shape, sha256}}``, the file's sha256 and size, in one
    streamed pass over the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return _digests(fh, size, label)


def safetensors_digests_of(data: bytes, label: str) -> tuple[dict[str, dict[str, Any]], str, int]:
    """``safetensors_digests`` of a file's bytes held in memory."""
    return _digests(io.BytesIO(data), len(data), label)


def _digests(fh: IO[bytes], size: int, label: str) -> tuple[dict[str, dict[str, Any]], str, int]:
    whole = hashlib.sha256()
    start, header = read_header(fh, size, label)
    fh.seek(0)
    whole.update(fh.read(start))
    out: dict[str, dict[str, Any]] = {}
    pos = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = info["data_offsets"]
        if begin != pos:  # a gap or an overlap: hash it into the file digest only
            if begin < pos:
                raise IntegrityError(f"{label}: tensors overlap at {name!r}")
            whole.update(fh.read(begin - pos))
        one = hashlib.sha256()
        left = stop - begin
        while left:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{label}: truncated in tensor {name!r}")
            one.update(chunk)
            whole.update(chunk)
            left -= len(chunk)
        pos = stop
        out[name] = {"dtype": info["dtype"], "shape": info["shape"], "sha256": one.hexdigest()}
    while chunk := fh.read(CHUNK):
        whole.update(chunk)
    return out, whole.hexdigest(), size


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- what a checkpoint holds -----------------------------------------------------------------

def _b64(tensor: Any) -> str:
    return base64.b64encode(bytes(tensor_view(_cpu(tensor)))).decode("ascii")


def _b64_words(words: Iterable[int]) -> str:
    data = list(words)
    return base64.b64encode(struct.pack(f"<{len(data)}I", *data)).decode("ascii")


def _words(text: str) -> list[int]:
    data = base64.b64decode(text)
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def rng_states() -> dict[str, Any]:
    """Every process-wide RNG state: Python ``random``, numpy's global one (when numpy is
    loaded), torch CPU, and each CUDA device's (when CUDA is initialised). Word arrays are
    base64 of little-endian uint32s."""
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {"python": [version, _b64_words(internal), gauss], "numpy": None,
                              "torch_cpu": None, "cuda": None}
    if "numpy" in sys.modules:
        np = sys.modules["numpy"]
        name, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = [name, base64.b64encode(keys.astype("<u4").tobytes()).decode("ascii"),
                           int(pos), int(has_gauss), float(cached)]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        states["torch_cpu"] = _b64(torch.get_rng_state())
        if torch.cuda.is_initialized():  # never initialise CUDA for this
            states["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    py = states.get("python")
    if py:
        random.setstate((py[0], tuple(_words(py[1])), py[2]))
    if states.get("numpy"):
        import numpy as np

        name, keys, pos, has_gauss, cached = states["numpy"]
        array = np.frombuffer(base64.b64decode(keys), dtype="<u4").astype(np.uint32)
        np.random.set_state((name, array, pos, has_gauss, cached))
    import torch

    if states.get("torch_cpu"):
        torch.set_rng_state(_bytes_tensor(states["torch_cpu"]))
    if states.get("cuda"):
        if not torch.cuda.is_available():
            raise CheckpointError("the checkpoint holds CUDA RNG states and CUDA is not "
                                  "available here")
        cuda = [_bytes_tensor(s) for s in states["cuda"]]
        if len(cuda) != torch.cuda.device_count():
            raise CheckpointError(f"the checkpoint holds {len(cuda)} CUDA RNG state(s), "
                                  f"this machine has {torch.cuda.device_count()} device(s)")
        torch.cuda.set_rng_state_all(cuda)


def _bytes_tensor(text: str) -> Any:
    import torch

    data = bytearray(base64.b64decode(text))
    return torch.frombuffer(data, dtype=torch.uint8).clone() if data else torch.empty(
        0, dtype=torch.uint8)


def _jsonround(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not JSON ({exc}); it cannot be checkpointed") from None


def _param_names(optimizer: Any, model: Any) -> list[str]:
    """The name of each optimizer parameter, in ``state_dict`` index order."""
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    out: list[str] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            out.append(names.get(id(p), str(len(out))))
    return out


def optimizer_parts(optimizer: Any, model: Any) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """(named tensors, JSON part) of an optimizer's state dict."""
    import torch

    sd = optimizer.state_dict()
    names = _param_names(optimizer, model)
    tensors: list[tuple[str, Any]] = []
    other: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        pname = names[index] if isinstance(index, int) and index < len(names) else str(index)
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors.append((f"{pname}/{key}", value))
            else:
                other.setdefault(pname, {})[key] = _jsonround(
                    value, f"optimizer state {key!r} of {pname!r}")
    groups = _jsonround(sd["param_groups"], "the optimizer's param_groups")
    return tensors, {"names": names, "param_groups": groups, "other_state": other}


def _untracked(generators: Sequence[Any], found: list[tuple[str, Any]]) -> dict[str, Any]:
    given = {id(g) for g in generators}
    out: dict[str, Any] = {}
    for name, g in found:  # innermost frame first: its loader keeps the name
        if id(g) not in given and name not in out:
            out[name] = g
    return out


class _LoaderScan:
    """The ``torch.Generator`` of each DataLoader the training code holds in a variable:
    what ``generators=`` may have left out. Looked up in the frames that called the run
    (locals, then the script's globals), at every checkpoint and at resume: no ``gc``
    walk, a few microseconds. A loader is named by its variable."""

    def found(self) -> list[tuple[str, Any]]:
        if "torch.utils.data" not in sys.modules:
            return []
        import torch
        from torch.utils.data import DataLoader

        out: list[tuple[str, Any]] = []
        seen: set[int] = set()
        frame = sys._getframe(1)
        spaces: list[Mapping[str, Any]] = []
        while frame is not None:
            if not frame.f_globals.get("__name__", "").startswith("auditor."):
                spaces.append(frame.f_locals)
            frame = frame.f_back  # type: ignore[assignment]
        main = sys.modules.get("__main__")
        if main is not None:
            spaces.append(vars(main))
        for space in spaces:
            for var, obj in list(space.items()):
                # type(), not isinstance(): some objects answer __class__ with a warning
                if not issubclass(type(obj), DataLoader) or id(obj) in seen:
                    continue
                gen = getattr(obj, "generator", None)
                if isinstance(gen, torch.Generator):
                    seen.add(id(obj))
                    out.append((f"DataLoader `{var}` ({type(obj.dataset).__name__}, "
                                f"batch_size={obj.batch_size})", gen))
        return out


def snapshot_state(step: int, files: Mapping[str, Path | bytes], state: Mapping[str, Any],
                   listed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The state snapshot of a spooled checkpoint (see docs: the same shape for an original
    checkpoint and for the state a resumed run restored); a file is given by its path or
    its bytes. The tensor files are read once: their whole-file digests go into ``listed``
    when given."""
    def tensors(name: str) -> dict[str, dict[str, Any]]:
        src = files[name]
        per_tensor, digest, size = (safetensors_digests_of(src, name) if isinstance(src, bytes)
                                    else safetensors_digests(src, name))
        if listed is not None:
            listed[name] = {"sha256": digest, "size": size}
        return per_tensor

    snap: dict[str, Any] = {"step": step, "model": None, "optimizer": None}
    if MODEL_FILE in files:
        snap["model"] = tensors(MODEL_FILE)
    opt = state.get("optimizer")
    if OPTIMIZER_FILE in files and opt is not None:
        snap["optimizer"] = {
            "tensors": tensors(OPTIMIZER_FILE),
            "param_groups": [{k: v for k, v in g.items() if k != "params"}
                             for g in opt["param_groups"]],
            "other_sha256": sha256_bytes(canonical(opt)),
        }
    sched = state.get("scheduler")
    snap["scheduler"] = None if sched is None else {"sha256": sha256_bytes(canonical(sched)),
                                                    "state": sched}
    rng = state.get("rng") or {}
    snap["rng"] = {
        "python": _digest_or_none(rng.get("python")),
        "numpy": _digest_or_none(rng.get("numpy")),
        "torch_cpu": _b64_digest(rng.get("torch_cpu")),
        "cuda": None if rng.get("cuda") is None else [_b64_digest(s) for s in rng["cuda"]],
    }
    snap["generators"] = [_b64_digest(g) for g in state.get("generators", [])]
    snap["untracked_generators"] = {k: _b64_digest(v) for k, v in
                                    (state.get("untracked_generators") or {}).items()}
    extra = state.get("extra")
    snap["extra"] = None if extra is None else sha256_bytes(canonical(extra))
    return snap


def _digest_or_none(value: Any) -> str | None:
    return None if value is None else sha256_bytes(canonical(value))


def _b64_digest(value: str | None) -> str | None:
    return None if value is None else sha256_bytes(base64.b64decode(value))


SMALL_CHECKPOINT = 8 << 20  # up to this many tensor bytes a checkpoint is copied, then
# written by the background thread; larger ones are streamed from the live tensors


class Captured:
    """One checkpoint's content, taken in the caller's thread: the tensors (the live ones,
    or copies for a small checkpoint) and the JSON state."""

    def __init__(self, model: list[tuple[str, Any]] | None,
                 optimizer: list[tuple[str, Any]] | None, state: dict[str, Any]) -> None:
        self.model, self.optimizer, self.state = model, optimizer, state

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for part in (self.model or [], self.optimizer or []) for _, t in part)

    def detach(self) -> None:
        """Copy the tensors, so the training may change its own while they are written."""
        for part in (self.model, self.optimizer):
            if part is not None:
                part[:] = [(n, _cpu(t).clone()) for n, t in part]

    def encode(self) -> dict[str, bytes]:
        """The checkpoint's files as bytes (model, optimizer, state), for a small one."""
        files: dict[str, bytes] = {}
        for name, part in ((MODEL_FILE, self.model), (OPTIMIZER_FILE, self.optimizer)):
            if part is not None:
                files[name] = encode_safetensors(part)
        files[STATE_FILE] = canonical(self.state)
        return files

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        for name, part in ((MODEL_FILE, self.model), (OPTIMIZER_FILE, self.optimizer)):
            if part is not None:
                write_safetensors(folder / name, part)
                files[name] = folder / name
        (folder / STATE_FILE).write_bytes(canonical(self.state))
        files[STATE_FILE] = folder / STATE_FILE
        return files


def capture_api(step: int, *, model: Any, optimizer: Any, scheduler: Any,
                generators: Sequence[Any], extra: Mapping[str, Any] | None,
                metrics: Mapping[str, tuple[int, float]],
                loaders: _LoaderScan | None) -> Captured:
    """What one checkpoint holds, now (no file written, nothing hashed)."""
    state: dict[str, Any] = {"format": FORMAT, "step": step, "optimizer": None}
    model_part = list(model.state_dict().items()) if model is not None else None
    opt_part = None
    if optimizer is not None:
        opt_part, state["optimizer"] = optimizer_parts(optimizer, model)
    state["scheduler"] = (None if scheduler is None else
                          _jsonround(scheduler.state_dict(), "the scheduler's state"))
    state["rng"] = rng_states()
    state["generators"] = [_b64(g.get_state()) for g in generators]
    untracked = _untracked(generators, loaders.found() if loaders else [])
    state["untracked_generators"] = {k: _b64(g.get_state()) for k, g in untracked.items()}
    state["extra"] = None if extra is None else _jsonround(dict(extra), "extra")
    state["metrics"] = {k: [s, float_bits(v)] for k, (s, v) in metrics.items()}
    return Captured(model_part, opt_part, state)


def spool_api(folder: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any,
              generators: Sequence[Any], extra: Mapping[str, Any] | None,
              metrics: Mapping[str, tuple[int, float]],
              loaders: _LoaderScan | None) -> dict[str, Path]:
    """Write one checkpoint's files into ``folder`` now (no hashing)."""
    return capture_api(step, model=model, optimizer=optimizer, scheduler=scheduler,
                       generators=generators, extra=extra, metrics=metrics,
                       loaders=loaders).write(folder)


def finish_spool(folder: Path, step: int, kind: str, files: Mapping[str, Path],
                 state: Mapping[str, Any] | None = None) -> bytes:
    """Hash the spooled files, build the manifest (with the state snapshot) and write it
    last, atomically; ``state`` is ``state.json``'s content when the caller has it.
    Returns the manifest's bytes."""
    data = build_manifest(step, kind, files, state)
    write_manifest(folder, data)
    return data


def write_manifest(folder: Path, data: bytes) -> None:
    """``manifest.json`` into a spool folder, atomically: a reader sees it whole or not
    at all, so its presence marks the folder complete."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, folder / MANIFEST)


def build_manifest(step: int, kind: str, files: Mapping[str, Path | bytes],
                   state: Mapping[str, Any] | None = None) -> bytes:
    """A checkpoint's manifest (every file's digest and size, the state snapshot) for its
    files given by path or by bytes."""
    listed: dict[str, dict[str, Any]] = {}
    if kind == "registered":
        (name, path), = files.items()
        assert isinstance(path, Path)
        snap: dict[str, Any] = {"step": step, "tensors": registered_digests(path)}
    else:
        if state is None:
            src = files.get(STATE_FILE)
            state = ({} if src is None else
                     json.loads(src if isinstance(src, bytes) else src.read_bytes()))
        snap = snapshot_state(step, files, state, listed)
    if kind == "resumed":  # a snapshot only: its files are not kept
        listed = {}
    else:
        for name, src in files.items():
            if name not in listed:
                digest, size = ((sha256_bytes(src), len(src)) if isinstance(src, bytes)
                                else file_digest(src))
                listed[name] = {"sha256": digest, "size": size}
    manifest = {"format": FORMAT, "kind": kind, "step": step,
                "files": dict(sorted(listed.items())), "state": snap}
    return canonical(manifest)


def registered_digests(path: Path) -> dict[str, dict[str, Any]]:
    """Per-tensor digests of a file the script saved itself, by key path."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:2] == b"PK" or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _torch_digests(path)
    return safetensors_digests(path, path.name)[0]


def _torch_digests(path: Path) -> dict[str, dict[str, Any]]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the file's
        raise InputError(f"{path.name}: not a torch state dict that loads with "
                         f"weights_only=True ({type(exc).__name__})") from None
    out: dict[str, dict[str, Any]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = _cpu(value)
            out[prefix] = {"dtype": dtype_name(t), "shape": list(t.shape),
                           "sha256": sha256_bytes(tensor_view(t))}
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}" if prefix else str(i), v)

    walk("", obj)
    return out


# --- restore --------------------------------------------------------------------------------

def read_manifest_file(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir() or not path.is_file():
        raise CheckpointError(f"resume requested but no checkpoint in {folder} "
                              f"(no {MANIFEST}; {RESUME_ENV} must name a materialised "
                              "checkpoint folder)")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:
        raise IntegrityError(f"{path}: the manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IntegrityError(f"{path}: not an auditor checkpoint manifest")
    return manifest


def verify_folder(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """Every file the manifest lists, re-hashed; IntegrityError (exit 3) names the first
    missing, truncated or altered one."""
    step = manifest.get("step")
    out: dict[str, Path] = {}
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"checkpoint step {step}: file {name} is missing from {folder}")
        digest, size = file_digest(path)
        if size != info["size"]:
            raise IntegrityError(f"checkpoint step {step}: file {name} is truncated or altered "
                                 f"({size} bytes, recorded {info['size']})")
        if digest != info["sha256"]:
            raise IntegrityError(f"checkpoint step {step}: file {name} was altered (sha256 "
                                 f"{digest[:16]}…, recorded {info['sha256'][:16]}…)")
        out[name] = path
    return out


class _Mapped:
    """A safetensors file mapped copy-on-write: tensors are views of its pages."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self._fh.fileno()).st_size
        self.start, self.header = read_header(self._fh, size, path.name)
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

    def tensor(self, name: str) -> Any:
        import torch

        info = self.header[name]
        dtype = _torch_dtype(info["dtype"])
        begin, stop = info["data_offsets"]
        shape = info["shape"]
        if stop == begin:
            return torch.empty(shape, dtype=dtype)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        flat = torch.frombuffer(self._map, dtype=dtype, count=(stop - begin) // itemsize,
                                offset=self.start + begin)
        return flat.reshape(shape)

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._fh.close()


def restore_model(model: Any, path: Path, step: int, strict: bool) -> None:
    """Copy the checkpoint's tensors into the model's, tensor by tensor, after checking
    every name, shape and dtype (CheckpointError names the first that does not fit)."""
    import torch

    mapped = _Mapped(path)
    try:
        target = model.state_dict()
        stored = mapped.header
        for name, t in target.items():
            if name not in stored:
                raise CheckpointError(f"checkpoint step {step}: tensor `{name}` of the model "
                                      "is not in the checkpoint")
            info = stored[name]
            if list(info["shape"]) != list(t.shape):
                raise CheckpointError(
                    f"checkpoint step {step}: tensor `{name}` has shape {info['shape']} in the "
                    f"checkpoint, {list(t.shape)} in the model")
            if info["dtype"] != dtype_name(t):
                raise CheckpointError(
                    f"checkpoint step {step}: tensor `{name}` is {info['dtype']} in the "
                    f"checkpoint, {dtype_name(t)} in the model")
        extra = [n for n in stored if n not in target]
        if extra and strict:
            raise CheckpointError(f"checkpoint step {step}: tensor `{extra[0]}` of the "
                                  "checkpoint is not in the model")
        with torch.no_grad():
            for name, t in target.items():
                t.copy_(mapped.tensor(name))
    finally:
        mapped.close()


def restore_optimizer(optimizer: Any, model: Any, path: Path, part: Mapping[str, Any],
                      step: int) -> None:
    """Load the optimizer's state (tensors named ``<param>/<key>``) after checking that
    every state tensor belongs to one of its parameters and fits its shape."""
    names = _param_names(optimizer, model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    if len(part["names"]) != len(names):
        raise CheckpointError(f"checkpoint step {step}: the optimizer had {len(part['names'])} "
                              f"parameters, this one has {len(names)}")
    mapped = _Mapped(path)
    try:
        state: dict[int, dict[str, Any]] = {}
        for key in mapped.header:
            pname, _, skey = key.rpartition("/")
            if pname not in index:
                raise CheckpointError(f"checkpoint step {step}: optimizer state `{skey}` of "
                                      f"`{pname}`: no such parameter in the optimizer")
            i = index[pname]
            t = mapped.tensor(key).clone()
            if skey in _OPT_SHAPED and list(t.shape) != list(params[i].shape):
                raise CheckpointError(
                    f"checkpoint step {step}: optimizer state `{skey}` of `{pname}` has shape "
                    f"{list(t.shape)}, the parameter {list(params[i].shape)}")
            state.setdefault(i, {})[skey] = t
        for pname, values in part.get("other_state", {}).items():
            if pname in index:
                state.setdefault(index[pname], {}).update(values)
    finally:
        mapped.close()
    optimizer.load_state_dict({"state": state, "param_groups": part["param_groups"]})


# --- the run side ------------------------------------------------------------------------------

class Worker:
    """One background thread running jobs in order; the first error surfaces on drain."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="auditor-checkpoints",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def put(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def drain(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def fail(exc: AuditorError) -> NoReturn:
    """End the training process with one line and the error's exit code."""
    print(f"auditor: error: {exc}", file=sys.stderr, flush=True)
    probe = os.environ.get("AUDITOR_PROBE_DIR")
    if probe:
        with contextlib.suppress(OSError):
            Path(probe, "checkpoint-error.json").write_text(
                json.dumps({"exit_code": exc.exit_code, "message": str(exc)}))
    raise SystemExit(exc.exit_code)


def stop_at() -> int | None:
    text = os.environ.get(STOP_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        fail(InputError(f"{STOP_ENV}={text[:40]!r} is not a step"))
    return value


class CheckpointMixin:
    """``checkpoint``, ``log_checkpoint`` and ``resume`` for both run objects. A subclass
    gives ``_spool_root()`` (where folders are spooled), ``_stored(folder, step, kind,
    files)`` (called in the worker after the manifest is written), ``_metrics_so_far()``
    and ``end()``."""

    _ckpt_worker: Worker | None = None
    _ckpt_last: int | None = None
    _ckpt_loaders: _LoaderScan | None = None
    resumed_step: int | None = None
    resumed_extra: dict[str, Any] | None = None
    _resume_file: Path | None = None

    # -- to be given by the run class
    def _spool_root(self) -> Path:
        raise NotImplementedError

    def _stored(self, folder: Path, step: int, kind: str, files: Mapping[str, Path]) -> None:
        raise NotImplementedError

    def _stored_bytes(self, folder: Path, step: int, kind: str, files: Mapping[str, bytes],
                      manifest: bytes) -> None:
        """A small checkpoint, encoded in memory: spooled into ``folder`` (the manifest
        last, atomically), then ``_stored``. A run that owns a store puts the bytes there
        directly instead."""
        folder.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name, data in files.items():
            (folder / name).write_bytes(data)
            paths[name] = folder / name
        write_manifest(folder, manifest)
        self._stored(folder, step, kind, paths)

    def _metrics_so_far(self) -> dict[str, tuple[int, float]]:
        raise NotImplementedError

    def end(self, status: str = "finished") -> None:
        raise NotImplementedError

    # -- API
    def checkpoint(self, step: int, *, model: Any = None, optimizer: Any = None,
                   scheduler: Any = None, generators: Iterable[Any] = (),
                   extra: Mapping[str, Any] | None = None, every: int | None = None) -> bool:
        """Store a checkpoint of the training state at ``step`` (steps completed so far).
        Returns False when skipped (``every`` does not divide ``step``, or ``step`` is not
        after the last checkpoint or the step resumed from)."""
        checked = self._check_step(step, every)
        if checked is None:
            return False
        step = checked
        gens = list(generators)
        if self._ckpt_loaders is None:
            self._ckpt_loaders = _LoaderScan()
        folder = self._spool_root() / step_dir(step)
        captured = capture_api(step, model=model, optimizer=optimizer, scheduler=scheduler,
                               generators=gens, extra=extra, metrics=self._metrics_so_far(),
                               loaders=self._ckpt_loaders)
        if captured.nbytes() <= SMALL_CHECKPOINT:
            captured.detach()  # a copy: the files are written in the background
            self._hand(folder, step, "api", captured)
            return True
        try:
            files = captured.write(folder)  # streamed from the live tensors
        except OSError as exc:
            raise InputError(f"checkpoint step {step}: cannot write {folder}: "
                             f"{exc.strerror or exc}") from None
        self._hand(folder, step, "api", files)
        return True

    def log_checkpoint(self, path: str | Path, step: int) -> None:
        """Register a checkpoint file the script saved itself (a ``torch.save`` state dict
        or a safetensors file) as the checkpoint at ``step``."""
        source = Path(path)
        if not source.is_file():
            raise InputError(f"log_checkpoint: {source} is not a file")
        checked = self._check_step(step, None)
        if checked is None:
            return
        folder = self._spool_root() / step_dir(checked)
        (folder / "files").mkdir(parents=True, exist_ok=True)
        dest = folder / "files" / source.name
        # a copy, now: scripts overwrite their "last.pt" at the next save
        shutil.copyfile(source, dest)
        self._hand(folder, checked, "registered", {f"files/{source.name}": dest})

    def resume(self, model: Any = None, optimizer: Any = None, *, scheduler: Any = None,
               generators: Iterable[Any] = (), strict: bool = True) -> int:
        """Restore the checkpoint named by ``AUDITOR_RESUME_FROM`` into the given objects
        and every RNG; return the step to continue from (0 when not resuming)."""
        where = os.environ.get(RESUME_ENV, "").strip()
        if not where:
            return 0
        try:
            return self._resume(Path(where), model, optimizer, scheduler, list(generators),
                                strict)
        except AuditorError as exc:
            fail(exc)

    def resume_file(self) -> Path | None:
        """The registered checkpoint file to restore from (``log_checkpoint`` runs), or
        None when not resuming from one."""
        where = os.environ.get(RESUME_ENV, "").strip()
        if not where:
            return None
        try:
            folder = Path(where)
            manifest = read_manifest_file(folder)
            files = verify_folder(folder, manifest)
        except AuditorError as exc:
            fail(exc)
        self.resumed_step = int(manifest["step"])
        self._ckpt_last = self.resumed_step
        return next((p for n, p in files.items() if n.startswith("files/")), None)

    # -- internals
    def _check_step(self, step: int, every: int | None) -> int | None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"checkpoint step must be an int >= 0, not {step!r}")
        if every is not None and (not isinstance(every, int) or every <= 0):
            raise InputError(f"checkpoint every= must be an int > 0, not {every!r}")
        if every is not None and step % every:
            return None
        if self._ckpt_last is not None and step <= self._ckpt_last:
            return None
        self._ckpt_last = step
        return step

    def _hand(self, folder: Path, step: int, kind: str,
              files: Mapping[str, Path] | Captured) -> None:
        if self._ckpt_worker is None:
            self._ckpt_worker = Worker()

        def job() -> None:
            if isinstance(files, Captured):  # small: encoded and hashed in memory
                encoded = files.encode()
                manifest = build_manifest(step, kind, encoded, files.state)
                self._stored_bytes(folder, step, kind, encoded, manifest)
            else:
                finish_spool(folder, step, kind, files)
                self._stored(folder, step, kind, files)

        self._ckpt_worker.put(job)
        target = stop_at()
        if target is not None and step >= target:
            self.wait_checkpoints()
            self.end("finished")
            raise SystemExit(0)

    def wait_checkpoints(self) -> None:
        """Wait until every checkpoint handed to the background thread is written."""
        if self._ckpt_worker is not None:
            self._ckpt_worker.drain()

    def _resume(self, folder: Path, model: Any, optimizer: Any, scheduler: Any,
                generators: list[Any], strict: bool) -> int:
        manifest = read_manifest_file(folder)
        step = manifest.get("step")
        if not isinstance(step, int) or manifest.get("kind") != "api":
            raise CheckpointError(f"{folder}: a {manifest.get('kind')} checkpoint; restore "
                                  "it with run.resume_file()")
        files = verify_folder(folder, manifest)
        state = json.loads(files[STATE_FILE].read_bytes())
        if model is not None:
            if MODEL_FILE not in files:
                raise CheckpointError(f"checkpoint step {step} holds no model")
            restore_model(model, files[MODEL_FILE], step, strict)
        if optimizer is not None:
            if OPTIMIZER_FILE not in files or state.get("optimizer") is None:
                raise CheckpointError(f"checkpoint step {step} holds no optimizer state")
            restore_optimizer(optimizer, model, files[OPTIMIZER_FILE], state["optimizer"], step)
        if scheduler is not None:
            if state.get("scheduler") is None:
                raise CheckpointError(f"checkpoint step {step} holds no scheduler state")
            scheduler.load_state_dict(state["scheduler"])
        if len(generators) != len(state.get("generators", [])):
            raise CheckpointError(
                f"checkpoint step {step} holds {len(state.get('generators', []))} generator "
                f"state(s), resume was given {len(generators)}")
        for g, saved in zip(generators, state.get("generators", []), strict=True):
            g.set_state(_bytes_tensor(saved))
        set_rng_states(state.get("rng") or {})
        self.resumed_step = step
        self.resumed_extra = state.get("extra")
        self._ckpt_last = step
        self._restored_snapshot(step, model, optimizer, scheduler, generators, state)
        return step

    def _restored_snapshot(self, step: int, model: Any, optimizer: Any, scheduler: Any,
                           generators: list[Any], state: Mapping[str, Any]) -> None:
        """Spool the state now in effect exactly as a checkpoint is spooled, and keep only
        its manifest (kind "resumed"): the same shape as the original's, for the verifier
        to compare before the first resumed update."""
        folder = self._spool_root() / step_dir(step, "resumed")
        loaders = self._ckpt_loaders = self._ckpt_loaders or _LoaderScan()
        metrics = {k: (s, struct.unpack("<d", struct.pack("<q", b))[0])
                   for k, (s, b) in (state.get("metrics") or {}).items()}
        files = spool_api(folder, step, model=model, optimizer=optimizer, scheduler=scheduler,
                          generators=generators, extra=state.get("extra"), metrics=metrics,
                          loaders=loaders)
        finish_spool(folder, step, "resumed", files)
        for path in files.values():
            path.unlink()
        self._stored(folder, step, "resumed", {})

