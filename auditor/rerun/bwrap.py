"""Bubblewrap (``bwrap``) around a venv rerun: what it sees, and whether it can be had here.

The rerun gets a new mount namespace built from nothing: ``/usr`` (and the merged-usr
links ``/bin``, ``/lib``, …) read-only, the few files of ``/etc`` the dynamic loader and
Python read, a made-up ``/etc/passwd``, ``/etc/group`` and ``/etc/hosts`` naming only
itself, a fresh ``/proc``, a minimal ``/dev``, empty tmpfs ``/tmp`` and ``/dev/shm``, and
the paths it was given: read-only (its venv, the interpreter's prefix, the probe and the
API) and writable (its copy of the tree, its probe folder), each at its own path. No other
host file exists for it: not ``/home``, ``/root``, ``/var``, ``/opt``, ``/srv``, the host's
``/tmp`` or the store. It has no network (``--unshare-net``: loopback only), its own pid,
IPC and UTS namespaces, a new session, and dies with its parent.

As root, bwrap makes the namespaces as root and the rerun then drops to uid 1000 inside
(``setpriv``: no groups, no capabilities, no new privileges); a mapped user namespace is
not used, since it would map the rerun's uid to root outside and let it chmod the
root-owned inputs. As another user, bwrap runs unprivileged with ``--unshare-user`` (the
kernel must allow unprivileged user namespaces).

``AUDITOR_BWRAP`` names the bwrap to use (default: ``bwrap`` on PATH); ``off`` disables it.
``find_bwrap`` answers once per binary whether it can make the namespaces here (a short
probe run); where it cannot, the venv rerun is unisolated and says so.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from pathlib import Path

from auditor.env.access import RERUN_UID

BWRAP_ENV = "AUDITOR_BWRAP"
OFF = frozenset({"off", "0", "no", "none", "false"})
# the stored sandbox notes that decide the certificate's isolation level
ISOLATED = "venv backend: bubblewrap"
UNISOLATED = "venv backend: unisolated"

_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives",
        "os-release", "nsswitch.conf")
_NAMESPACES = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session")


def find_bwrap() -> tuple[str | None, str]:
    """The bwrap to use, or None and why not (for the unisolated note)."""
    setting = os.environ.get(BWRAP_ENV)
    if setting is not None and setting.strip().lower() in OFF:
        return None, f"bubblewrap is turned off ({BWRAP_ENV}={setting})"
    path = shutil.which(setting or "bwrap")
    if path is None:
        what = f"{BWRAP_ENV}={setting} is not an executable" if setting else \
            "bubblewrap (bwrap) is not installed"
        return None, what
    why = _cannot_sandbox(str(Path(path).resolve()), os.geteuid() == 0)
    return (None, why) if why else (path, "")


@functools.lru_cache(maxsize=8)
def _cannot_sandbox(path: str, as_root: bool) -> str:
    """Why ``path`` cannot make the rerun's namespaces here ("" when it can)."""
    argv = [path, *_NAMESPACES, *(() if as_root else ("--unshare-user",)),
            "--ro-bind", "/", "/", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap did not run: {exc}"
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        return f"bubblewrap cannot make namespaces here ({said[-1] if said else done.returncode})"
    return ""


def sandbox_files(folder: Path) -> Path:
    """The rerun's own ``/etc/passwd``, ``group`` and ``hosts``, written in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = RERUN_UID if os.geteuid() == 0 else os.geteuid()
    gid = RERUN_UID if os.geteuid() == 0 else os.getegid()
    (folder / "passwd").write_text(
        f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"auditor:x:{uid}:{gid}:auditor rerun:/tmp:/usr/sbin/nologin\n")
    (folder / "group").write_text(f"root:x:0:\nauditor:x:{gid}:\n")
    (folder / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    for path in [folder, *folder.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return folder


def python_prefix(env_dir: Path) -> Path | None:
    """The installation the venv's interpreter belongs to (``home`` of ``pyvenv.cfg``,
    its parent), when it lies outside ``/usr`` and so needs a mount of its own."""
    try:
        lines = (env_dir / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            prefix = Path(value.strip()).resolve().parent
            return None if prefix.is_relative_to("/usr") else prefix
    return None


def bwrap_argv(
    bwrap: str,
    *,
    read_only: list[Path],
    writable: list[Path],
    etc: Path,
    cwd: Path,
    gpus: int = 0,
) -> list[str]:
    """The command line that runs what follows it in the sandbox described above."""
    as_root = os.geteuid() == 0
    argv = [bwrap, *_NAMESPACES, *(() if as_root else ("--unshare-user",))]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in _MERGED_USR:
        top = Path("/") / name
        if top.is_symlink():
            argv += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            argv += ["--ro-bind", str(top), str(top)]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
             "--perms", "1777", "--tmpfs", "/tmp"]
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ("passwd", "group", "hosts"):
        argv += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    argv += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    if gpus:  # the NVIDIA devices and what the driver reads (untested here: no GPU)
        argv += ["--ro-bind-try", "/sys", "/sys"]
        for dev in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind-try", dev, dev]
    binds = sorted([(p, "--ro-bind") for p in read_only] + [(p, "--bind") for p in writable],
                   key=lambda bind: len(bind[0].parts))  # a folder before what is inside it
    destinations = {p for p, _how in binds}
    # the folders above each mount, made traversable (bwrap would make them 0700)
    above = sorted({a for p in destinations for a in p.parents
                    if a != Path("/") and not a.is_relative_to("/usr")} - destinations,
                   key=lambda a: len(a.parts))
    for folder in above:
        argv += ["--perms", "0755", "--dir", str(folder)]
    for path, how in binds:
        argv += [how, str(path), str(path)]
    argv += ["--remount-ro", "/", "--chdir", str(cwd), "--"]  # its root: an empty frame
    if as_root:
        uid = str(RERUN_UID)
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--no-new-privs", "--"]
    return argv


def mounted(path: Path, mounts: list[Path]) -> bool:
    """Whether ``path`` is visible in the sandbox through one of ``mounts`` (or /usr)."""
    real = path.resolve()
    return any(real == m or real.is_relative_to(m) for m in [*mounts, Path("/usr")])
