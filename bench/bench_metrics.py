"""Benchmark of the metrics comparer on huge series (T29: 10^7 points x 4 keys).

Each case runs in a fresh child process so its peak RSS (``VmHWM``) is its own:

* ``source``: only draining the in-memory generators (the floor any comparer pays);
* ``one-key`` / ``four-keys``: ``metrics.compare`` of two runs with 10^7 points per key,
  in step order (the streamed path), with a within-tolerance wobble on every 1000th point
  and one divergence near the end, so every block is compared in full;
* ``out-of-order``: one key logged in descending step order, which takes the sorting
  path (whole series in memory: 16 bytes/point/side plus the sort).

Writes ``bench/results/metrics.json``. ``--points N`` shrinks the series for a quick run.
Usage: ``python bench/bench_metrics.py [--points 10000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "metrics.json"
CASES = {"source": 1, "one-key": 1, "four-keys": 4, "out-of-order": 1}


def rss_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def series(n: int, *, rerun: bool, descending: bool = False) -> Iterator[tuple[int, float]]:
    """A decaying loss curve; the rerun wobbles inside tolerance and diverges near the end."""
    for i in range(n):
        step = n - 1 - i if descending else i
        value = 1.0 / (step + 1)
        if rerun and step % 1000 == 0:
            value *= 1 + 1e-9
        if rerun and step == n - 10:
            value += 1.0
        yield step, value


def child(case: str, n: int) -> dict[str, object]:
    """Run one case here and report its figures."""
    from auditor.compare import Evidence, metrics
    from auditor.core.policy import ComparePolicy
    from auditor.core.schema import Command, Identity, RunRecord

    keys = tuple(f"metric{k}" for k in range(CASES[case]))
    descending = case == "out-of-order"
    record = RunRecord(identity=Identity(id="01hzzzzzzzzzzzzzzzzzzzzzzz", name="b", user="u",
                                         host="h", started_at=datetime.now(UTC)),
                       command=Command(argv=("x",), cwd="."))
    def source(rerun: bool) -> Callable[[str], Iterator[tuple[int, float]]]:
        return lambda _key: series(n, rerun=rerun, descending=descending)

    sides = [Evidence(record=record, files={}, metric_keys=keys, series=source(rerun))
             for rerun in (False, True)]
    before = rss_mib("VmRSS")
    start = time.perf_counter()
    if case == "source":
        for side in sides:
            for key in keys:
                for _ in side.series(key):
                    pass
        diffs = []
    else:
        diffs = metrics.compare(sides[0], sides[1], ComparePolicy())
    seconds = time.perf_counter() - start
    return {"case": case, "keys": len(keys), "points_per_key": n, "seconds": round(seconds, 3),
            "point_pairs_per_s": round(n * len(keys) / seconds),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(rss_mib("VmHWM"), 1),
            "differences": [d.model_dump(include={"where", "within_tolerance", "stats"})
                            for d in diffs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000_000)
    parser.add_argument("--case", choices=sorted(CASES))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(child(args.case, args.points)))
        return 0
    results = [json.loads(subprocess.run(
        [sys.executable, __file__, "--case", case, "--points", str(args.points)],
        check=True, capture_output=True, text=True).stdout) for case in CASES]
    for r in results:
        print(f"{r['case']:>13}: {r['seconds']:7.2f} s  {r['point_pairs_per_s'] / 1e6:5.2f} M "
              f"pairs/s  peak RSS {r['peak_rss_mib']:.0f} MiB (before {r['rss_before_mib']:.0f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cpus": os.cpu_count(),
                                               "python": platform.python_version()},
                                   "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
