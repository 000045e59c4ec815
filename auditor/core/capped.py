"""Read a small file we are about to parse (a key, a policy, a certificate), safely.

``read_capped(path, limit, what)`` opens without blocking and without following the
caller into a device: the file must be a regular file (a FIFO, ``/dev/zero``, a socket
or a folder is refused by name and kind, never read), and at most ``limit`` bytes are
read (a larger file is refused). Every failure is one ``InputError`` line naming the
path and ``what`` it was meant to be.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from auditor.core.errors import InputError

KEY_LIMIT = 64 * 1024
POLICY_LIMIT = 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_capped(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; ``InputError`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise InputError(f"{path}: is {kind}, not a {what} file", hint="give a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit} bytes: not a {what} file")
    return data
