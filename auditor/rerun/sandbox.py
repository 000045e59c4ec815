"""Run a recorded command again, exactly: same tree, inputs, seeds and settings.

``prepare`` rebuilds the source tree into the rerun's own private copy (checked against
its Merkle root before anything runs), re-checks every input's fingerprint, and hands the
copy to the rerun user: code and pre-existing untracked files are the rerun's to change
(real scripts overwrite ``model.pt`` and write into an existing ``checkpoints/``), while
declared data inputs stay read-only (root-owned, mode 0444, in sticky folders the rerun
cannot rename or empty). Hermetic means the rerun cannot reach the network, the host or
the store, not that it cannot write in its working directory. ``prepare`` also computes
the replayed environment: the recorded allowlisted variables, PYTHONHASHSEED, thread
counts (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to the torch thread count seen in the
original process), ``CUBLAS_WORKSPACE_CONFIG``, and the probe. The plan is executed by
``auditor.rerun.in_docker`` (a container of the built image) or ``auditor.rerun.in_venv``
(the built venv on this host); what the sandbox was is returned in ``Executed.notes`` and
stored with the rerun record. Plans are immutable.

``SKIPPABLE`` settings exist for one purpose: tests that prove a setting matters leave it
out on purpose (``--skip-replay``, hidden); a certificate states any skipped setting.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from auditor.core.errors import CouldNotVerify, IntegrityError
from auditor.core.schema import RunRecord
from auditor.env.access import RERUN_UID
from auditor.record.capture.data import check_unchanged
from auditor.record.capture.git import rebuild_tree
from auditor.record.capture.secrets import REDACTED
from auditor.record.container import HOST_SPECIFIC
from auditor.record.outputs import Snapshot
from auditor.store import RunStore

SKIPPABLE = frozenset({"pythonhashseed", "threads", "env"})
_PY = re.compile(r"^(?:python|pypy)[0-9.]*$")


@dataclass(frozen=True)
class Limits:
    """Resource limits of a rerun."""

    timeout_s: int = 3600
    mem_limit: str = "8g"
    pids_limit: int = 512
    gpus: int = 0


@dataclass(frozen=True)
class Prepared:
    """A rerun ready to execute."""

    record: RunRecord
    workdir: Path  # holds tree/ and probe/
    tree: Path
    cwd: Path  # inside tree
    argv: tuple[str, ...]
    env: Mapping[str, str]
    snapshot: Snapshot
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executed:
    """What a rerun did, and the sandbox it did it in (``notes``, stored with the rerun)."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    probe_dir: Path
    seen_as: str  # the tree's path as the rerun saw it: /work in a container
    notes: tuple[str, ...] = ()


def prepare(
    store: RunStore,
    record: RunRecord,
    workdir: Path,
    *,
    skip_replay: frozenset[str] = frozenset(),
    pass_env: tuple[str, ...] = (),
) -> Prepared:
    """Rebuild the tree, check inputs, and compute argv and environment."""
    unknown = skip_replay - SKIPPABLE
    if unknown:
        raise CouldNotVerify(f"unknown setting(s) to skip: {', '.join(sorted(unknown))}")
    if record.code is None:
        raise CouldNotVerify(f"run {record.identity.id} has no captured code to rerun")
    tree = rebuild_tree(
        record.code, {a.name: a for a in record.artifacts}, store.blobs, workdir / "tree"
    )
    _check_inputs(record, tree)
    cwd = (tree / record.command.cwd).resolve()
    if not cwd.is_relative_to(tree.resolve()):
        raise IntegrityError(f"recorded working directory {record.command.cwd!r} escapes the tree")
    cwd.mkdir(parents=True, exist_ok=True)
    hand_over(tree, _protected(record, tree))
    (workdir / "probe").mkdir()
    os.chmod(workdir / "probe", 0o777)
    env = replay_env(record, skip_replay, pass_env)
    return Prepared(
        record=record,
        workdir=workdir,
        tree=tree,
        cwd=cwd,
        argv=tuple(_argv(record)),
        env=MappingProxyType(env),  # read-only: the plan is immutable, its mapping too
        snapshot=Snapshot.take(cwd, []),
    )


def _check_inputs(record: RunRecord, tree: Path) -> None:
    """Every recorded input must still match its fingerprint; bring untracked ones in."""
    assert record.code is not None
    for data in record.data:
        inside = tree / data.path
        source = inside if inside.exists() else _host_path(record, data.path)
        reason = check_unchanged(data, source)
        if reason:
            raise CouldNotVerify(reason, hint="restore the recorded input or record a new run")
        if not inside.exists() and inside.resolve().is_relative_to(tree.resolve()):
            inside.parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            copy(source, inside)  # git-ignored data: copied in, then locked down with the tree


def _host_path(record: RunRecord, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(record.code.root) / p  # type: ignore[union-attr]


def _protected(record: RunRecord, tree: Path) -> list[Path]:
    """The declared inputs that lie inside the tree: they stay read-only."""
    root = tree.resolve()
    found = []
    for data in record.data:
        inside = (tree / data.path).resolve()
        if inside != root and inside.is_relative_to(root) and inside.exists():
            found.append(inside)
    return found


def hand_over(tree: Path, protected: list[Path]) -> None:
    """Give the rerun user its copy of the tree; declared inputs stay read-only.

    As root: everything belongs to the rerun user, except declared inputs (files root-owned
    0444, folders root-owned sticky 1775 so new files may be added but no recorded one
    changed, renamed or removed) and the folders above them (root-owned, sticky, group
    writable: the rerun may create and replace its own files there, never the inputs).
    Not root (no chown): code is made world-writable and inputs read-only the same way.
    """
    root = tree.resolve()
    inputs = [p.resolve() for p in protected]
    above = {a for p in inputs for a in p.parents if a == root or a.is_relative_to(root)}
    as_root = os.geteuid() == 0

    def is_input(path: Path) -> bool:
        return any(path == p or path.is_relative_to(p) for p in inputs)

    def folder(path: Path) -> None:
        if is_input(path) or path in above:
            os.chmod(path, 0o1775 if as_root else 0o1777)
            if as_root:
                os.chown(path, 0, RERUN_UID)
        elif as_root:
            os.chown(path, RERUN_UID, RERUN_UID)
            os.chmod(path, 0o755)
        else:
            os.chmod(path, 0o777)

    for dirpath, _dirs, files in os.walk(root):
        here = Path(dirpath)
        folder(here)
        for name in files:
            path = here / name
            if path.is_symlink():
                if as_root:
                    os.lchown(path, 0 if is_input(path) else RERUN_UID, RERUN_UID)
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if is_input(path):
                os.chmod(path, 0o444)
                if as_root:
                    os.chown(path, 0, 0)
            elif as_root:
                os.chown(path, RERUN_UID, RERUN_UID)
                os.chmod(path, (mode | 0o600) & 0o755)
            else:
                os.chmod(path, (mode | 0o666) & 0o777)


def replay_env(
    record: RunRecord, skip: frozenset[str], pass_env: tuple[str, ...]
) -> dict[str, str]:
    """The environment variables the rerun gets."""
    env: dict[str, str] = {}
    if "env" not in skip:
        env = {
            k: v
            for k, v in record.environment.env_vars.items()
            if v != REDACTED and k not in HOST_SPECIFIC and not k.startswith("AUDITOR_")
        }
    for name in pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    seeds, det = record.seeds, record.determinism
    if "pythonhashseed" in skip:
        env.pop("PYTHONHASHSEED", None)
    elif seeds.pythonhashseed:
        env["PYTHONHASHSEED"] = seeds.pythonhashseed
    if "threads" in skip:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.pop(name, None)
    elif det and det.torch_num_threads:
        _replay_threads(env, det.torch_num_threads)
    if det and det.cublas_workspace_config:
        env["CUBLAS_WORKSPACE_CONFIG"] = det.cublas_workspace_config
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _replay_threads(env: dict[str, str], recorded: int) -> None:
    """Make torch use the recorded thread count. Recorded OMP/MKL variables are already in
    ``env``; otherwise OMP_NUM_THREADS is set only when this host's default (one thread per
    usable core) would differ, so a matching rerun keeps the original's environment."""
    if "OMP_NUM_THREADS" in env or "MKL_NUM_THREADS" in env:
        return
    if recorded != len(os.sched_getaffinity(0)):
        env["OMP_NUM_THREADS"] = str(recorded)


def _argv(record: RunRecord) -> list[str]:
    argv = list(record.command.argv)
    if any(REDACTED in a for a in argv):
        raise CouldNotVerify(
            "the recorded command line holds a redacted secret, so it cannot be replayed exactly",
            hint="pass secrets through the environment and the policy's pass_env instead of argv",
        )
    if argv and _PY.match(Path(argv[0]).name):
        argv[0] = "python"
    return argv


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as SIGINT does), so the rerun's container, process
    group and scratch folder are removed by the ``finally`` blocks on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A work directory the rerun user can enter (the tree's parent must be traversable)."""
    tmp = tempfile.TemporaryDirectory(prefix="auditor-rerun-")
    os.chmod(tmp.name, 0o755)
    return tmp


def cleanup(workdir: Path) -> None:
    """Remove a rerun's work directory even though its files were made read-only."""
    for dirpath, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
    shutil.rmtree(workdir, ignore_errors=True)
