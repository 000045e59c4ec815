"""A rerun with the built venv's interpreter on this host (weaker isolation than a
container, said in its notes): as root, ``unshare --net`` and a tmpfs over the store, then
``setpriv`` to uid 1000; the rerun user's access to what it needs (and not to the store) is
checked before it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from auditor.core.errors import CouldNotVerify
from auditor.env.access import RERUN_UID, blocked_for
from auditor.record.container import PACKAGE_DIR
from auditor.record.wrap import PROBE_PATH
from auditor.rerun.bwrap import (
    ISOLATED,
    UNISOLATED,
    bwrap_argv,
    find_bwrap,
    mounted,
    python_prefix,
    sandbox_files,
)
from auditor.rerun.sandbox import Executed, Limits, Prepared

_HIDE = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'mount -t tmpfs -o size=4k,mode=000 auditor-hidden "$1" 2>/dev/null || '
    '{ echo "auditor: cannot hide $1 from the rerun" >&2; exit 125; }; '
    'shift; n=$((n-1)); done; exec "$@"'
)


def venv_sandbox(hide: tuple[Path, ...] = ()) -> tuple[list[str], bool, str]:
    """How a venv rerun is confined here: (argv prefix, switch user in Popen, note).

    As root with ``unshare`` and ``setpriv``: a new network namespace (loopback only) and a
    new mount namespace in which every folder of ``hide`` (the store, the original
    repository) is covered by an empty mode-000 tmpfs, then uid 1000 with no groups and no
    new privileges."""
    if os.geteuid() != 0:
        return [], False, "venv backend: network not removed and code writable (not root)"
    if shutil.which("unshare") and shutil.which("setpriv"):
        uid = str(RERUN_UID)
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]
        folders = [str(p) for p in hide]
        hidden = f"; hidden from it: {', '.join(folders)}" if folders else ""
        return (["unshare", "--net", "--mount", "--", "sh", "-c", _HIDE, "sh",
                 str(len(folders)), *folders, *drop, "--"], False,
                f"venv backend: network removed with unshare --net; uid {RERUN_UID}{hidden}")
    return [], True, (f"venv backend: network not removed (unshare or setpriv missing); "
                      f"uid {RERUN_UID}")


def execute_venv(
    prep: Prepared, env_dir: Path, limits: Limits, on_line: Callable[[int, str], None],
    *, hidden: tuple[Path, ...] = (), also_hidden: tuple[Path, ...] = (),
) -> Executed:
    """Run with the venv's interpreter on this host: in bubblewrap where it works here
    (``auditor.rerun.bwrap``), else unisolated (weaker still; the notes say which).

    Unisolated as root, the network namespace is made while still root (``unshare --net``)
    and the rerun then drops to uid 1000 with ``setpriv`` (no groups, no new privileges):
    an unprivileged ``unshare`` is refused by the kernel. Before it starts, uid 1000 must be
    able to read the interpreter, the venv, the probe and the tree (else CouldNotVerify
    naming the path) and must not be able to read any of ``hidden`` (the store: not mounted
    in bubblewrap; covered by a tmpfs in its mount namespace, and closed by its modes, else
    CouldNotVerify); ``also_hidden`` (the original repository) is kept out where possible.
    The rerun gets a process group of its own, killed whole on timeout or interrupt.
    """
    probe_lib, library = _private_copies(prep.workdir)
    python = env_dir / "bin" / "python"
    needed = [prep.tree, prep.cwd, env_dir, python, probe_lib, library, prep.workdir / "probe"]
    bwrap, why_not = find_bwrap()
    if bwrap is not None:
        prefix, notes = _in_bwrap(bwrap, prep, env_dir, limits, needed, hidden, also_hidden)
        switch_user = False
    else:
        hide = tuple(_hideable((*hidden, *also_hidden), needed))
        prefix, switch_user, note = venv_sandbox(hide)
        notes = [f"{UNISOLATED} ({why_not}): the rerun ran as a host process that could read "
                 "this host's world-readable files", note]
        if prefix or switch_user:
            check_readable_by_rerun_user(needed)
            notes += [check_hidden_from_rerun_user(p, covered=p.resolve() in hide)
                      for p in hidden]
            notes += [f"venv backend: {p} is readable by uid {RERUN_UID} (not hidden)"
                      for p in also_hidden if p.resolve() not in hide and blocked_for(p) is None]
    argv = list(prep.argv)
    if argv and argv[0] == "python":
        argv[0] = str(python)
    home = "/tmp" if bwrap else tempfile.gettempdir()  # bubblewrap: its own empty /tmp
    env = {
        **prep.env,
        "PATH": f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": f"{probe_lib}:{library}",
        "AUDITOR_PROBE_DIR": str(prep.workdir / "probe"),
        "AUDITOR_RUN_ID": prep.record.identity.id,
        "HOME": home,
        "VIRTUAL_ENV": str(env_dir),
        **({"TMPDIR": "/tmp"} if bwrap else {}),
    }
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*prefix, *argv],
            cwd=prep.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=RERUN_UID if switch_user else None,
            group=RERUN_UID if switch_user else None,
            extra_groups=[] if switch_user else None,
            process_group=0,
        )
    except OSError as exc:
        raise CouldNotVerify(f"the rerun could not start: {exc}",
                             hint="check the built venv (audit build --backend venv)") from exc
    out: list[str] = []
    err: list[str] = []
    from auditor.record.childio import pump

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, None, out, on_line), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, None, err, None), daemon=True),
    ]
    for t in threads:
        t.start()

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    try:
        code = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        kill_group()
        raise CouldNotVerify(
            f"timeout: the rerun ran past {limits.timeout_s} s",
            hint="raise the limit with --timeout",
        ) from None
    except BaseException:
        kill_group()
        raise
    finally:
        for t in threads:
            t.join(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    kill_group()  # anything it left running in its group goes before its files are read
    return Executed(
        code, "".join(out), "".join(err), time.monotonic() - started, prep.workdir / "probe",
        seen_as=str(prep.tree), notes=tuple(notes),
    )


def _in_bwrap(
    bwrap: str, prep: Prepared, env_dir: Path, limits: Limits, needed: list[Path],
    hidden: tuple[Path, ...], also_hidden: tuple[Path, ...],
) -> tuple[list[str], list[str]]:
    """The bubblewrap command line for this rerun, and its notes."""
    probe_lib, library = prep.workdir / "probe-lib", prep.workdir / "lib"
    read_only = [env_dir.resolve(), probe_lib, library]
    prefix = python_prefix(env_dir)
    if prefix is not None:
        read_only.append(prefix)
    writable = [prep.tree, prep.workdir / "probe"]
    mounts = [p.resolve() for p in (*read_only, *writable)]
    as_root = os.geteuid() == 0
    if as_root:
        check_readable_by_rerun_user([*needed, *read_only])
    notes = [f"{ISOLATED}: only its tree, venv, interpreter and /usr (read-only) are "
             f"visible; no network, own pid namespace; uid "
             f"{RERUN_UID if as_root else os.geteuid()}"]
    for path in hidden:  # the store: absent, unless it lies inside a mounted folder
        if mounted(path, mounts):
            notes.append(check_hidden_from_rerun_user(path))
        else:
            notes.append(f"venv backend: the store {path} is not mounted")
    notes += [f"venv backend: {p} is visible to the rerun (inside a mounted folder)"
              for p in also_hidden if mounted(p, mounts) and blocked_for(p) is None]
    etc = sandbox_files(prep.workdir / "sandbox-etc")
    return bwrap_argv(bwrap, read_only=read_only, writable=writable, etc=etc, cwd=prep.cwd,
                      gpus=limits.gpus), notes


def _private_copies(workdir: Path) -> tuple[Path, Path]:
    """The probe and the auditor package copied where the rerun user can read them (the
    installed package may sit in a folder it cannot enter, such as a 0700 clone)."""
    probe_lib = workdir / "probe-lib"
    lib = workdir / "lib"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if not probe_lib.exists():
        shutil.copytree(PROBE_PATH, probe_lib, ignore=ignore)
    if not (lib / "auditor").exists():
        shutil.copytree(PACKAGE_DIR, lib / "auditor", ignore=ignore)
    for dirpath, _dirs, files in os.walk(workdir / "lib"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)
    for dirpath, _dirs, files in os.walk(probe_lib):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)
    return probe_lib, lib


def check_readable_by_rerun_user(paths: list[Path]) -> None:
    """CouldNotVerify naming the first path the rerun user cannot read."""
    for path in paths:
        blocked = blocked_for(path)
        if blocked is not None:
            raise CouldNotVerify(
                f"the rerun user (uid {RERUN_UID}) cannot read {path}: {blocked} is closed to it",
                hint="make that folder traversable (chmod o+x) or set AUDITOR_VENV_ROOT / "
                "TMPDIR to a folder it can enter",
            )


def _hideable(hidden: tuple[Path, ...], needed: list[Path]) -> list[Path]:
    """The folders of ``hidden`` that can be covered without covering what the rerun
    needs (a venv or scratch folder inside the repository stays visible)."""
    out = []
    for path in hidden:
        real = path.resolve()
        if not real.is_dir() or real == Path("/"):
            continue
        if any(n.resolve() == real or n.resolve().is_relative_to(real) for n in needed):
            continue
        out.append(real)
    return out


def check_hidden_from_rerun_user(path: Path, *, covered: bool = False) -> str:
    """A note when ``path`` (the store) is closed to the rerun user (by its modes, or
    ``covered`` by a tmpfs in the rerun's mount namespace); CouldNotVerify when neither
    (a rerun that can read the store could copy the original's outputs)."""
    closed = blocked_for(path) is not None
    if covered:
        how = "hidden and not readable" if closed else "hidden"
        return f"venv backend: the store {path} is {how} (uid {RERUN_UID})"
    if not closed:
        raise CouldNotVerify(
            f"the store {path} is readable by the rerun user (uid {RERUN_UID}), who could "
            "copy the original run's outputs from it",
            hint=f"chmod 700 {path}, or verify with --backend docker",
        )
    return f"venv backend: the store {path} is not readable by uid {RERUN_UID} (checked)"
