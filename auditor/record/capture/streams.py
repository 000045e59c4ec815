"""Files that auditor's own stdout and stderr end up in: neither source nor output.

``audit record -- python train.py > train.log 2>&1`` makes ``train.log`` a file of the
tree that holds auditor's progress lines and ids: the rerun can never produce it. So every
regular file our fd 1 or 2 is open on is one of "our own logs", and so is every regular
file that a process reading our stdout/stderr pipe has open for writing (``| tee FILE``,
followed through a few more pipes: ``| grep loss | tee FILE``), as far as ``/proc`` shows
it. Files are matched by (device, inode), so a path spelled differently or a hard link is
still recognised.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PIPE = re.compile(r"^pipe:\[(\d+)\]$")
_MAX_HOPS = 3  # pipes followed from our stdout: tee, grep | tee, ...


@dataclass(frozen=True)
class OwnLogs:
    """Our own log files: (device, inode) -> how we write to it."""

    files: dict[tuple[int, int], str] = field(default_factory=dict)

    def how(self, path: Path) -> str | None:
        """Why ``path`` is one of our own logs, or None when it is not."""
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self.files.get((st.st_dev, st.st_ino))

    def merged(self, other: OwnLogs) -> OwnLogs:
        """Both sets (the tree is looked at when a run begins and when it ends)."""
        return OwnLogs({**self.files, **other.files})


def find_own_logs(fds: tuple[int, ...] = (1, 2)) -> OwnLogs:
    """The files our ``fds`` are redirected into, directly or through a pipe reader."""
    found: dict[tuple[int, int], str] = {}
    for fd in fds:
        name = {1: "stdout", 2: "stderr"}.get(fd, f"fd {fd}")
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.setdefault((st.st_dev, st.st_ino), f"audit record's {name} is redirected here")
        elif stat.S_ISFIFO(st.st_mode):
            for key, reader in _through_pipe(st.st_ino, os.getpid()):
                found.setdefault(key, f"audit record's {name} is piped into {reader}, which "
                                      "writes here")
    return OwnLogs(found)


def _through_pipe(pipe_ino: int, me: int) -> list[tuple[tuple[int, int], str]]:
    """Regular files written by the processes reading pipe ``pipe_ino`` (and downstream)."""
    found: list[tuple[tuple[int, int], str]] = []
    pipes, seen = [pipe_ino], {pipe_ino}
    for _hop in range(_MAX_HOPS):
        readers = _readers(set(pipes), me)
        pipes = []
        for pid in readers:
            label = f"{_comm(pid)} (pid {pid})"
            for fd_path, target, flags in _fds(pid):
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    continue
                if (m := _PIPE.match(target)) and int(m.group(1)) not in seen:
                    seen.add(int(m.group(1)))
                    pipes.append(int(m.group(1)))
                    continue
                try:
                    st = os.stat(fd_path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append(((st.st_dev, st.st_ino), label))
        if not pipes:
            break
    return found


def _readers(pipes: set[int], me: int) -> list[int]:
    """Processes (other than ``me``) holding one of ``pipes`` open for reading."""
    readers = []
    for pid in _pids():
        if pid == me:
            continue
        wanted = {f"pipe:[{ino}]" for ino in pipes}
        for _fd_path, _target, flags in _fds(pid, wanted.__contains__):
            if flags & os.O_ACCMODE == os.O_RDONLY:
                readers.append(pid)
                break
    return readers


def _pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []  # no /proc: only direct redirects are seen


def _fds(pid: int, want: Callable[[str], bool] = lambda _t: True) -> list[tuple[str, str, int]]:
    """(``/proc/PID/fd/N``, link target, open flags) of each fd whose target we ``want``."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    out = []
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
            if not want(target):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}", encoding="ascii") as fh:
                flags = next(int(line.split()[1], 8) for line in fh if line.startswith("flags:"))
        except (OSError, StopIteration, ValueError):
            continue
        out.append((f"{base}/{name}", target, flags))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "a process"
    except OSError:
        return "a process"
