"""The weights comparer: two checkpoints, tensor by tensor, streamed in bounded memory.

Contract: ``compare_weight_files(left, right, policy)`` returns ``[]`` when both files hold
the same tensors bit for bit (NaN equal to NaN at the same place under
``policy.nan_equal``), else differences in the left file's tensor order (the verdict
layer ranks them):

* ``kind="value"`` at ``<where>/<tensor name>``, one per differing tensor, with ``stats``
  elements, differing, max_abs, max_rel (relative to the left value), max_ulp, cosine,
  dtype, shape; ``magnitude`` = max_abs; ``within_tolerance`` when every element satisfies
  ``|l - r| <= atol + rtol * |l|`` for ``policy.tensor_tolerance(name, dtype)``. Integer,
  bool and opaque dtypes must match exactly, and so must everything under
  ``policy.bitwise``. Max ULP is reported, never used to decide.
* ``"missing"`` / ``"extra"`` for names on one side only; ``"dtype"`` and ``"shape"`` (never
  within tolerance) when two tensors of one name cannot be compared element by element.

A torch checkpoint is compared by its structure too (``compare_structure`` over
``torchfile.read_torch_structure``): its non-tensor values (``epoch``, the optimizer's
``param_groups.0.lr``, a ``saved_at`` string) at ``<where>/<name>``, ``kind="changed"``
(numbers within the metric tolerance; strings equal after the log masks are within
tolerance only for a file the policy's ``mask_outputs`` names) or missing/extra. Its zip
container is not read here: bytes that differ around identical tensors and values are
explained by ``container`` and count there.

Left is the original run's file, right the rerun's. Unreadable, unsafe or malformed files
raise ``InputError`` (``tensorfile``). Equal sha256 digests, when the caller has both,
return ``[]`` before anything is read.

How: files are memory-mapped; each tensor is scanned in chunks, first for bitwise equality
only (``SCAN_CHUNK`` elements), then, for tensors that differ, with full statistics
(``CHUNK`` elements) computed into per-thread preallocated buffers, so the extra memory is
a few chunks per thread whatever the checkpoint size. A tensor's chunks are split across
``WORKERS`` threads (numpy releases the GIL).
"""

from __future__ import annotations

import math
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auditor.compare.difference import Difference, Stat
from auditor.compare.tensorfile import Tensor
from auditor.compare.tensors import read_tensors
from auditor.compare.torchfile import Leaf
from auditor.core.policy import EXACT, ComparePolicy, Tolerance

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz")
CHUNK = 1 << 17  # elements per statistics chunk: a thread's buffers stay cache-sized
SCAN_CHUNK = 1 << 20  # elements per equality-only chunk (one pass over memory)
WORKERS = min(2, os.cpu_count() or 1)


UNAMBIGUOUS_SUFFIXES: tuple[str, ...] = (".safetensors", ".npy", ".npz")
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"


def is_weights_file(path: Path) -> bool:
    """True for the file types this comparer reads (by suffix, any case)."""
    return path.suffix.lower() in WEIGHT_SUFFIXES


def reads_as_weights(path: Path, name: str | None = None) -> bool:
    """True when the file is for the weights comparer. ``.safetensors``/``.npy``/``.npz`` by
    suffix alone (a corrupt one is an error, not bytes); ``.pt``/``.pth``/``.bin``/``.ckpt``
    only when the content is a torch checkpoint (a zip holding ``data.pkl``, or a pickle),
    so any other ``.bin`` is compared as bytes (``name``, the artifact name, gives the
    suffix when ``path`` is a store blob). An empty or unreadable file is left to the
    weights comparer, which names it (T24)."""
    named = Path(name) if name else path  # a store blob is named by its digest
    if not is_weights_file(named):
        return False
    if named.suffix.lower() in UNAMBIGUOUS_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if not magic:
            return True
        if magic == _ZIP:
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("data.pkl") for n in archive.namelist())
        return magic[:1] == _PICKLE and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    except (OSError, zipfile.BadZipFile):
        return True  # a truncated zip: the weights comparer says so


def compare_weight_files(
    left: Path,
    right: Path,
    policy: ComparePolicy,
    *,
    where: str = "weights",
    left_sha256: str | None = None,
    right_sha256: str | None = None,
    allow_unsafe_pickle: bool = False,
    masked: bool = False,
) -> list[Difference]:
    """Differences between the original run's weights (left) and the rerun's (right);
    ``masked``: the policy's ``mask_outputs`` names the file, so the log masks apply to its
    checkpoint strings."""
    if left_sha256 and right_sha256 and left_sha256 == right_sha256:
        return []  # the same bytes: nothing to read
    left_tensors = read_tensors(left, allow_unsafe_pickle=allow_unsafe_pickle)
    right_tensors = read_tensors(right, allow_unsafe_pickle=allow_unsafe_pickle)
    diffs = compare_tensors(left_tensors, right_tensors, policy, where=where)
    if left.suffix.lower() not in UNAMBIGUOUS_SUFFIXES:  # a torch checkpoint
        from auditor.compare.torchfile import read_torch_structure

        diffs += compare_structure(read_torch_structure(left), read_torch_structure(right),
                                   policy, where=where, masked=masked)
    return diffs


def compare_structure(left: Mapping[str, Leaf], right: Mapping[str, Leaf], policy: ComparePolicy, *,
                      where: str = "weights", masked: bool = False) -> list[Difference]:
    """Differences between the non-tensor values of two checkpoints: numbers under the
    metric tolerance (exact under ``bitwise``), strings exactly, or after the log masks when
    ``masked`` (the policy's ``mask_outputs`` names the file: a time in a ``saved_at``
    string is then within tolerance, not bitwise), anything else exactly."""
    masks = [re.compile(m) for m in policy.log_masks] if masked else []
    diffs: list[Difference] = []
    for name in [*left, *(n for n in right if n not in left)]:
        at = _at(where, name)
        if name not in left or name not in right:
            missing = name not in right
            diffs.append(Difference(
                where=at, kind="missing" if missing else "extra",
                left=_short(left.get(name)) if missing else None,
                right=None if missing else _short(right.get(name)),
                comments=(f"{name}: a checkpoint value only in the "
                          f"{'original' if missing else 'rerun'}",)))
        elif (found := _leaf_difference(at, name, left[name], right[name], policy,
                                        masks)) is not None:
            diffs.append(found)
    return diffs


def _leaf_difference(at: str, name: str, a: Leaf, b: Leaf, policy: ComparePolicy,
                     masks: list[re.Pattern[str]]) -> Difference | None:
    if type(a) is type(b) and (a == b or (isinstance(a, float) and isinstance(b, float)
                                          and math.isnan(a) and math.isnan(b)
                                          and policy.nan_equal)):
        return None
    within, why = False, f"{name}: checkpoint value {_short(a)} vs {_short(b)}"
    if isinstance(a, float) and isinstance(b, float) and not policy.bitwise:
        within = math.isfinite(a) and math.isfinite(b) and policy.metric_tolerance_for(
            name).allows(a, b)
    elif isinstance(a, str) and isinstance(b, str) and not policy.bitwise:
        within = _mask(a, masks) == _mask(b, masks)
        why += " (equal after the log masks)" if within else ""
    return Difference(where=at, kind="changed", left=_short(a), right=_short(b),
                      within_tolerance=within, comments=(why,))


def _mask(text: str, masks: list[re.Pattern[str]]) -> str:
    for mask in masks:
        text = mask.sub("<masked>", text)
    return text


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare_tensors(
    left: dict[str, Tensor], right: dict[str, Tensor], policy: ComparePolicy, *,
    where: str = "weights",
) -> list[Difference]:
    """Differences between two name -> tensor tables (see the module contract)."""
    diffs: list[Difference] = []
    with _engine() as engine:
        for name, tensor in left.items():
            if name in right:
                diffs.extend(_compare_one(engine, _at(where, name), name, (tensor, right[name]),
                                          policy))
            else:
                diffs.append(_presence(_at(where, name), name, tensor, missing=True))
    diffs.extend(_presence(_at(where, n), n, t, missing=False) for n, t in right.items()
                 if n not in left)
    return diffs


def _at(where: str, name: str) -> str:
    return f"{where}/{name}" if name else where  # a lone .npy array has no name


def _presence(at: str, name: str, tensor: Tensor, *, missing: bool) -> Difference:
    text, side = f"{tensor.dtype} {tensor.shape}", "original" if missing else "rerun"
    return Difference(where=at, kind="missing" if missing else "extra",
                      left=text if missing else None, right=None if missing else text,
                      comments=(f"{name or 'array'}: only in the {side} weights",))


def _compare_one(engine: _Engine, at: str, name: str, pair: tuple[Tensor, Tensor],
                 policy: ComparePolicy) -> list[Difference]:
    (left, right), label = pair, name or "array"
    diffs = []
    if left.dtype != right.dtype:
        diffs.append(Difference(where=at, kind="dtype", left=left.dtype, right=right.dtype,
                                comments=(f"{label}: dtype {left.dtype} vs {right.dtype}",)))
    if left.shape != right.shape:
        diffs.append(Difference(where=at, kind="shape", left=str(left.shape),
                                right=str(right.shape),
                                comments=(f"{label}: shape {left.shape} vs {right.shape}",)))
    if diffs:
        return diffs
    arrays = left.array(), right.array()
    kind = _kind(left.dtype, arrays[0].dtype)
    tolerance = EXACT if kind.exact else policy.tensor_tolerance(name, left.dtype)
    rule = _Rule(kind, tolerance, policy.nan_equal, policy.bitwise)
    acc = engine.tensor_stats(*arrays, rule)
    if acc is None or acc.differing == 0:
        return []
    return [_value_difference(at, label, left, acc, rule)]


def _value_difference(at: str, label: str, tensor: Tensor, acc: _Acc, rule: _Rule) -> Difference:
    numeric, kind = rule.kind.family != "bits", rule.kind
    stats: dict[str, Stat] = {
        "elements": math.prod(tensor.shape),
        "differing": acc.differing,
        "max_abs": acc.max_abs if numeric else None,
        "max_rel": acc.max_rel if numeric else None,
        "max_ulp": acc.max_ulp if kind.ulp else None,
        "cosine": acc.cosine() if numeric else None,
        "dtype": tensor.dtype,
        "shape": str(tensor.shape),
    }
    within = not (acc.bad or acc.nonfinite or rule.bitwise or kind.exact)
    return Difference(where=at, kind="value", magnitude=acc.max_abs if numeric else None,
                      within_tolerance=within, stats=stats,
                      comments=_comments(label, stats, acc, rule))


def _comments(label: str, stats: dict[str, Stat], acc: _Acc, rule: _Rule) -> tuple[str, ...]:
    text = f"{label}: {stats['differing']} of {stats['elements']} elements differ"
    if rule.kind.family != "bits":
        ulp = f", max ULP {acc.max_ulp}" if rule.kind.ulp else ""
        text += f" (max |diff| {acc.max_abs:.3g}, max rel {acc.max_rel:.3g}{ulp})"
    comments = [text]
    if acc.nonfinite:
        comments.append(f"{acc.nonfinite} elements are NaN or infinite on one side only")
    if rule.bitwise:
        comments.append("bitwise policy: any difference fails")
    elif rule.kind.exact:
        comments.append(f"{stats['dtype']} tensors must match exactly")
    elif acc.bad:
        tol = rule.tolerance
        comments.append(f"beyond tolerance rtol={tol.rtol:g}, atol={tol.atol:g}")
    return tuple(comments)


# --- element kinds: how a storage dtype is decoded and compared --------------------------


@dataclass(frozen=True)
class _Kind:
    family: str  # "float" (tolerance), "int" (exact, numeric stats), "bits" (exact, counts)
    work: type[np.generic]  # the dtype statistics are computed in
    bits: type[np.generic]  # the integer view compared for equality (and ULP for floats)
    decode: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # storage -> work

    @property
    def exact(self) -> bool:
        return self.family != "float"

    @property
    def ulp(self) -> bool:
        return self.family == "float"


def _cast(raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.copyto(out, raw)
    return out


def _bf16(raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    wide = out.view(np.uint32)
    np.copyto(wide, raw)
    np.left_shift(wide, 16, out=wide)  # a bfloat16 is the top half of a float32
    return out


def _f8_table(exp_bits: int, bias: int, ieee: bool) -> np.ndarray:
    """The float32 value of every float8 byte (e5m2: IEEE-like; e4m3fn: NaN only at x.1111.111)."""
    man_bits, top = 7 - exp_bits, (1 << exp_bits) - 1
    table = np.zeros(256, np.float32)
    for byte in range(256):
        exp, man = (byte >> man_bits) & top, byte & ((1 << man_bits) - 1)
        value = (man / (1 << man_bits) + (exp > 0)) * 2.0 ** (max(exp, 1) - bias)
        if ieee and exp == top:
            value = math.nan if man else math.inf
        elif not ieee and byte & 0x7F == 0x7F:
            value = math.nan
        table[byte] = -value if byte & 0x80 else value
    return table


def _lut(table: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def decode(raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.take(table, raw, out=out)

    return decode


_FLOATS: dict[str, _Kind] = {
    "float32": _Kind("float", np.float32, np.int32),
    "float64": _Kind("float", np.float64, np.int64),
    "float16": _Kind("float", np.float32, np.int16, _cast),
    "bfloat16": _Kind("float", np.float32, np.int16, _bf16),
    "float8_e4m3fn": _Kind("float", np.float32, np.int8, _lut(_f8_table(4, 7, ieee=False))),
    "float8_e5m2": _Kind("float", np.float32, np.int8, _lut(_f8_table(5, 15, ieee=True))),
}


def _kind(dtype: str, storage: np.dtype[np.generic]) -> _Kind:
    if dtype in _FLOATS:
        return _FLOATS[dtype]
    if storage.kind in "iub":
        return _Kind("int", np.float64, storage.type, _cast)
    width = storage.itemsize if storage.itemsize in (1, 2, 4, 8) else 1  # complex128: bytes
    return _Kind("bits", np.float64, np.dtype(f"u{width}").type)


@dataclass(frozen=True)
class _Rule:
    """How one tensor is compared."""

    kind: _Kind
    tolerance: Tolerance
    nan_equal: bool
    bitwise: bool

    @property
    def nan_unequal(self) -> bool:  # NaN never equals NaN: bitwise-equal chunks still differ
        return self.kind.family == "float" and not self.nan_equal


# --- the chunked engine ------------------------------------------------------------------


@dataclass
class _Acc:
    """Statistics of one tensor, merged over chunks and threads.

    The cosine is kept as float64 sums of per-chunk dot products l.l, l.d and d.d (each in the
    chunk's working dtype, d = r - l). Written through d, 1 - cosine keeps its relative
    accuracy even when the tensors agree to 1e-12, where l.r / (|l| |r|) would be noise."""

    differing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_ulp: int = 0
    ll: float = 0.0
    ld: float = 0.0
    dd: float = 0.0
    bad: bool = False  # some element is outside the tolerance
    nonfinite: int = 0  # elements NaN or infinite on one side only

    def merge(self, other: _Acc) -> _Acc:
        self.differing += other.differing
        self.max_abs = _up(self.max_abs, other.max_abs)
        self.max_rel = _up(self.max_rel, other.max_rel)
        self.max_ulp = max(self.max_ulp, other.max_ulp)
        self.ll, self.ld, self.dd = self.ll + other.ll, self.ld + other.ld, self.dd + other.dd
        self.bad, self.nonfinite = self.bad or other.bad, self.nonfinite + other.nonfinite
        return self

    def cosine(self) -> float | None:
        rr = self.ll + 2 * self.ld + self.dd
        if not (self.ll > 0 and rr > 0 and math.isfinite(rr)):
            return None
        return max(-1.0, min(1.0, (self.ll + self.ld) / math.sqrt(self.ll * rr)))


def _up(current: float, value: float) -> float:
    """The larger of two maxima, ignoring NaN."""
    return value if value > current else current


@dataclass
class _Space:
    """One thread's chunk buffers for one kind, allocated once: no temporaries per chunk."""

    kind: _Kind
    buffers: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, name: str, n: int, dtype: type[np.generic] | None = None) -> np.ndarray:
        if name not in self.buffers:
            size = SCAN_CHUNK if name == "scan" else CHUNK
            self.buffers[name] = np.empty(size, dtype or self.kind.work)
        return self.buffers[name][:n]


class _Engine:
    """A small thread pool plus per-thread buffers; a tensor's chunks are split across it."""

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self.pool, self.local = pool, threading.local()

    def space(self, kind: _Kind) -> _Space:
        spaces: dict[_Kind, _Space] = self.local.__dict__.setdefault("spaces", {})
        return spaces.setdefault(kind, _Space(kind))

    def split(self, work: Callable[[int, int], _Acc], n: int, unit: int) -> list[_Acc]:
        """``work(start, stop)`` over contiguous parts of ``range(n)`` aligned to ``unit``."""
        units = -(-n // unit)
        parts = min(WORKERS, units) if self.pool else 1
        if parts <= 1:
            return [work(0, n)]
        cuts = [i * units // parts * unit for i in range(parts)] + [n]
        return list(self.pool.map(work, cuts[:-1], cuts[1:]))  # type: ignore[union-attr]

    def tensor_stats(self, left: np.ndarray, right: np.ndarray, rule: _Rule) -> _Acc | None:
        """None when the tensors are equal; else the statistics of all their elements."""
        arrays = left, right, left.view(rule.kind.bits), right.view(rule.kind.bits)
        words = arrays[2:] if rule.nan_unequal or left.nbytes % 8 else (
            left.view(np.uint64), right.view(np.uint64))  # fewer, wider compares
        found = threading.Event()

        def scan(start: int, stop: int) -> _Acc:
            equal = _equal((left, *words), (start, stop), self.space(rule.kind), rule, found)
            return _Acc(differing=int(not equal))

        if not any(part.differing for part in self.split(scan, len(words[0]), SCAN_CHUNK)):
            return None

        def measure(start: int, stop: int) -> _Acc:
            with np.errstate(all="ignore"):  # inf - inf, 0 / 0, overflow: handled explicitly
                return _measure(arrays, (start, stop), self.space(rule.kind), rule)

        total = _Acc()
        for part in self.split(measure, len(arrays[2]), 4 * CHUNK):
            total.merge(part)
        return total


@contextmanager
def _engine() -> Iterator[_Engine]:
    if WORKERS < 2:
        yield _Engine(None)
        return
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="weights") as pool:
        yield _Engine(pool)


def _equal(arrays: tuple[np.ndarray, ...], span: tuple[int, int], space: _Space, rule: _Rule,
           found: threading.Event) -> bool:
    """Bitwise equality in large chunks, stopping as soon as any thread finds a difference."""
    left, lbits, rbits = arrays
    for start in range(*span, SCAN_CHUNK):
        if found.is_set():
            return False
        stop = min(start + SCAN_CHUNK, span[1])
        unequal = np.not_equal(lbits[start:stop], rbits[start:stop],
                               out=space.get("scan", stop - start, np.bool_))
        if unequal.any() or (rule.nan_unequal and _has_nan(left[start:stop], space)):
            found.set()
            return False
    return True


def _has_nan(raw: np.ndarray, space: _Space) -> bool:
    return any(bool(np.isnan(_decoded(raw[s : s + CHUNK], space, "l")).any())
               for s in range(0, len(raw), CHUNK))


def _measure(arrays: tuple[np.ndarray, ...], span: tuple[int, int], space: _Space,
             rule: _Rule) -> _Acc:
    left, right, lbits, rbits = arrays
    acc = _Acc()
    for s in range(*span, CHUNK):
        e = min(s + CHUNK, span[1])
        mask = np.not_equal(lbits[s:e], rbits[s:e], out=space.get("b", e - s, np.bool_))
        differing = int(np.count_nonzero(mask))
        if rule.kind.family == "bits":
            acc.differing += differing
        elif differing or (rule.nan_unequal and _has_nan(left[s:e], space)):
            pair = _decoded(left[s:e], space, "l"), _decoded(right[s:e], space, "r")
            _diff_chunk(pair, (lbits[s:e], rbits[s:e], differing), space, (rule, acc))
        else:  # an identical chunk of a differing tensor still counts in the cosine
            values = _decoded(left[s:e], space, "l")
            acc.ll += float(np.dot(values, values))
    return acc


def _decoded(raw: np.ndarray, space: _Space, side: str) -> np.ndarray:
    decode = space.kind.decode
    return raw if decode is None else decode(raw, space.get(f"w{side}", len(raw)))


def _diff_chunk(values: tuple[np.ndarray, np.ndarray], bits: tuple[np.ndarray, np.ndarray, int],
                space: _Space, rule_acc: tuple[_Rule, _Acc]) -> None:
    """Full statistics of one differing chunk (integers arrive decoded to float64);
    ``bits`` holds the two bit-pattern views and the number of elements whose bits differ."""
    (left, right), (lbits, rbits, differing), (rule, acc) = values, bits, rule_acc
    n, signs_known = len(left), True
    diff = np.subtract(right, left, out=space.get("d", n))
    dd = float(np.dot(diff, diff))
    if not math.isfinite(dd):  # NaN or inf somewhere (or a difference too large to square)
        left, lbits, rbits, differing = _nonfinite((left, right), (lbits, rbits), diff, rule, acc)
        dd, signs_known = float(np.dot(diff, diff)), False
    acc.differing += differing
    acc.ll, acc.ld = acc.ll + float(np.dot(left, left)), acc.ld + float(np.dot(left, diff))
    acc.dd += dd
    chunk_abs = _largest(diff)  # reductions only: no |d| or |l| array unless needed below
    chunk_rel = _largest(np.divide(diff, left, out=space.get("u", n)))  # 0/0 is ignored
    acc.max_abs, acc.max_rel = _up(acc.max_abs, chunk_abs), _up(acc.max_rel, chunk_rel)
    tol = rule.tolerance
    if rule.kind.exact:
        acc.bad = acc.bad or differing > 0
    elif not acc.bad and chunk_abs > tol.atol and chunk_rel > tol.rtol:  # else all within
        acc.bad = _outside(diff, left, tol, space)
    if rule.kind.ulp:
        no_sign_flip = signs_known and chunk_rel < 1  # a sign flip makes |l - r| >= |l|
        acc.max_ulp = max(acc.max_ulp, _max_ulp(lbits, rbits, no_sign_flip, space))


def _largest(values: np.ndarray) -> float:
    """max |v| by two fast reductions, ignoring NaN."""
    return _up(_up(0.0, float(np.fmax.reduce(values))), -float(np.fmin.reduce(values)))


def _outside(diff: np.ndarray, left: np.ndarray, tolerance: Tolerance, space: _Space) -> bool:
    """Any |l - r| > atol + rtol * |l| (as |l - r| - rtol * |l| > atol); overwrites ``diff``."""
    slack = np.abs(left, out=space.get("u", len(left)))
    np.multiply(slack, tolerance.rtol, out=slack)
    np.subtract(np.abs(diff, out=diff), slack, out=slack)
    return bool(np.greater(slack, tolerance.atol, out=space.get("b", len(left), np.bool_)).any())


def _nonfinite(values: tuple[np.ndarray, np.ndarray], bits: tuple[np.ndarray, np.ndarray],
               diff: np.ndarray, rule: _Rule, acc: _Acc
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rare chunk with NaN or inf. Equal specials (inf == inf; NaN == NaN under
    ``nan_equal``) are equal; a special against anything else is infinitely far. Zeroes
    ``diff`` there and returns stand-ins (0) for the left values and for the bit patterns
    of NaN elements, with the number of differing elements."""
    (left, right), (lbits, rbits) = values, bits
    nan_left, nan_right = np.isnan(left), np.isnan(right)
    finite = np.isfinite(left) & np.isfinite(right)
    same, differs = left == right, lbits != rbits
    if rule.nan_equal:
        same |= nan_left & nan_right
        differs &= ~(nan_left & nan_right)
    mismatch = ~same & ~finite
    if mismatch.any():
        acc.nonfinite += int(np.count_nonzero(mismatch))
        acc.max_abs = acc.max_rel = math.inf
        acc.bad = True
    diff[~finite] = 0  # the specials are accounted for above; keep the sums finite
    keep = ~(nan_left | nan_right)
    stand_in = np.where(finite, left, 0).astype(left.dtype)
    lkeep, rkeep = (np.where(keep, x, 0).astype(x.dtype) for x in (lbits, rbits))
    return stand_in, lkeep, rkeep, int(np.count_nonzero(differs | mismatch))


def _max_ulp(lbits: np.ndarray, rbits: np.ndarray, no_sign_flip: bool, space: _Space) -> int:
    """Largest distance in units in the last place, by lexicographically ordered bits."""
    n, bits = len(lbits), space.kind.bits
    if no_sign_flip:  # same signs: raw patterns are ordered; only +0 vs -0 can wrap (to MIN)
        steps = np.subtract(lbits, rbits, out=space.get("x", n, bits))
        low, high = int(steps.min()), int(steps.max())
        if low != int(np.iinfo(lbits.dtype).min):
            return max(high, -low)
    ordered_left = _ordered(lbits, space.get("L", n, bits), space.get("S", n, bits))
    ordered_right = _ordered(rbits, space.get("R", n, bits), space.get("S", n, bits))
    wide = np.float64 if lbits.itemsize == 8 else np.int64  # 64-bit distances may overflow
    distance = np.subtract(ordered_left, ordered_right, out=space.get("D", n, wide), dtype=wide)
    return int(max(float(distance.max()), -float(distance.min())))


def _ordered(bits: np.ndarray, out: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Sign-magnitude patterns as ordered integers: i < 0 becomes INT_MIN - i (-0 == +0)."""
    np.bitwise_and(bits, np.iinfo(bits.dtype).max, out=out)  # the magnitude
    np.right_shift(bits, bits.dtype.itemsize * 8 - 1, out=sign)  # 0, or -1 where negative
    np.bitwise_xor(out, sign, out=out)
    np.subtract(out, sign, out=out)  # negated where the sign bit was set
    return out
