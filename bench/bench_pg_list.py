"""`audit list` over 10,000 runs in PostgreSQL, the whole process as the user runs it
(`audit --store postgresql+psycopg://… list`), beside `python -c pass` in the same run.

Issue 11 sets it under 0.5 s. A store of 10,000 runs (one signed in ten, one imported
run with what it lacks to be verifiable) is built once in a fresh schema, then each
command runs `--repeat` times (default 7) and the median wall clock is kept. The
`--where` case goes through the full store (SQLAlchemy) and is shown for comparison.
Results: bench/results/pg_list[-LABEL].json.

PostgreSQL from ``AUDITOR_BENCH_POSTGRES`` or ``AUDITOR_TEST_POSTGRES`` (skipped, and
said so, when neither is set). ``--keep`` leaves the schema in place and prints its URL
(no password); ``--schema NAME`` reuses one kept before instead of building it again.

Usage: ``python bench/bench_pg_list.py [--repeat 7] [--label after] [--keep|--schema S]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))
TARGET_S = 0.5

from bench.bench_startup import median_wall  # noqa: E402 - after the sys.path line


def build(store_url: str, blobs: str, runs: int) -> float:
    """``runs`` records written through the store (as `audit record` writes them)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from auditor.core.schema import Code, Command, Identity, MetricsSummary, RunRecord, new_run_id
    from auditor.store import open_store, signatures

    t0 = time.perf_counter()
    store = open_store(store_url, blobs=blobs)
    signer = signatures.signer(Ed25519PrivateKey.generate())
    base = int(time.time() * 1000) - runs * 1000
    for i in range(runs):
        rec = RunRecord(
            identity=Identity(id=new_run_id(base + i * 1000), name=f"run{i}", user="u",
                              host="h", started_at=datetime.now(UTC), status="finished",
                              tags=("bench",)),
            command=Command(argv=("python", "train.py"), cwd="."),
            code=Code(vcs="git", root="/r", commit=f"{i:040x}", tree_sha256="0" * 64),
            metrics=MetricsSummary(final={"loss": 1 / (i + 1), "accuracy": 0.9}),
            params={"lr": 0.001 * (i % 10), "batch": 32},
            not_captured={"verifiable": "imported from MLflow: no code or environment"}
            if i == runs - 1 else {},
        )
        store.on_record = signer if i % 10 == 0 else None
        store.put_record(rec)
    store.close()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--keep", action="store_true", help="leave the schema in place")
    parser.add_argument("--schema", help="reuse this schema (built by an earlier --keep)")
    args = parser.parse_args()
    url = os.environ.get("AUDITOR_BENCH_POSTGRES") or os.environ.get("AUDITOR_TEST_POSTGRES")
    if not url:
        print("postgres list: skipped (set AUDITOR_BENCH_POSTGRES)")
        return
    schema = args.schema or "bench_" + secrets.token_hex(4)
    engine = sa.create_engine(url)
    if not args.schema:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    store_url = sa.engine.make_url(url).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    audit = str(Path(sys.executable).parent / "audit")
    result: dict[str, object] = {"runs": args.runs, "target_s": TARGET_S}
    try:
        with tempfile.TemporaryDirectory() as blobs:
            if not args.schema:
                result["build_store_s"] = round(build(store_url, blobs, args.runs), 1)
            env = {**os.environ}
            env.pop("AUDITOR_STORE", None)
            env.pop("AUDITOR_BLOBS", None)
            pg = [audit, "--store", store_url]
            cases = {
                "python_pass_s": [sys.executable, "-c", "pass"],
                "audit_list_default_s": [*pg, "list"],
                "audit_list_all_json_s": [*pg, "list", "--limit", "0", "--json"],
                "audit_list_where_s": [*pg, "list", "--where", "tag = bench"],
            }
            median_wall(cases["audit_list_default_s"], env, 1)  # warm caches
            for name, argv in cases.items():
                result[name] = median_wall(argv, env, args.repeat)
    finally:
        if args.keep:
            print(f"kept schema {schema}")
        else:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
    result["load_average"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    (RESULTS / f"pg_list{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result.items():
        note = f" (target < {TARGET_S} s)" if name == "audit_list_default_s" else ""
        print(f"{name:<24} {value}{note}")


if __name__ == "__main__":
    main()
