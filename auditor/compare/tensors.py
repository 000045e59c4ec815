"""The one entry to the weight readers: ``read_tensors(path)`` picks the reader by suffix
(safetensors, npy, npz in ``tensorfile``; torch zip and legacy files in ``torchfile``).
"""

from __future__ import annotations

from pathlib import Path

from auditor.compare.tensorfile import Tensor, file_size, read_npy, read_npz, read_safetensors
from auditor.compare.torchfile import read_torch


def read_tensors(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a weight file, by name in file order; ``InputError`` when unreadable."""
    size = file_size(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path, size)
    if suffix == ".npy":
        return {"": read_npy(path, size)}
    if suffix == ".npz":
        return read_npz(path)
    return read_torch(path, allow_unsafe_pickle=allow_unsafe_pickle)
