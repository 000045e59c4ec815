"""Whose is a changed file? Recordings running at the same time in one tree.

Without ``--output`` a run's outputs are the files that changed in its working directory
while it ran. Another process writing there at the same time (a sweep recorded beside it)
would make its files this run's. So:

* the probe (``record/probe/sitecustomize.py``) notes, in every Python process of the run,
  each path opened for writing, renamed onto, copied to, truncated or touched, and the
  targets of ``torch.save`` and safetensors' ``save_file`` (native writers that raise no
  audit event): ``writes-<pid>.txt`` in the run's probe folder;
* each ``audit record`` holds a *lease* while it runs: a small JSON file in a private
  per-user folder (``$XDG_CACHE_HOME/auditor/recordings``, by default
  ``~/.cache/auditor/recordings``, mode 0700) naming its run, pid,
  working directory, start, end, its probe folder and, once it ends, the paths its
  processes wrote (under its working directory). Leases are kept a day after they end.

A changed file is this run's output when its own processes were seen writing it, or when no
other recording overlapped it in time in the same tree (today's rule: a shell redirect, a
non-Python writer). Otherwise it is not stored: written by the other recording only, it is
that run's (a note names it); seen by neither, or by both, the recorder cannot tell and says
so (a note and a warning: declare it with ``--output`` if it is this run's). Recordings by
another user, or on another machine sharing the folder, are not seen.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditor.store.summaries import pid_alive

KEEP_S = 86_400.0  # an ended lease is kept this long (a recording that overlapped it reads it)
MAX_WRITES = 100_000  # paths a lease publishes
MAX_WRITES_BYTES = 64 << 20  # read from one writes file


@dataclass(frozen=True)
class Lease:
    """This recording's lease file and what it says."""

    path: Path
    run_id: str
    root: Path
    started: float
    probe: Path


def lease_dir() -> Path | None:
    """The private per-user lease folder (made 0700), or None when it is not safe to use
    (someone else's, a link, open to others) or cannot be made (no home)."""
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = cache / "auditor" / "recordings"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return folder


def register(run_id: str, root: Path, probe: Path) -> Lease | None:
    """Hold a lease for the recording of ``run_id`` in ``root`` (None where no lease folder
    can be used: concurrent recordings then go unnoticed, as before)."""
    folder = lease_dir()
    if folder is None:
        return None
    _prune(folder)
    lease = Lease(folder / f"{run_id}.json", run_id, root.resolve(), time.time(), probe)
    _write(lease, None, None)
    return lease


def release(lease: Lease | None) -> None:
    """Mark the lease ended, publishing the paths this run's processes wrote under its
    root (other recordings that overlapped it read them)."""
    if lease is None:
        return
    root = str(lease.root) + os.sep
    wrote = sorted(p for p in own_writes(lease.probe) if p.startswith(root))[:MAX_WRITES]
    _write(lease, time.time(), wrote)


def _write(lease: Lease, ended: float | None, writes: list[str] | None) -> None:
    data = {"run_id": lease.run_id, "pid": os.getpid(), "root": str(lease.root),
            "started": lease.started, "ended": ended, "probe": str(lease.probe),
            "writes": writes}
    tmp = lease.path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, lease.path)
    except OSError:
        pass  # best effort: a full /tmp loses the lease, never the recording


def _read(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _prune(folder: Path) -> None:
    now = time.time()
    for path in folder.glob("*.json"):
        data = _read(path)
        ended, started, pid = (data or {}).get("ended"), (data or {}).get("started"), (
            data or {}).get("pid")
        stale = data is None or (
            isinstance(ended, float | int) and ended < now - KEEP_S) or (
            ended is None and isinstance(started, float | int) and started < now - KEEP_S
            and isinstance(pid, int) and not pid_alive(pid))
        if stale:
            path.unlink(missing_ok=True)


def own_writes(probe: Path) -> set[str]:
    """The real paths the probe saw this run's processes write."""
    found: set[str] = set()
    for path in sorted(probe.glob("writes-*.txt")):
        try:
            with path.open("rb") as fh:
                text = fh.read(MAX_WRITES_BYTES).decode("utf-8", "surrogateescape")
        except OSError:
            continue
        found.update(os.path.realpath(line) for line in text.splitlines() if line)
    return found


def _nested(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def others(lease: Lease) -> list[tuple[str, set[str]]]:
    """The other recordings that overlapped this one in time, in a tree nested with this
    one: (run id, the real paths they wrote so far)."""
    now = time.time()
    found = []
    for path in sorted(lease.path.parent.glob("*.json")):
        data = _read(path)
        if data is None or path == lease.path:
            continue
        root, started, ended = data.get("root"), data.get("started"), data.get("ended")
        if not isinstance(root, str) or not _nested(Path(root), lease.root):
            continue
        if not isinstance(started, float | int) or started > now:
            continue
        if isinstance(ended, float | int) and ended < lease.started:
            continue
        writes = data.get("writes")
        probe = data.get("probe")
        wrote = (set(map(os.path.realpath, writes)) if isinstance(writes, list)
                 else own_writes(Path(probe)) if isinstance(probe, str) else set())
        found.append((str(data.get("run_id")), wrote))
    return found


def claimer(lease: Lease | None, root: Path) -> Callable[[str], str | None] | None:
    """For a changed file (relative to ``root``): None when it is this run's output, else
    why it is not stored. None (no check) when no other recording overlapped this one."""
    if lease is None:
        return None
    concurrent = others(lease)
    if not concurrent:
        return None
    mine = own_writes(lease.probe)
    names = ", ".join(run for run, _w in concurrent)

    def why_not(rel: str) -> str | None:
        full = os.path.realpath(root / rel)
        by = [run for run, wrote in concurrent if full in wrote]
        if full in mine and not by:
            return None
        if full in mine:
            return (f"ambiguous: this run and run {', '.join(by)}, recorded at the same time "
                    "in this tree, both wrote it; not stored as an output (declare it with "
                    "--output if it is this run's)")
        if by:
            return (f"written by run {', '.join(by)}, recorded at the same time in this "
                    "tree; not this run's output")
        return (f"ambiguous: another recording (run {names}) was running in this tree and "
                "this run's processes were not seen writing it; not stored as an output "
                "(declare it with --output if it is this run's)")

    return why_not
