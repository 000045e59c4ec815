"""Benchmarks of the team store: `audit list` over 10,000 runs in PostgreSQL, and a 1 GiB
artifact uploaded to a local S3 server (moto's standalone server in its own process) by
auditor's create-only path beside a raw s3fs ``put`` of the same file.

PostgreSQL comes from ``AUDITOR_BENCH_POSTGRES`` or ``AUDITOR_TEST_POSTGRES`` (skipped,
and said so, when neither is set). ``AUDITOR_BENCH_S3_MB`` sets the artifact size
(default 1024). Each upload runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_record import build_store, time_cmd

RESULTS = Path(__file__).resolve().parent / "results"
AUDIT = str(Path(sys.executable).parent / "audit")


def bench_pg_list(url: str) -> dict[str, float]:
    schema = "bench_" + secrets.token_hex(4)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    store_url = sa.engine.make_url(url).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as blobs:
            os.environ["AUDITOR_BLOBS"] = blobs
            t0 = time.perf_counter()
            build_store(store_url)  # type: ignore[arg-type]
            built = time.perf_counter() - t0
            env = {**os.environ, "AUDITOR_STORE": store_url}
            env.pop("AUDITOR_BLOBS")
            return {
                "runs": 10_000,
                "build_store_s": built,
                "audit_list_default_s": time_cmd([AUDIT, "list"], env),
                "audit_list_all_json_s": time_cmd([AUDIT, "list", "--limit", "0", "--json"], env),
            }
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


UPLOAD = """
import resource, sys, time
from pathlib import Path
path, bucket, how = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
start = time.perf_counter()
if how == "auditor":
    from auditor.store.remote import RemoteBlobStore
    RemoteBlobStore(f"s3://{bucket}/team", Path(sys.argv[4])).put_file(path)
else:
    import s3fs
    s3fs.S3FileSystem(skip_instance_cache=True).put_file(str(path), f"{bucket}/raw/file")
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_s3_put(megabytes: int) -> dict[str, float | str]:
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        bucket = "bench-" + secrets.token_hex(4)
        make = f"import s3fs; s3fs.S3FileSystem().mkdir({bucket!r})"
        subprocess.run([sys.executable, "-c", make], env=env, check=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "artifact.bin"
            with open(path, "wb") as fh:
                for _ in range(megabytes):
                    fh.write(os.urandom(1 << 20))
            out: dict[str, float | str] = {"megabytes": megabytes}
            for how in ("auditor", "s3fs"):
                res = subprocess.run(
                    [sys.executable, "-c", UPLOAD, str(path), bucket, how, str(Path(tmp) / "c")],
                    env=env, check=False, capture_output=True, text=True,
                )
                if res.returncode != 0:
                    lines = res.stderr.strip().splitlines()
                    out[f"{how}_error"] = lines[-1] if lines else f"exit {res.returncode}"
                    continue
                seconds, rss_kib = res.stdout.split()
                out[f"{how}_s"] = float(seconds)
                out[f"{how}_mb_per_s"] = megabytes / float(seconds)
                out[f"{how}_peak_rss_mb"] = int(rss_kib) / 1024
            return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    result: dict[str, object] = {}
    url = os.environ.get("AUDITOR_BENCH_POSTGRES") or os.environ.get("AUDITOR_TEST_POSTGRES")
    if url:
        listing = bench_pg_list(url)
        result["postgres_list"] = listing
        print(f"audit list over 10,000 runs in PostgreSQL: {listing['audit_list_default_s']:.3f} s"
              f" default, {listing['audit_list_all_json_s']:.3f} s --limit 0 --json "
              "(target < 0.5 s)")
    else:
        print("postgres list: skipped (set AUDITOR_BENCH_POSTGRES)")
    put = bench_s3_put(int(os.environ.get("AUDITOR_BENCH_S3_MB", "1024")))
    result["s3_put"] = put
    print(f"S3 put of {put['megabytes']} MiB (target: auditor peak RSS < 150 MB): "
          + json.dumps({k: v for k, v in put.items() if k != "megabytes"}))
    (RESULTS / "team.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
