"""Benchmarks of the foundation: `run.log_metric` cost and `audit list` over 10,000 runs.

    python bench/bench_record.py            # writes bench/results/record.json

log_metric: median ns per call over 200,000 calls, in batches timed with perf_counter_ns,
beside `mlflow.log_metric` to a local MLflow SQLite store in the same process (mlflow is
installed only for the benchmark: `pip install mlflow-skinny alembic`). audit list: a store of
10,000 runs is built once, then the real `audit list` command is timed (wall clock of the
whole process, median of 5), with the default limit and with `--limit 0 --json`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def bench_log_metric(n: int = 200_000) -> dict[str, float]:
    from auditor.core.schema import Command, Identity, RunRecord
    from auditor.record.tracker import Run
    from auditor.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(tmp)
        rec = RunRecord(
            identity=Identity(
                id="0" * 26, name="b", user="u", host="h", started_at=datetime.now(UTC)
            ),
            command=Command(argv=("x",), cwd="."),
        )
        store.put_record(rec)
        run = Run(rec, store=store)
        samples = []
        for block in range(n // 1000):
            start = time.perf_counter_ns()
            for i in range(1000):
                run.log_metric("loss", 0.5, step=block * 1000 + i)
            samples.append((time.perf_counter_ns() - start) / 1000)
        run.flush()
        stored = sum(1 for _ in store.iter_metrics(rec.identity.id))
    return {
        "median_ns": statistics.median(samples),
        "p90_ns": sorted(samples)[len(samples) * 9 // 10],
        "calls": n,
        "stored": stored,
    }


def bench_mlflow(n: int = 5_000) -> dict[str, float] | None:
    try:
        import mlflow
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        samples = []
        with mlflow.start_run():
            for step in range(n):
                start = time.perf_counter_ns()
                mlflow.log_metric("loss", 0.5, step=step)
                samples.append(time.perf_counter_ns() - start)
    return {
        "median_ns": statistics.median(samples),
        "calls": n,
        "version": mlflow.__version__,
        "store": "local sqlite store",
    }


def build_store(root: Path, runs: int = 10_000) -> None:
    from auditor.core.schema import Code, Command, Identity, MetricsSummary, RunRecord, new_run_id
    from auditor.store import open_store

    store = open_store(str(root))
    base = int(time.time() * 1000) - runs * 1000
    for i in range(runs):
        rec = RunRecord(
            identity=Identity(
                id=new_run_id(base + i * 1000),
                name=f"run{i}",
                user="u",
                host="h",
                started_at=datetime.now(UTC),
                status="finished",
            ),
            command=Command(argv=("python", "train.py"), cwd="."),
            code=Code(vcs="git", root="/r", commit=f"{i:040x}", tree_sha256="0" * 64),
            metrics=MetricsSummary(final={"loss": 1 / (i + 1), "accuracy": 0.9}),
        )
        store.put_record(rec)


def time_cmd(argv: list[str], env: dict[str, str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_list() -> dict[str, float]:
    audit = str(Path(sys.executable).parent / "audit")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_store(Path(tmp))
        built = time.perf_counter() - t0
        env = {**os.environ, "AUDITOR_STORE": tmp}
        return {
            "runs": 10_000,
            "build_store_s": built,
            "audit_version_s": time_cmd([audit, "--version"], env),
            "audit_list_default_s": time_cmd([audit, "list"], env),
            "audit_list_all_json_s": time_cmd([audit, "list", "--limit", "0", "--json"], env),
        }


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    ours = bench_log_metric()
    theirs = bench_mlflow()
    listing = bench_list()
    result = {"log_metric": ours, "mlflow_log_metric": theirs, "list": listing}
    if theirs:
        result["mlflow_over_auditor"] = theirs["median_ns"] / ours["median_ns"]
    (RESULTS / "record.json").write_text(json.dumps(result, indent=2))
    print(f"log_metric median {ours['median_ns']:.0f} ns/call (target <= 5000)")
    if theirs:
        print(
            f"mlflow.log_metric median {theirs['median_ns'] / 1000:.0f} us/call "
            f"({result['mlflow_over_auditor']:.0f}x slower)"
        )
    print(
        f"audit list over 10,000 runs: {listing['audit_list_default_s']:.3f} s default, "
        f"{listing['audit_list_all_json_s']:.3f} s --limit 0 --json "
        f"(process start alone {listing['audit_version_s']:.3f} s; target < 0.5 s)"
    )


if __name__ == "__main__":
    main()
