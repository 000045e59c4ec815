"""Claims under real concurrency: several processes (separate interpreters, separate
connections) race to claim the same runs in one store, on SQLite and on PostgreSQL, and
every run is won by exactly one of them, in every round."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditor.store import open_store

WORKERS = 4
RUNS = 40

# One worker: waits for the start file, then claims every run, then "verifies" the ones it
# won (records a verdict), as `audit verify --all --batch` does between claim and finish.
WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from auditor.store import open_store
    from auditor.store.batches import ItemResult
    location, blobs, batch, name, start, runs, code = sys.argv[1:8]
    store = open_store(location, blobs=blobs or None)
    tables = store.batches()
    tables.create(batch, policy_sha256="p" * 64, shards=1)
    while not Path(start).exists():
        time.sleep(0.01)
    won = []
    for run in json.loads(runs):
        if tables.claim(batch, run, "p" * 64, "l" * 64, worker=name, lease_s=600).owned:
            won.append(run)
            verdict = "reproduced-bitwise" if code == "0" else "could-not-verify"
            tables.finish(batch, run, "p" * 64, "l" * 64,
                          ItemResult(verdict, int(code), certificate_sha256="c" * 64
                                     if code == "0" else None), worker=name)
    print(json.dumps(won))
""")


def _race(location: str, blobs: str | None, tmp_path: Path, batches: list[str],
          code: str = "0") -> list[list[str]]:
    runs = json.dumps([f"{i:026d}" for i in range(RUNS)])
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, location, blobs or "",
                               batches[i % len(batches)], f"worker-{i}", str(start), runs,
                               code],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(WORKERS)]
    start.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


@pytest.mark.parametrize("batches", [["one-batch"], ["batch-a", "batch-b"]])
def test_concurrent_workers_claim_each_run_exactly_once(
        store_location: tuple[str, str | None], tmp_path: Path, batches: list[str]) -> None:
    location, blobs = store_location
    open_store(location, blobs=blobs).close()  # migrated once, before the race
    won = _race(location, blobs, tmp_path, batches)
    flat = sorted(run for worker in won for run in worker)
    assert flat == [f"{i:026d}" for i in range(RUNS)], won  # every run once, none twice
    store = open_store(location, blobs=blobs)
    try:
        done = [item for b in batches for item in store.batches().get(b).items
                if item.state == "done"]
        assert len(done) == RUNS  # one verdict per run across the racing batches
        assert store.batches().needs_verification(
            [f"{i:026d}" for i in range(RUNS)], "p" * 64, {}) == [
            f"{i:026d}" for i in range(RUNS)]  # lock "none" differs from "l"*64
        # a second round (a resubmitted batch) verifies nothing again
        again = _race(location, blobs, tmp_path, ["batch-again"])
        assert again == [[]] * WORKERS
    finally:
        store.close()


def test_runs_that_could_not_be_verified_are_taken_over_once(
        store_location: tuple[str, str | None], tmp_path: Path) -> None:
    """Every worker of a first batch fails (could-not-verify): nothing is certified, and
    the workers of the next batch race to take each failed claim over, once each."""
    location, blobs = store_location
    open_store(location, blobs=blobs).close()
    first = _race(location, blobs, tmp_path, ["night-1"], code="3")
    assert sorted(r for w in first for r in w) == [f"{i:026d}" for i in range(RUNS)]
    second = _race(location, blobs, tmp_path, ["night-2"])
    assert sorted(r for w in second for r in w) == [f"{i:026d}" for i in range(RUNS)]
