"""Compiling lockfiles: ``pip-compile --generate-hashes`` as a subprocess of this
interpreter (the lockfile format itself is ``auditor.core.lockfile``).

- ``compile_lock`` locks a requirements.in or pyproject.toml into a hashed lock.
- ``lock_source`` finds what ``audit lock`` locks without ``--from`` (requirements.in,
  else pyproject.toml); ``recorded_lock`` is ``audit lock --check RUN``: the run's stored
  lock, parsed again, with the drift the recorder saw.
- ``lock_from_packages`` pins what the training interpreter had installed, except ``pip``
  itself (the environment's installer, which every virtualenv brings in its own version);
  setuptools and wheel are kept because code imports them at run time.

Every failure is a ``LockfileError`` (exit 2) naming the source and pip-compile's last lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

from auditor.core.errors import InputError, LockfileError
from auditor.core.lockfile import (
    NOT_LOCKED_FROM_ENV,
    Lock,
    parse_recorded_lock,
    parse_requirements_lock,
)
from auditor.core.safefile import check_target, write_target
from auditor.core.schema import LockRef, RunRecord
from auditor.store.base import RunStore

COMPILE_TIMEOUT_S = 900


def compile_lock(source: Path, output: Path, *, find_links: Sequence[Path] = ()) -> Lock:
    """Run pip-compile on ``source`` (requirements.in or pyproject.toml) into ``output``.

    pip-compile writes into a private folder beside ``output`` (seeded with the old lock,
    so its pins are kept); the result reaches ``output`` through ``core.safefile``
    (a link, FIFO, device or folder there is refused before pip-compile starts)."""
    output = output.absolute()
    check_target(output, stdout=False)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=".audit-lock-"))
    try:
        if output.is_file() and not output.is_symlink():
            shutil.copyfile(output, work / output.name)  # pip-compile keeps existing pins
        argv = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
                "--allow-unsafe", "--strip-extras", "--no-emit-index-url",
                "--no-emit-find-links", f"--output-file={work.name}/{output.name}",
                *(f"--find-links={p}" for p in find_links),
                os.path.relpath(source.resolve(), output.parent)]
        _run_compile(argv, output.parent, source)
        # the header names the command: the folder it wrote into is ours, not the user's
        text = (work / output.name).read_text().replace(f"{work.name}/", "", 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_target(output, text.encode(), stdout=False)
    return parse_requirements_lock(text, name=output.name)


def _run_compile(argv: Sequence[str], cwd: Path, source: Path) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LockfileError(f"pip-compile of {source} took over {COMPILE_TIMEOUT_S} s",
                            hint="check the package index is reachable") from exc
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-6:]
        raise LockfileError(f"pip-compile could not lock {source.name}",
                            hint=" | ".join(tail) or f"exit {done.returncode}")


def lock_from_packages(packages: Mapping[str, str], *, find_links: Sequence[Path] = ()) -> Lock:
    """Pin an installed set (``{name: version}``, minus pip) and compile it with hashes."""
    pins = sorted(f"{canonicalize_name(n)}=={v}" for n, v in packages.items()
                  if canonicalize_name(n) not in NOT_LOCKED_FROM_ENV)
    with tempfile.TemporaryDirectory(prefix="auditor-lock-") as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("".join(f"{pin}\n" for pin in pins))
        return compile_lock(source, Path(tmp) / "requirements.lock", find_links=find_links)


def lock_source(folder: Path = Path()) -> Path:
    """What ``audit lock`` locks without ``--from``: requirements.in, else pyproject.toml
    (in ``folder``, by default the current one)."""
    for name in ("requirements.in", "pyproject.toml"):
        if (folder / name).exists():
            return folder / name
    raise InputError("nothing to lock: no requirements.in or pyproject.toml here",
                     hint="pass --from FILE")


def recorded_lock(store: RunStore, record: RunRecord) -> LockRef:
    """A run's lock reference, once its stored lockfile parsed again (``LockfileError``
    when it does not; ``InputError`` when the run has none)."""
    ref = record.environment.python.lock if record.environment.python else None
    if ref is None:
        raise InputError(f"run {record.identity.id} has no lockfile")
    parse_recorded_lock(store.blobs.read_bytes(ref.sha256, ref.artifact), ref.artifact, ref.kind)
    return ref
