"""The verified wheel cache every image build shares (a build input, never an image layer).

Layout of the cache folder (``--wheel-cache``, default ``$AUDITOR_CACHE/wheels`` or
``~/.cache/auditor/wheels``)::

    objects/<sha[:2]>/<sha256>/<wheel file name>   one verified wheel, read-only
    tmp/                                           downloads and per-build serve folders
    fetch.lock                                     held while fetching or evicting

Contract:

- An entry is named by the sha256 of its wheel: it is looked up by the lock's
  ``--hash`` values, so a wheel is fetched once per (name, version, sha256). Its file
  name must name the locked package and version.
- ``ensure(lock)`` hashes every wheel the lock needs before use; a corrupt entry (its
  bytes no longer hash to its name) is removed, reported once through ``say`` and fetched
  again. What is missing is fetched with ``pip download --no-deps --require-hashes`` (the
  CA bundle and the wheelhouse are inputs of this host-side fetch only) under an exclusive
  file lock, so two builds filling the cache at once fetch each wheel once; each wheel is
  hashed again and moved into ``objects/`` by an atomic rename of its folder.
- Past ``max_bytes`` the least recently used entries a build does not need are removed
  (an entry's folder mtime is its last use).
- A full disk fails with one line (``BuildFailed``, exit 3); the download folder is
  removed, so ``objects/`` holds only complete, verified wheels. A lock whose hashes do
  not match what the index serves fails naming the package.
- ``serve_folder(wheels)`` hard-links the wheels of one build into a private folder of
  ``tmp/`` (eviction cannot pull them from under a running build); the docker build reads
  them over HTTP from the host (``auditor.env.wheelserve``), never from its context.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from auditor.core.errors import BuildFailed, InputError
from auditor.core.lockfile import Lock, LockedPackage
from auditor.core.progress import Counter, Say, counter, stage
from auditor.env.spec import ImageBuildFailed, install_failure
from auditor.store.blobs import sha256_file

DEFAULT_MAX_BYTES = 20 << 30
FETCH_TIMEOUT_S = 3600
STALE_TMP_S = 24 * 3600
_SAVED = re.compile(r"^(?:Saved|File was already downloaded) (.+\.whl)\s*$")
_COLLECTING = re.compile(r"^(?:Collecting|Processing) (\S+)")


def default_root() -> Path:
    """``$AUDITOR_CACHE/wheels``, else ``$XDG_CACHE_HOME/auditor/wheels`` or
    ``~/.cache/auditor/wheels``."""
    if os.environ.get("AUDITOR_CACHE"):
        base = Path(os.environ["AUDITOR_CACHE"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "auditor"
    return base.expanduser() / "wheels"


def max_bytes_from_env() -> int:
    """``AUDITOR_WHEEL_CACHE_MAX_GB`` (a number of GiB), else 20 GiB."""
    value = os.environ.get("AUDITOR_WHEEL_CACHE_MAX_GB")
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(value) * (1 << 30))
    except ValueError as exc:
        raise InputError(f"AUDITOR_WHEEL_CACHE_MAX_GB={value!r} is not a number") from exc


@dataclass(frozen=True)
class Wheel:
    """One verified cached wheel of a locked package."""

    package: LockedPackage
    sha256: str
    path: Path

    @property
    def size(self) -> int:
        """Its size in bytes."""
        return self.path.stat().st_size


@dataclass(frozen=True)
class Fetcher:
    """Where missing wheels come from: pip's configured index, ``find_links`` folders
    (e.g. torch's CPU wheel), trusted with ``ca_bundle``; wheels for ``python_version``."""

    find_links: tuple[Path, ...] = ()
    ca_bundle: Path | None = None
    python_version: str | None = None


class WheelCache:
    """A content-addressed folder of verified wheels (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root.expanduser()
        self.max_bytes = max_bytes
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"

    # ---- lookup and verification -----------------------------------------------------

    def entry(self, sha256: str) -> Path:
        """The folder of the wheel whose sha256 is ``sha256``."""
        return self.objects / sha256[:2] / sha256

    def lookup(self, package: LockedPackage, say: Say) -> Wheel | None:
        """The verified cached wheel of ``package``, or None. A corrupt entry is removed
        (and reported) so the caller fetches it again."""
        for sha in _sha256s(package):
            folder = self.entry(sha)
            files = [p for p in _listdir(folder) if p.name.endswith(".whl")]
            if not files:
                continue
            wheel = files[0]
            if not _names(wheel.name, package) or sha256_file(wheel) != sha:
                say(f"wheel cache: {wheel.name} is corrupt (its sha256 is no longer "
                    f"{sha[:12]}…); removed, fetching it again")
                self._remove_entry(folder)
                continue
            _touch(folder)
            return Wheel(package, sha, wheel)
        return None

    def ensure(self, lock: Lock, fetcher: Fetcher, say: Say) -> list[Wheel]:
        """Every wheel ``lock`` needs, verified, fetching what is missing (see module)."""
        packages = list(lock.packages)
        try:
            found = {p.name: w for p in packages if (w := self.lookup(p, say)) is not None}
            missing = [p for p in packages if p.name not in found]
            if missing:
                with self._locked():
                    found |= self._fetch_missing(missing, fetcher, say)
                    self._evict(keep={w.sha256 for w in found.values()})
        except OSError as exc:
            raise self._disk_error(exc, len(packages)) from exc
        return [found[p.name] for p in packages if p.name in found]

    def _fetch_missing(self, missing: list[LockedPackage], fetcher: Fetcher, say: Say
                       ) -> dict[str, Wheel]:
        """Fetch what another build did not fetch meanwhile (checked under the lock)."""
        got = {p.name: w for p in missing if (w := self.lookup(p, say)) is not None}
        todo = [p for p in missing if p.name not in got]
        if not todo:
            return got
        self._clean_stale_tmp()
        with stage(say, f"fetching {len(todo)} package(s) into the wheel cache"):
            download = Path(tempfile.mkdtemp(prefix="download-", dir=self._tmp()))
            try:
                files = _pip_download(todo, download, fetcher, say, self.root)
                got |= {w.package.name: w for w in self._admit(todo, files)}
            finally:
                shutil.rmtree(download, ignore_errors=True)
        return got

    def _admit(self, todo: list[LockedPackage], files: Sequence[Path]) -> list[Wheel]:
        """Hash each downloaded wheel again and move it into ``objects/`` atomically."""
        by_name = {p.name: p for p in todo}
        admitted = []
        for path in files:
            package = by_name.get(_wheel_name(path.name))
            if package is None:
                continue
            sha = sha256_file(path)
            if sha not in _sha256s(package):
                raise BuildFailed(
                    f"fetching {package.name}=={package.version} failed: {path.name} does "
                    f"not match the lock's --hash (sha256 {sha[:12]}…)",
                    hint="re-lock with `audit lock` if the lock is wrong")
            admitted.append(Wheel(package, sha, self._insert(path, sha)))
        return admitted

    def _insert(self, path: Path, sha: str) -> Path:
        staged = Path(tempfile.mkdtemp(prefix="entry-", dir=self._tmp()))
        target = staged / path.name
        shutil.copyfile(path, target)  # the download folder is removed after
        target.chmod(0o444)
        final = self.entry(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(final)
        except OSError as exc:  # another build admitted it first: keep theirs
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(staged, ignore_errors=True)
        return final / path.name

    # ---- serving, eviction, locks -----------------------------------------------------

    @contextlib.contextmanager
    def serve_folder(self, wheels: Sequence[Wheel]) -> Iterator[Path]:
        """A private folder holding hard links to ``wheels`` for one build."""
        folder = Path(tempfile.mkdtemp(prefix="serve-", dir=self._tmp()))
        try:
            for wheel in wheels:
                link_or_copy(wheel.path, folder / wheel.path.name)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def size(self) -> int:
        """Bytes of all cached wheels."""
        return sum(p.stat().st_size for p in self._entries_files())

    def _evict(self, keep: set[str]) -> None:
        entries = sorted(((folder.stat().st_mtime, folder) for folder in self._entry_dirs()
                          if folder.name not in keep), key=lambda item: item[0])
        total = self.size()
        for _, folder in entries:
            if total <= self.max_bytes:
                return
            total -= sum(p.stat().st_size for p in _listdir(folder))
            self._remove_entry(folder)

    def _remove_entry(self, folder: Path) -> None:
        """Rename away first, so a half-removed entry is never looked up."""
        doomed = Path(tempfile.mkdtemp(prefix="doomed-", dir=self._tmp()))
        with contextlib.suppress(FileNotFoundError):  # another build removed it
            folder.rename(doomed / "entry")
        shutil.rmtree(doomed, ignore_errors=True)

    def _entry_dirs(self) -> list[Path]:
        return [e for shard in _listdir(self.objects) for e in _listdir(shard) if e.is_dir()]

    def _entries_files(self) -> list[Path]:
        return [f for e in self._entry_dirs() for f in _listdir(e)]

    def _tmp(self) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def _clean_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for item in _listdir(self.tmp):
            if item.stat().st_mtime < cutoff:
                shutil.rmtree(item, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "fetch.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _disk_error(self, exc: OSError, count: int) -> BuildFailed:
        if exc.errno == errno.ENOSPC:
            return BuildFailed(f"wheel cache {self.root} is full: no space left on device "
                               f"while caching the lock's {count} packages (nothing partial "
                               "was kept)", hint="free space there, or pass --wheel-cache DIR")
        return BuildFailed(f"wheel cache {self.root}: {exc.strerror or exc}",
                           hint="pass --wheel-cache DIR (a writable folder)")


# ---- pip download --------------------------------------------------------------------


def _pip_download(todo: list[LockedPackage], dest: Path, fetcher: Fetcher, say: Say,
                  root: Path) -> list[Path]:
    """``pip download`` the ``todo`` packages into ``dest``; the wheel files saved."""
    requirements = dest / "requirements.lock"
    requirements.write_text(requirement_lines(todo))
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--only-binary", ":all:", "--no-input", "--progress-bar", "off",
            "--disable-pip-version-check", "--dest", str(dest), "-r", str(requirements),
            *(["--cert", str(fetcher.ca_bundle)] if fetcher.ca_bundle else []),
            *(f"--find-links={p}" for p in fetcher.find_links),
            *_target_flags(fetcher.python_version)]
    lines = _run_pip(argv, todo, say)
    saved = [dest / Path(m.group(1)).name for line in lines if (m := _SAVED.match(line))]
    if len(lines) and lines[-1] == "\0failed":
        raise fetch_failure(lines[:-1], root)
    return [p for p in saved if p.exists()]


def _run_pip(argv: list[str], todo: list[LockedPackage], say: Say) -> list[str]:
    """Run pip, drawing one counter step per package saved; its output lines (the last
    one ``"\\0failed"`` when pip failed)."""
    lines: list[str] = []
    shown = counter(say, "fetching", len(todo))
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                lines.append(line)
                _advance(shown, line)
            code = proc.wait(timeout=FETCH_TIMEOUT_S)
    finally:
        shown.close()
    return [*lines, "\0failed"] if code else lines


def _advance(shown: Counter, line: str) -> None:
    saved = _SAVED.match(line)
    if saved:
        path = Path(saved.group(1))
        shown.advance(current=path.name, nbytes=path.stat().st_size if path.exists() else 0)


def fetch_failure(lines: list[str], root: Path) -> ImageBuildFailed:
    """The one-line cause of a failed ``pip download`` (its whole output in ``log``)."""
    text = "\n".join(lines)
    if "No space left on device" in text:
        return ImageBuildFailed(f"wheel cache {root} is full: no space left on device while "
                                "fetching (nothing partial was kept)", log_text=text,
                                hint="free space there, or pass --wheel-cache DIR")
    failed = install_failure(lines, "fetching the lock's wheels")
    if "DO NOT MATCH THE HASHES" in text:
        failed.message = failed.message.replace("the downloaded file", "the index's file")
    return failed


def _target_flags(python_version: str | None) -> list[str]:
    """pip's target flags when the image's Python is not this interpreter's major.minor."""
    if not python_version:
        return []
    try:
        target = Version(python_version)
    except InvalidVersion:
        return []
    if (target.major, target.minor) == sys.version_info[:2]:
        return []
    from packaging.tags import platform_tags

    nodot = f"{target.major}{target.minor}"
    return ["--python-version", f"{target.major}.{target.minor}", "--implementation", "cp",
            "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none",
            *(flag for tag in platform_tags() for flag in ("--platform", tag))]


def requirement_lines(packages: Sequence[LockedPackage]) -> str:
    """A hashed requirements file of ``packages`` (name==version, markers, hashes)."""
    out = []
    for p in packages:
        marker = f" ; {p.markers}" if p.markers else ""
        hashes = "".join(f" \\\n    --hash={h}" for h in p.hashes)
        out.append(f"{p.name}=={p.version}{marker}{hashes}\n")
    return "".join(out)


# ---- small helpers -------------------------------------------------------------------


def _sha256s(package: LockedPackage) -> list[str]:
    return [h.split(":", 1)[1] for h in package.hashes if h.startswith("sha256:")]


def _wheel_name(filename: str) -> str:
    try:
        return str(canonicalize_name(parse_wheel_filename(filename)[0]))
    except InvalidWheelFilename:
        return ""


def _names(filename: str, package: LockedPackage) -> bool:
    """The wheel file names the locked package and version."""
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return canonicalize_name(name) == package.name and version == Version(package.version)


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(folder)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source``, or a copy where a link cannot be made."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
