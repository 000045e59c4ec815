"""The one writer of every file a command writes where the user said (reports, pages,
certificates, keys, lockfiles, CI workflows), and the checks it makes first.

A target is a path the user named. Before anything is written:

- an existing target must be a regular file: a symbolic link (never followed, ``lstat``),
  FIFO, socket, character or block device or folder is refused, whatever it points at,
  so ``/dev/full``, a link to ``~/.bashrc`` or a FIFO stays what it was;
- its folder (made when missing) must let us create a file in it: ``probe`` creates and
  removes a temporary file there, which also refuses pseudo file systems (``/proc``);
- ``-`` is stdout where the command documents it (``stdout=True``), else a file named ``-``.

Then ``write_target`` writes a temporary file in the same folder (``O_EXCL|O_NOFOLLOW``),
sets its mode, fsyncs it, renames it over the target (``os.replace`` renames over a link
instead of writing through it) and fsyncs the folder: readers see the old or the new file,
never a mix. ``write_new`` does the same but never replaces an existing file (keys).

Every refusal or failure is one ``InputError`` (exit 2) that names the path and the reason.
Folder targets (``check_folder``: ``--dir``, ``--report-dir``, ``checkout DEST``) must be
missing or a real folder, not a link to one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from auditor.core.errors import InputError

STDOUT = Path("-")
_KINDS = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))
_HINT = "give a new or regular file path"


def kind_of(mode: int) -> str:
    """The name of a file type (``st_mode``) for messages: "FIFO", "symbolic link", …"""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing, or under a file: see above
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror}", hint=_HINT) from None


def check_target(path: Path, *, stdout: bool = True, probe: bool = True) -> None:
    """Refuse a file target that exists and is not a regular file, or whose folder cannot
    take a new file (``probe``); ``-`` is stdout when ``stdout``. Writes nothing lasting."""
    if stdout and path == STDOUT:
        return
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: refusing to replace a {kind_of(st.st_mode)}: output goes "
                         "to regular files",
                         hint=_HINT + (", or - for stdout" if stdout else ""))
    folder = _existing_ancestor(path)
    if probe:
        _probe(path, folder)


def check_folder(path: Path) -> None:
    """Refuse a folder target that exists and is not a real folder (a link to one included),
    or that cannot take a new file (its nearest existing folder, when it is missing)."""
    st = _lstat(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: refusing to write into a {kind_of(st.st_mode)}: "
                         "a folder is needed", hint="give a new or existing folder")
    _probe(path, path if st is not None else _existing_ancestor(path))


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing folder above ``path`` (what ``mkdir -p`` would build on)."""
    here = path.parent
    while True:
        st = _lstat(here)
        if st is not None:
            if not here.is_dir():  # a link to a folder above the target is followed
                raise InputError(f"{path}: cannot write: {here} is a {kind_of(st.st_mode)}, "
                                 "not a folder", hint=_HINT)
            return here
        if here == here.parent:
            return here
        here = here.parent


def _probe(path: Path, folder: Path) -> None:
    """Create and remove a temporary file in ``folder``: it takes new files (not /proc)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".audit-probe-", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write: cannot create a file in {folder}: "
                         f"{exc.strerror}", hint=_HINT) from None
    os.close(fd)
    os.unlink(tmp)


def write_target(path: Path, data: bytes, mode: int = 0o644, *, stdout: bool = True) -> None:
    """Write an output the user named: stdout for ``-`` (when ``stdout``), else atomically
    after ``check_target``; ``InputError`` (exit 2, one line) on any refusal or failure."""
    if stdout and path == STDOUT:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    check_target(path, stdout=stdout, probe=False)
    _as_input_error(path, lambda: _replace_with(path, data, mode, exclusive=False))


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and exactly ``mode``, atomically, never replacing
    anything that exists there (a link included): ``InputError`` when something does."""
    st = _lstat(path)
    if st is not None:
        raise InputError(f"{path}: already exists ({kind_of(st.st_mode)})",
                         hint="never overwritten; choose another name or folder")
    _as_input_error(path, lambda: _replace_with(path, data, mode, exclusive=True))


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.
    For the store's own files: ``OSError`` passes up (use ``write_target`` for targets)."""
    _replace_with(path, data, mode, exclusive=False)


def _as_input_error(path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}", hint=_HINT) from None


def _replace_with(path: Path, data: bytes, mode: int, *, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exact, whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(tmp, path, follow_symlinks=False)  # fails when anything is there
            except FileExistsError:
                raise InputError(f"{path}: already exists", hint="never overwritten") from None
        else:
            os.replace(tmp, path)  # renames over the name; never writes through a link
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
