"""Where one run's time goes when N processes record at once into PostgreSQL + S3.

The workload is bench_team_scale.py's (``record_one``: running row, two 4 KiB objects,
20 metric points, final row), timed per phase in every writer: ``open`` (connect, schema
check, artifact location, the record schema's first build; every writer at once, before
the runs start together),
``running`` (first put_record), ``blobs`` (both objects),
``metrics``, ``finish`` (final put_record), and the CPU seconds each run cost its writer
process. Writers are run at each count of ``--writers`` (default 2,4,8,16) with ``--runs``
runs each (default 10). p50/p99 per run and the median of each phase go to
bench/results/team_phases[-LABEL].json; moto's server runs in its own process, as in the
scale bench, and its CPU seconds are reported too (on a 2-core machine it competes).

Usage: ``python bench/bench_team_phases.py [--writers 2,4,8,16] [--runs 10] [--label x]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_team_scale import (
    RESULTS,
    make_record,
    moto_server,
    new_bucket,
    pg_schema,
    warm_up,
)

PHASES = ("running", "blobs", "metrics", "finish")


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _one(store: Any, rng: random.Random, times: dict[str, list[float]]) -> None:
    """``bench_team_scale.record_one`` with a clock around each phase."""
    from auditor.core.schema import ArtifactRef, new_run_id
    from auditor.store import MetricPoint
    from auditor.store.base import series_digest

    t = time.perf_counter()
    marks = [t]
    run_id = new_run_id()
    store.put_record(make_record(run_id, status="running"), pid=os.getpid())
    marks.append(time.perf_counter())
    arts = []
    for k in range(2):
        sha, n = store.blobs.put_bytes(rng.randbytes(4096 + k))
        arts.append(ArtifactRef(name=f"outputs/w{k}.bin", sha256=sha, size=n, kind="output"))
    marks.append(time.perf_counter())
    series = [MetricPoint("loss", s, 1.0 / (s + 1), float(s)) for s in range(20)]
    store.add_metrics(run_id, series)
    marks.append(time.perf_counter())
    store.put_record(make_record(run_id, tuple(arts), points=20,
                                 series=series_digest(series)), pid=os.getpid())
    marks.append(time.perf_counter())
    for name, a, b in zip(PHASES, marks, marks[1:], strict=False):
        times[name].append(b - a)
    times["run"].append(marks[-1] - marks[0])


def _writer(loc: tuple[str, str], runs: int, start: Any, queue: Any) -> None:
    from auditor.store import open_store

    times: dict[str, list[float]] = {k: [] for k in ("open", "run", "cpu", *PHASES)}
    t0 = time.perf_counter()
    store = open_store(loc[0], blobs=loc[1])  # all writers at once, before the runs
    warm_up()
    times["open"].append(time.perf_counter() - t0)
    start.wait()  # a barrier: the runs start together once every writer is open
    rng = random.Random(os.getpid())
    for _ in range(runs):
        c0 = _cpu()
        _one(store, rng, times)
        times["cpu"].append(_cpu() - c0)
    store.close()
    queue.put(times)


def measure(loc: tuple[str, str], procs: int, runs: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, queue = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(loc, runs, start, queue)) for _ in range(procs)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    results = [queue.get(timeout=1800) for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    merged = {k: sorted(x for r in results for x in r[k]) for k in results[0]}
    runs_ = merged["run"]
    return {
        "procs": procs, "runs_each": runs, "wall_s": round(wall, 2),
        "p50_s": round(statistics.median(runs_), 4),
        "p99_s": round(runs_[min(len(runs_) - 1, int(len(runs_) * 0.99))], 4),
        "runs_per_s": round(len(runs_) / wall, 1),
        "median_s": {k: round(statistics.median(v), 4) for k, v in merged.items()
                     if k != "run"},
        "p99_s_phase": {k: round(v[min(len(v) - 1, int(len(v) * 0.99))], 4)
                        for k, v in merged.items() if k not in ("run", "open")},
        "max_s_phase": {k: round(v[-1], 4) for k, v in merged.items() if k != "run"},
        "cpu_s_per_run_writer": round(sum(merged["cpu"]) / len(runs_), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", default="2,4,8,16")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    url = os.environ.get("AUDITOR_BENCH_POSTGRES") or os.environ.get("AUDITOR_TEST_POSTGRES")
    if not url:
        print("team phases: skipped (set AUDITOR_BENCH_POSTGRES)")
        return
    import psutil

    out: dict[str, Any] = {"cores": os.cpu_count()}
    with moto_server() as aws, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(aws)
        os.environ["AUDITOR_CACHE"] = str(Path(tmp) / "cache")
        moto = [p for p in psutil.Process().children() if "moto" in " ".join(p.cmdline())]
        for procs in (int(n) for n in args.writers.split(",")):
            with pg_schema(url) as store_url:
                before = sum(sum(p.cpu_times()[:2]) for p in moto)
                found = measure((store_url, new_bucket()), procs, args.runs)
                spent = sum(sum(p.cpu_times()[:2]) for p in moto) - before
                found["cpu_s_per_run_moto"] = round(spent / (procs * args.runs), 4)
            found["load_average"] = round(os.getloadavg()[0], 2)
            out[f"writers_{procs}"] = found
            print(json.dumps(found))
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    (RESULTS / f"team_phases{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
