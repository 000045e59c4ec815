"""A run's checkpoints, on the host: list, verify, materialise, compare (issue 19).

The training process writes checkpoints through ``record/checkpoint_io.py``; this module is
what the recorder and the verifier use afterwards:

- ``ingest_spool`` stores a spool folder a recorded command (or a rerun: every byte
  untrusted, read through the rerun's ``open_inside``) left in its probe folder, each file
  checked against the manifest's digest while it streams into the blob store;
- ``list_checkpoints`` / ``checkpoint_at`` / ``resumed_snapshot`` read the record;
- ``load_manifest`` / ``verify_checkpoint`` re-hash the stored objects (``IntegrityError``,
  exit 3, names the step and the file); ``materialise`` writes the folder a rerun resumes
  from (``AUDITOR_RESUME_FROM``);
- ``diff_states`` names what differs between two state snapshots ("optimizer state
  `exp_avg` of `fc1.weight` differs", "torch CPU RNG state differs").

The manifest format and the snapshot's shape are documented in ``checkpoint_io``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from auditor.core.errors import InputError, IntegrityError, StoreError
from auditor.core.schema import ArtifactRef, CheckpointKind, CheckpointRef, RunRecord
from auditor.record.checkpoint_io import (
    API_FILES,
    FORMAT,
    MANIFEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RESUME_ENV,
    STOP_ENV,
    safetensors_digests,
    step_dir,
)
from auditor.store.blobs import BlobStore

__all__ = [
    "RESUME_ENV",
    "STOP_ENV",
    "Manifest",
    "NoCheckpointAt",
    "NoCheckpoints",
    "SpoolResult",
    "StateDifference",
    "checkpoint_at",
    "checkpoint_error",
    "diff_states",
    "ingest_spool",
    "list_checkpoints",
    "load_manifest",
    "materialise",
    "parse_manifest",
    "resumed_snapshot",
    "verify_checkpoint",
]

MANIFEST_LIMIT = 64 << 20
DEFAULT_MAX_FILE = 64 << 30
_DIR_RE = re.compile(r"(step|resumed)-(\d{8})")
_KINDS = ("api", "registered", "resumed")
_HEX64 = re.compile(r"[0-9a-f]{64}")
HOW_TO_ADD = ("add `run.checkpoint(step, model=…, optimizer=…, generators=[…])` to the "
              "training loop (README: Checkpoints and resume)")

Opener = Callable[[Path, str], AbstractContextManager[BinaryIO]]


class NoCheckpoints(InputError):
    """The run has no checkpoints at all (exit 2)."""


class NoCheckpointAt(InputError):
    """The run has checkpoints, but none at the asked step (exit 2)."""


@dataclass(frozen=True)
class Manifest:
    """A parsed checkpoint manifest; ``raw`` is its exact stored bytes."""

    step: int
    kind: str
    files: dict[str, tuple[str, int]]  # name -> (sha256, size)
    state: dict[str, Any]
    sha256: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class StateDifference:
    """One named difference between two state snapshots."""

    part: str  # step, model, optimizer, scheduler, rng, generator, untracked_generator, extra
    name: str
    message: str


@dataclass
class SpoolResult:
    """What ``ingest_spool`` stored and what it refused."""

    checkpoints: list[CheckpointRef] = field(default_factory=list)
    artifacts: list[ArtifactRef] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- the record ---------------------------------------------------------------------------------

def list_checkpoints(record: RunRecord) -> list[CheckpointRef]:
    """The run's checkpoints (``run.checkpoint`` and ``run.log_checkpoint``), by step."""
    return sorted((c for c in record.checkpoints if c.kind != "resumed"), key=lambda c: c.step)


def resumed_snapshot(record: RunRecord) -> CheckpointRef | None:
    """In a resumed rerun, the snapshot of the state ``run.resume`` restored."""
    return next((c for c in record.checkpoints if c.kind == "resumed"), None)


def checkpoint_at(record: RunRecord, step: int) -> CheckpointRef:
    """The checkpoint at ``step``; ``NoCheckpoints`` / ``NoCheckpointAt`` (exit 2) say what
    to do instead."""
    found = list_checkpoints(record)
    if not found:
        raise NoCheckpoints(f"run {record.identity.id} has no checkpoints", hint=HOW_TO_ADD)
    for ref in found:
        if ref.step == step:
            return ref
    nearest = sorted(found, key=lambda c: (abs(c.step - step), c.step))[:2]
    near = " and ".join(str(c.step) for c in sorted(nearest, key=lambda c: c.step))
    raise NoCheckpointAt(f"run {record.identity.id} has no checkpoint at step {step}; the "
                         f"nearest: step {near} ({len(found)} checkpoints, steps "
                         f"{found[0].step}..{found[-1].step})")


# --- manifests ----------------------------------------------------------------------------------

def parse_manifest(data: bytes, label: str, sha256: str = "") -> Manifest:
    """A manifest checked field by field; IntegrityError (exit 3) when malformed."""
    try:
        raw = json.loads(data)
    except ValueError:
        raise IntegrityError(f"{label}: the checkpoint manifest is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise IntegrityError(f"{label}: not an auditor checkpoint manifest")
    step, kind, files, state = raw.get("step"), raw.get("kind"), raw.get("files"), raw.get("state")
    if (isinstance(step, bool) or not isinstance(step, int) or step < 0 or kind not in _KINDS
            or not isinstance(files, dict) or not isinstance(state, dict)):
        raise IntegrityError(f"{label}: the checkpoint manifest is malformed")
    listed: dict[str, tuple[str, int]] = {}
    for name, info in files.items():
        ok = (isinstance(name, str) and _file_name_ok(name) and isinstance(info, dict)
              and isinstance(info.get("sha256"), str) and _HEX64.fullmatch(info["sha256"])
              and isinstance(info.get("size"), int) and info["size"] >= 0)
        if not ok:
            raise IntegrityError(f"{label}: the checkpoint manifest lists a malformed file "
                                 f"{str(name)[:80]!r}")
        listed[name] = (info["sha256"], info["size"])
    if not sha256:
        import hashlib

        sha256 = hashlib.sha256(data).hexdigest()
    return Manifest(step=step, kind=kind, files=listed, state=state, sha256=sha256, raw=data)


def _file_name_ok(name: str) -> bool:
    if name in API_FILES:
        return True
    parts = name.split("/")
    return (len(parts) == 2 and parts[0] == "files" and parts[1] not in ("", ".", "..")
            and "\0" not in parts[1] and "\\" not in parts[1])


def load_manifest(blobs: BlobStore, ref: CheckpointRef) -> Manifest:
    """The checkpoint's manifest, re-hashed (IntegrityError, exit 3, when altered)."""
    label = f"checkpoint step {ref.step}"
    data = blobs.read_bytes(ref.manifest, f"{label} manifest")
    manifest = parse_manifest(data, label, ref.manifest)
    if manifest.step != ref.step:
        raise IntegrityError(f"{label}: its manifest says step {manifest.step}")
    return manifest


def verify_checkpoint(blobs: BlobStore, ref: CheckpointRef) -> Manifest:
    """Re-hash the manifest and every file of the checkpoint, and check the manifest's
    per-tensor digests against the tensor files; IntegrityError names the first problem."""
    manifest = load_manifest(blobs, ref)
    paths = {name: _verified(blobs, ref.step, name, sha, size)
             for name, (sha, size) in manifest.files.items()}
    _check_claims(manifest, paths)
    return manifest


def _verified(blobs: BlobStore, step: int, name: str, sha: str, size: int) -> Path:
    path = blobs.verified_path(sha, f"checkpoint step {step} file {name}")
    if path.stat().st_size != size:  # pragma: no cover - a digest match with another size
        raise IntegrityError(f"checkpoint step {step}: file {name} is {path.stat().st_size} "
                             f"bytes, its manifest says {size}")
    return path


def _check_claims(manifest: Manifest, paths: Mapping[str, Path]) -> None:
    """The snapshot's tensor digests must be what the stored tensor files hold."""
    state = manifest.state
    claims: list[tuple[str, Any]] = []
    if MODEL_FILE in paths:
        claims.append((MODEL_FILE, state.get("model")))
    if OPTIMIZER_FILE in paths:
        opt = state.get("optimizer")
        claims.append((OPTIMIZER_FILE, opt.get("tensors") if isinstance(opt, dict) else None))
    for name, claimed in claims:
        actual = safetensors_digests(paths[name], f"checkpoint step {manifest.step} {name}")[0]
        if actual != claimed:
            raise IntegrityError(f"checkpoint step {manifest.step}: the manifest's tensor "
                                 f"digests do not match {name}")


def materialise(blobs: BlobStore, ref: CheckpointRef, dest: Path) -> Path:
    """Write the checkpoint into ``dest`` (a new or empty folder) for a rerun to resume
    from: ``manifest.json`` plus its files (``model.safetensors``, ``optimizer.safetensors``,
    ``state.json``, or ``files/<name>``), each verified. Returns ``dest``."""
    if ref.kind == "resumed":
        raise InputError(f"checkpoint step {ref.step}: a resumed-state snapshot has no files")
    manifest = load_manifest(blobs, ref)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest}: not an empty folder; the checkpoint is not written there")
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    copies: dict[str, Path] = {}
    for name, (sha, size) in manifest.files.items():
        src = _verified(blobs, ref.step, name, sha, size)
        target = dest / name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, 0o644)
        copies[name] = target
    (dest / MANIFEST).write_bytes(manifest.raw)
    _check_claims(manifest, copies)
    return dest


# --- comparing snapshots -----------------------------------------------------------------------

_RNG_NAMES = {"python": "Python random state", "numpy": "numpy RNG state",
              "torch_cpu": "torch CPU RNG state"}


def diff_states(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[StateDifference]:
    """What differs between two state snapshots (``Manifest.state``): ``expected`` is the
    original run's, ``actual`` the rerun's; each difference named."""
    out: list[StateDifference] = []
    if expected.get("step") != actual.get("step"):
        out.append(StateDifference("step", "step", f"step {expected.get('step')} was expected, "
                                   f"the resumed state is at step {actual.get('step')}"))
    _tensors(out, "model", expected.get("model"), actual.get("model"),
             lambda n: f"model tensor `{n}`")
    _optimizer(out, expected.get("optimizer"), actual.get("optimizer"))
    _scheduler(out, expected.get("scheduler"), actual.get("scheduler"))
    _rng(out, expected.get("rng") or {}, actual.get("rng") or {})
    _generators(out, expected, actual)
    if expected.get("extra") != actual.get("extra"):
        out.append(StateDifference("extra", "extra", "the checkpoint's extra= values differ"))
    if "tensors" in expected or "tensors" in actual:
        _tensors(out, "tensors", expected.get("tensors"), actual.get("tensors"),
                 lambda n: f"checkpoint tensor `{n}`")
    return out


def _both_sides(out: list[StateDifference], part: str, exp: Any, act: Any) -> bool:
    """True when both snapshots hold ``part`` (to be compared further); a part only one of
    them holds is named as such, one missing from both is nothing to compare."""
    if exp is None and act is None:
        return False
    if not isinstance(exp, dict) or not isinstance(act, dict):
        which = "the original" if isinstance(exp, dict) else "the rerun"
        out.append(StateDifference(part, part, f"{part} state is present only in {which}"))
        return False
    return True


def _tensors(out: list[StateDifference], part: str, exp: Any, act: Any,
             label: Callable[[str], str]) -> None:
    if not _both_sides(out, part, exp, act):
        return
    for name in sorted(set(exp) | set(act)):
        e, a = exp.get(name), act.get(name)
        if e is None or a is None:
            where = "the original" if e is not None else "the rerun"
            out.append(StateDifference(part, name, f"{label(name)} is only in {where}"))
        elif (e.get("shape"), e.get("dtype")) != (a.get("shape"), a.get("dtype")):
            out.append(StateDifference(part, name, f"{label(name)} is {e.get('dtype')} "
                                       f"{e.get('shape')} in the original, {a.get('dtype')} "
                                       f"{a.get('shape')} in the rerun"))
        elif e.get("sha256") != a.get("sha256"):
            out.append(StateDifference(part, name, f"{label(name)} differs"))


def _opt_label(name: str) -> str:
    pname, _, key = name.rpartition("/")
    return f"optimizer state `{key}` of `{pname}`" if pname else f"optimizer state `{name}`"


def _optimizer(out: list[StateDifference], exp: Any, act: Any) -> None:
    if not _both_sides(out, "optimizer", exp, act):
        return
    before = len(out)
    _tensors(out, "optimizer", exp.get("tensors"), act.get("tensors"), _opt_label)
    eg, ag = exp.get("param_groups") or [], act.get("param_groups") or []
    if len(eg) != len(ag):
        out.append(StateDifference("optimizer", "param_groups",
                                   f"the optimizer has {len(eg)} param group(s) in the "
                                   f"original, {len(ag)} in the rerun"))
    for i, (e, a) in enumerate(zip(eg, ag, strict=False)):
        for key in sorted(set(e) | set(a)):
            if e.get(key) != a.get(key):
                out.append(StateDifference("optimizer", f"param_groups[{i}].{key}",
                                           f"optimizer param group {i} `{key}` differs: "
                                           f"{e.get(key)!r} → {a.get(key)!r}"))
    if len(out) == before and exp.get("other_sha256") != act.get("other_sha256"):
        out.append(StateDifference("optimizer", "other", "optimizer non-tensor state differs"))


def _scheduler(out: list[StateDifference], exp: Any, act: Any) -> None:
    if not _both_sides(out, "scheduler", exp, act):
        return
    if exp.get("sha256") == act.get("sha256"):
        return
    es, as_ = exp.get("state") or {}, act.get("state") or {}
    keys = [k for k in sorted(set(es) | set(as_)) if es.get(k) != as_.get(k)]
    if not keys:
        out.append(StateDifference("scheduler", "scheduler", "scheduler state differs"))
    for key in keys:
        out.append(StateDifference("scheduler", key, f"scheduler state `{key}` differs: "
                                   f"{_short(es.get(key))} → {_short(as_.get(key))}"))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _rng(out: list[StateDifference], exp: Mapping[str, Any], act: Mapping[str, Any]) -> None:
    for key, label in _RNG_NAMES.items():
        e, a = exp.get(key), act.get(key)
        if e != a:
            if e is None or a is None:
                where = "the original" if e is not None else "the rerun"
                out.append(StateDifference("rng", key, f"{label} was saved only in {where}"))
            else:
                out.append(StateDifference("rng", key, f"{label} differs"))
    ec, ac = exp.get("cuda") or [], act.get("cuda") or []
    if len(ec) != len(ac):
        out.append(StateDifference("rng", "cuda", f"CUDA RNG states of {len(ec)} device(s) in "
                                   f"the original, {len(ac)} in the rerun"))
    for i, (e, a) in enumerate(zip(ec, ac, strict=False)):
        if e != a:
            out.append(StateDifference("rng", f"cuda[{i}]", f"CUDA RNG state of device {i} "
                                       "differs"))


def _generators(out: list[StateDifference], exp: Mapping[str, Any],
                act: Mapping[str, Any]) -> None:
    eg, ag = exp.get("generators") or [], act.get("generators") or []
    if len(eg) != len(ag):
        out.append(StateDifference("generator", "generators", f"{len(eg)} generator(s) in the "
                                   f"original checkpoint, {len(ag)} restored"))
    for i, (e, a) in enumerate(zip(eg, ag, strict=False)):
        if e != a:
            out.append(StateDifference("generator", f"generators[{i}]",
                                       f"generator #{i} (generators=[…]) state differs"))
    eu, au = exp.get("untracked_generators") or {}, act.get("untracked_generators") or {}
    for name in sorted(set(eu) & set(au)):
        if eu[name] != au[name]:
            out.append(StateDifference(
                "untracked_generator", name,
                f"data-loader generator of {name} differs: it was not checkpointed (pass it "
                "in run.checkpoint(generators=[…]) and run.resume(generators=[…]))"))


# --- ingesting a spool folder ------------------------------------------------------------------

@contextlib.contextmanager
def _plain_open(root: Path, rel: str) -> Iterator[BinaryIO]:
    with open(root / rel, "rb") as fh:
        yield cast(BinaryIO, fh)


def _list_dir(root: Path) -> list[str]:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(root, flags)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def ingest_spool(blobs: BlobStore, root: Path, *, opener: Opener | None = None,
                 max_bytes: int = DEFAULT_MAX_FILE, limit: int = 10_000) -> SpoolResult:
    """Store every complete checkpoint under ``root`` (``<probe>/checkpoints``): each file
    streamed into the blob store and checked against its manifest's digest and size on
    the way; a folder without a manifest (killed mid-write) or with a file that does not
    match is left out with a warning. ``opener`` opens ``root/rel`` (the rerun's
    ``open_inside``: no link followed); plain ``open`` by default."""
    result = SpoolResult()
    open_file = opener or _plain_open
    for name in _list_dir(root)[:limit]:
        match = _DIR_RE.fullmatch(name)
        if match is None:
            continue
        try:
            _ingest_one(blobs, root, name, int(match.group(2)), match.group(1), open_file,
                        max_bytes, result)
        except (IntegrityError, InputError, OSError, ValueError) as exc:
            result.warnings.append(f"checkpoint {name} not stored: {exc}")
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            result.warnings.append(f"checkpoint {name} not stored: {exc}")
    result.checkpoints.sort(key=lambda c: (c.step, c.kind))
    return result


def _ingest_one(blobs: BlobStore, root: Path, name: str, step: int, prefix: str,
                open_file: Opener, max_bytes: int, result: SpoolResult) -> None:
    if not os.path.lexists(root / name / MANIFEST):  # only for the message: opened below
        result.warnings.append(f"checkpoint {name} not stored: no manifest (the process "
                               "ended while writing it)")
        return
    with open_file(root, f"{name}/{MANIFEST}") as fh:
        data = fh.read(MANIFEST_LIMIT + 1)
    if len(data) > MANIFEST_LIMIT:
        raise InputError(f"its manifest is over {MANIFEST_LIMIT} bytes")
    manifest = parse_manifest(data, f"checkpoint {name}")
    if manifest.step != step or (manifest.kind == "resumed") != (prefix == "resumed"):
        raise InputError(f"its manifest says {manifest.kind} step {manifest.step}")
    if manifest.kind == "resumed" and manifest.files:
        raise InputError("a resumed-state snapshot lists files")
    arts: list[ArtifactRef] = []
    size = 0
    for fname, (sha, fsize) in manifest.files.items():
        with open_file(root, f"{name}/{fname}") as fh:
            found = os.fstat(fh.fileno())
            if not stat.S_ISREG(found.st_mode) or found.st_size > max_bytes:
                raise InputError(f"{fname} is not a regular file under {max_bytes} bytes")
            got, n = blobs.put_stream(cast(IO[bytes], fh))  # type: ignore[arg-type]
        if (got, n) != (sha, fsize):
            raise IntegrityError(f"{fname} does not match its manifest ({n} bytes, "
                                 f"sha256 {got[:16]}…)")
        size += n
        arts.append(ArtifactRef(name=f"checkpoints/{name}/{fname}", sha256=sha, size=n,
                                kind="checkpoint"))
    msha, mn = blobs.put_bytes(data)
    arts.append(ArtifactRef(name=f"checkpoints/{name}/{MANIFEST}", sha256=msha, size=mn,
                            kind="checkpoint"))
    result.artifacts += arts
    result.checkpoints.append(CheckpointRef(step=step, manifest=msha,
                                            kind=cast(CheckpointKind, manifest.kind),
                                            size=size, files=len(manifest.files)))


def checkpoint_error(probe: Path, *, opener: Opener | None = None) -> tuple[int, str] | None:
    """The error a resume or stop met in the training process (``checkpoint_io.fail``
    leaves ``<probe>/checkpoint-error.json``): (exit code, message), or None."""
    open_file = opener or _plain_open
    try:
        with open_file(probe, "checkpoint-error.json") as fh:
            data = json.loads(fh.read(1 << 16))
    except Exception:  # noqa: BLE001 - absent, a link, garbage: no error to report
        return None
    if (isinstance(data, dict) and isinstance(data.get("exit_code"), int)
            and isinstance(data.get("message"), str)):
        return data["exit_code"], " ".join(data["message"].split())[:500]
    return None


def spool_name(step: int, kind: str) -> str:
    """The spool folder (and artifact prefix) of a checkpoint of this kind."""
    return step_dir(step, "resumed" if kind == "resumed" else "step")
