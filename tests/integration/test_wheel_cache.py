"""The verified wheel cache (issue 17): real ``pip download`` of real wheels from the
package index (through the proxy's CA bundle), real files, real file locks and a real
tmpfs for the full disk. No docker: the builds that install from the cache are in
``test_build_docker.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from auditor.core.errors import BuildFailed
from auditor.core.lockfile import Lock, parse_requirements_lock
from auditor.core.progress import Counter, Reporter
from auditor.env.wheelcache import Fetcher, WheelCache, requirement_lines
from auditor.store.blobs import sha256_file

ROOT = Path(__file__).resolve().parents[2]
TRAIN_LOCK = ROOT / "fixtures" / "train" / "requirements.lock"
WRONG_HASH = ROOT / "fixtures" / "locks" / "pip" / "wrong-hash.requirements.lock"


def lock_of(*names: str) -> Lock:
    """A hashed lock of some of the training fixture's packages (real pins, real hashes)."""
    full = parse_requirements_lock(TRAIN_LOCK.read_text())
    chosen = [p for p in full.packages if p.name in names]
    assert len(chosen) == len(names)
    return parse_requirements_lock(requirement_lines(chosen))


def fetcher() -> Fetcher:
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    return Fetcher(ca_bundle=ca)


class Recorder(Reporter):
    """Keeps the lines and the counters a cache reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counters: list[tuple[str, int]] = []
        super().__init__(self.lines.append)

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        self.counters.append((label, total))
        return Counter()

    def fetched(self) -> int:
        return sum(total for label, total in self.counters if label == "fetching")


def assert_consistent(cache: WheelCache) -> None:
    """Every entry holds one wheel hashing to its name; no download is left behind."""
    for shard in cache.objects.iterdir() if cache.objects.exists() else []:
        for entry in shard.iterdir():
            files = list(entry.iterdir())
            assert len(files) == 1 and files[0].name.endswith(".whl"), files
            assert sha256_file(files[0]) == entry.name
    leftovers = [p.name for p in cache.tmp.iterdir()] if cache.tmp.exists() else []
    assert not [n for n in leftovers if n.startswith(("download-", "entry-"))], leftovers


def entries(cache: WheelCache) -> int:
    return sum(1 for shard in cache.objects.iterdir() for _ in shard.iterdir())


def test_a_lock_one_package_apart_fetches_only_that_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = WheelCache(tmp_path / "wheels")
    first, second = Recorder(), Recorder()
    wheels = cache.ensure(lock_of("filelock", "typing-extensions"), fetcher(), first)
    assert first.fetched() == 2 and len(wheels) == 2
    wheels = cache.ensure(lock_of("filelock", "typing-extensions", "mpmath"), fetcher(), second)
    assert second.fetched() == 1 and entries(cache) == 3
    assert {w.package.name for w in wheels} == {"filelock", "typing-extensions", "mpmath"}
    # served from the cache alone: with no index and no find-links pip could fetch nothing
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    third = Recorder()
    wheels = cache.ensure(lock_of("typing-extensions", "mpmath"), fetcher(), third)
    assert third.fetched() == 0 and len(wheels) == 2 and third.lines == []
    assert_consistent(cache)


def test_a_corrupt_entry_is_detected_refetched_and_reported_once(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels")
    lock = lock_of("filelock", "typing-extensions")
    [wheel, _] = cache.ensure(lock, fetcher(), Recorder())
    wheel.path.chmod(0o644)
    data = bytearray(wheel.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    wheel.path.write_bytes(bytes(data))
    seen = Recorder()
    again = cache.ensure(lock, fetcher(), seen)
    corrupt = [line for line in seen.lines if "corrupt" in line]
    assert len(corrupt) == 1 and wheel.path.name in corrupt[0], seen.lines
    assert seen.fetched() == 1 and sha256_file(again[0].path) == again[0].sha256
    later = Recorder()
    cache.ensure(lock, fetcher(), later)
    assert later.lines == [] and later.fetched() == 0
    assert_consistent(cache)


CONCURRENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from tests.integration.test_wheel_cache import Recorder, WheelCache, fetcher, lock_of
    while not os.path.exists({go!r}):
        time.sleep(0.01)
    seen = Recorder()
    WheelCache(Path({root!r})).ensure(lock_of("filelock", "mpmath", "networkx"), fetcher(), seen)
    print(seen.fetched())
""")


def test_two_builds_filling_the_cache_at_once_fetch_each_wheel_once(tmp_path: Path) -> None:
    root, go = tmp_path / "wheels", tmp_path / "go"
    script = CONCURRENT.format(go=str(go), root=str(root))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    time.sleep(1.0)  # both started and waiting
    go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    fetched = sorted(int(out.split()[-1]) for out, _ in outs)
    assert fetched == [0, 3]  # one build fetched all three, the other waited and reused them
    cache = WheelCache(root)
    assert entries(cache) == 3
    assert_consistent(cache)


def test_a_full_disk_fails_in_one_line_and_leaves_the_cache_consistent(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    assert mounted.returncode == 0, f"needs root to mount a tmpfs: {mounted.stderr}"
    try:
        cache = WheelCache(small / "wheels")
        cache.ensure(lock_of("filelock"), fetcher(), Recorder())  # 0.24 MB fits
        with pytest.raises(BuildFailed) as info:
            cache.ensure(lock_of("filelock", "networkx"), fetcher(), Recorder())  # 2 MB
        message = str(info.value)
        assert info.value.exit_code == 3 and "\n" not in message
        assert "no space left on device" in message and str(cache.root) in message, message
        assert entries(cache) == 1  # the entry it had, whole
        assert_consistent(cache)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_lock_whose_hash_the_index_does_not_match_fails_naming_the_package(
        tmp_path: Path) -> None:
    lock = parse_requirements_lock(WRONG_HASH.read_text(), name=WRONG_HASH.name)
    cache = WheelCache(tmp_path / "wheels")
    with pytest.raises(BuildFailed) as info:
        cache.ensure(lock, fetcher(), Recorder())
    assert info.value.exit_code == 3
    assert "hash mismatch for six==1.17.0" in str(info.value), str(info.value)
    assert not cache.objects.exists() or entries(cache) == 0
    assert_consistent(cache)


def test_least_recently_used_wheels_are_evicted_past_the_bound(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "wheels")
    old = cache.ensure(lock_of("filelock", "typing-extensions"), fetcher(), Recorder())
    past = time.time() - 3600
    for wheel in old:
        os.utime(wheel.path.parent, (past, past))
    kept = cache.ensure(lock_of("filelock"), fetcher(), Recorder())  # filelock used now
    bounded = WheelCache(cache.root, max_bytes=kept[0].size + 540_000)
    new = bounded.ensure(lock_of("mpmath"), fetcher(), Recorder())  # 0.54 MB
    names = {p.name.split("-")[0] for s in cache.objects.iterdir() for e in s.iterdir()
             for p in e.iterdir()}
    assert names == {"filelock", "mpmath"}, names  # typing-extensions: least recently used
    assert bounded.size() <= bounded.max_bytes and new[0].path.exists()
    assert_consistent(cache)
