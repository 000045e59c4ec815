"""What a dead ``audit verify`` leaves behind, and its cleanup by the next command.

A rerun's scratch folder (``<tmp>/auditor-rerun-*``) holds ``lease.json``, written by the
verify (or ``audit rerun``) that made it, before anything else happens in it: its pid, the
pid's start time (``/proc/<pid>/stat``, so a reused pid is not mistaken for it), the boot
id, the backend, a digest of the store's URL and, once stored, the rerun's run id. The
folder is the verifier's (0755, not writable by the rerun user), and so is the lease.

``reap_dead`` runs whenever a command opens a store (``cli/options.py``): for every lease
of this user whose process is gone (a ``kill -9``, an OOM kill, a power cut), it removes the
docker containers labelled with that scratch folder, and, when the lease names the store
just opened, marks the rerun ``crashed`` (if still ``running``) and removes the folder. A
lease of another store keeps its folder until that store is opened (only its containers go
at once). A lease whose process is alive, with the same start time, is never touched.

Imports only the standard library at module level: every command opening a store pays a
glob of the temporary folder, nothing more, unless a dead lease is found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.store import RunStore

LEASE = "lease.json"
PREFIX = "auditor-rerun-"
LABEL = "auditor.scratch"  # the docker label naming the scratch folder of a container
_MAX_LEASE_BYTES = 4096


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (None when it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def store_digest(url: str) -> str:
    """Names the store in a lease without its URL (which may hold a password)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def take(workdir: Path, store_url: str, backend: str) -> None:
    """Write the lease of this process on ``workdir``."""
    _write(workdir, {"pid": os.getpid(), "start": start_time(os.getpid()), "boot": _boot_id(),
                     "host": socket.gethostname(), "backend": backend,
                     "store": store_digest(store_url), "run": None})


def note_run(workdir: Path, run_id: str) -> None:
    """Add the rerun's run id to the lease of ``workdir`` (no lease: nothing to do)."""
    lease = read(workdir)
    if lease is not None:
        _write(workdir, {**lease, "run": run_id})


def _write(workdir: Path, lease: dict[str, Any]) -> None:
    tmp = workdir / f".{LEASE}.tmp"
    tmp.write_text(json.dumps(lease))
    os.chmod(tmp, 0o644)
    os.replace(tmp, workdir / LEASE)


def read(workdir: Path) -> dict[str, Any] | None:
    """The lease in ``workdir``: a regular file of this user's, small, a JSON object."""
    path = workdir / LEASE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        data = f.read(_MAX_LEASE_BYTES + 1)
    try:
        lease = json.loads(data) if len(data) <= _MAX_LEASE_BYTES else None
    except ValueError:
        return None
    return lease if isinstance(lease, dict) and isinstance(lease.get("pid"), int) else None


def alive(lease: dict[str, Any]) -> bool:
    """Whether the process that took ``lease`` still runs (same pid, start time, boot)."""
    if lease.get("host") != socket.gethostname():
        return True  # another host's (a shared /tmp): not ours to judge
    if lease.get("boot") != _boot_id():
        return False
    now = start_time(lease["pid"])
    return now is not None and now == lease.get("start")


def dead_leases() -> list[tuple[Path, dict[str, Any]]]:
    """The scratch folders of this user whose verify is gone, with their leases."""
    found = []
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*")):
        with contextlib.suppress(OSError):
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            lease = read(folder)
            if lease is not None and not alive(lease):
                found.append((folder, lease))
    return found


def reap_dead(store: RunStore) -> list[str]:
    """Clean what dead verifies left (see the module's docstring); one line per cleanup."""
    dead = dead_leases()
    if not dead:
        return []
    said = []
    ours = store_digest(store.url)
    for folder, lease in dead:
        removed = remove_containers(folder) if lease.get("backend") == "docker" else 0
        what = [f"{removed} container(s) removed"] if removed else []
        if lease.get("store") == ours:
            if isinstance(lease.get("run"), str) and _mark_crashed(store, lease):
                what.append(f"rerun {lease['run']} marked crashed")
            from auditor.rerun.sandbox import cleanup

            cleanup(folder)
            what.append(f"{folder} removed")
        if what:
            said.append(f"cleaned up after a dead verify (pid {lease['pid']}): "
                        + ", ".join(what))
    return said


def remove_containers(folder: Path) -> int:
    """Remove the containers labelled with ``folder`` (0 when no engine answers)."""
    import docker.errors

    from auditor.core.errors import EngineUnavailable
    from auditor.env.engine import docker_client

    try:
        client = docker_client(timeout=30)
    except EngineUnavailable:
        return 0
    removed = 0
    try:
        # sparse: no per-container inspect, so one removed meanwhile is no error
        listed = client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL}={folder}"})
        for left in listed:
            with contextlib.suppress(docker.errors.DockerException):
                left.remove(force=True)
                removed += 1
    finally:
        client.close()
    return removed


def _mark_crashed(store: RunStore, lease: dict[str, Any]) -> bool:
    """Mark the lease's rerun crashed when it is still ``running``."""
    from auditor.core.errors import AuditorError

    try:
        record = store.get_record(lease["run"])
    except AuditorError:
        return False
    if record.identity.status != "running" or record.identity.reproduces is None:
        return False
    notes = {**record.not_captured,
             "end": f"audit verify (pid {lease['pid']}) died during the rerun; a later "
                    "command removed its container and scratch folder"}
    store.put_record(record.model_copy(update={
        "identity": record.identity.model_copy(update={"status": "crashed"}),
        "not_captured": notes}))
    return True
