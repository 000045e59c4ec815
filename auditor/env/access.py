"""The unprivileged user a rerun runs as (uid 1000), and what it can reach on this host.

``blocked_for`` answers, from the mode bits along a path (links resolved, no
supplementary groups, as ``setpriv --clear-groups`` runs it), whether that user can read a
file or folder, and names the first step that stops it: a venv rerun as root checks its
interpreter, venv and tree with it before starting (a 0700 clone or ``/root`` would
otherwise make Python fall back to the system prefix and fail to import anything), and
checks that the store is closed to it. POSIX ACLs are not read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

RERUN_UID = 1000


def _allows(st: os.stat_result, want: int, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def blocked_for(path: Path, uid: int = RERUN_UID, gid: int = RERUN_UID) -> Path | None:
    """The first path on the way to ``path`` that ``uid`` cannot enter or read; None when
    it can read ``path`` (and list it, for a folder)."""
    target = path.resolve()
    for step in [*reversed(target.parents), target]:
        try:
            st = os.stat(step)
        except OSError:
            return step
        is_dir = stat.S_ISDIR(st.st_mode)
        want = (5 if step == target else 1) if is_dir else 4
        if not _allows(st, want, uid, gid):
            return step
    return None
