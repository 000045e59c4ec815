"""Team scale: 16 processes x 50 runs recording at once into PostgreSQL + S3 (moto's server
on 127.0.0.1), then the kill loops: SIGKILL at random points of a record and of an
``audit push`` (50 iterations each), each followed by the checks that nothing is half
written and no object sits under a wrong digest.

PostgreSQL from ``AUDITOR_BENCH_POSTGRES`` or ``AUDITOR_TEST_POSTGRES`` (skipped, and said
so, when neither is set). ``AUDITOR_BENCH_KILLS`` sets the kill-loop iterations (50);
``--writers-only`` runs only the 16 x 50 writers and keeps the kill loops' last figures.
The writers open the store and build one record first (timed: ``all_open_s``,
``open_p50_s``), then start their runs together at a barrier, so the per-run latencies
are of recording, not of start-up.
The workload functions are shared with ``tests/integration/test_team_scale.py``.
Timings on a loaded 2-core machine are upper bounds.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

RESULTS = Path(__file__).resolve().parent / "results"
AUDIT = str(Path(sys.executable).parent / "audit")
Loc = tuple[str, str]  # (metadata URL, artifact URL)


def make_record(run_id: str, artifacts: tuple[Any, ...] = (), status: str = "finished",
                points: int = 0, series: str | None = None) -> Any:
    from auditor.core.schema import Command, Identity, MetricsSummary, RunRecord

    return RunRecord(
        identity=Identity(id=run_id, name="scale", user="u", host=socket.gethostname(),
                          started_at=datetime.now(UTC), status=status),  # type: ignore[arg-type]
        command=Command(argv=("python", "train.py"), cwd="."),
        artifacts=artifacts,
        metrics=MetricsSummary(points=points, series_sha256=series),
    )


def record_one(store: Any, rng: random.Random, *, size: int = 4096, points: int = 20) -> str:
    """One complete run as the recorder writes it: running row, objects, metrics, final."""
    from auditor.core.schema import ArtifactRef, new_run_id
    from auditor.store import MetricPoint
    from auditor.store.base import series_digest

    run_id = new_run_id()
    store.put_record(make_record(run_id, status="running"), pid=os.getpid())
    arts = []
    for k in range(2):
        sha, n = store.blobs.put_bytes(rng.randbytes(size + k))
        arts.append(ArtifactRef(name=f"outputs/w{k}.bin", sha256=sha, size=n, kind="output"))
    series = [MetricPoint("loss", s, 1.0 / (s + 1), float(s)) for s in range(points)]
    store.add_metrics(run_id, series)
    store.put_record(make_record(run_id, tuple(arts), points=points,
                                 series=series_digest(series)), pid=os.getpid())
    return run_id


def warm_up() -> None:
    """What a recorder process pays once before its first record (the record schema's
    import and pydantic's build of it: ~0.2 CPU-s), paid before the clock starts."""
    from auditor.core.schema import new_run_id

    make_record(new_run_id())


def _writer(loc: Loc, runs: int, start: Any, queue: Any) -> None:
    from auditor.store import open_store

    latencies: list[float] = []
    errors: list[str] = []
    ids: list[str] = []
    t0 = time.perf_counter()
    try:
        store = open_store(loc[0], blobs=loc[1])
        warm_up()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        start.abort()
        queue.put(([], [f"open: {type(exc).__name__}: {exc}"], [], 0.0))
        return
    opened = time.perf_counter() - t0
    rng = random.Random(os.getpid())
    with contextlib.suppress(threading.BrokenBarrierError):  # another writer failed to open
        start.wait()  # the runs start together, once every writer has opened the store
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            ids.append(record_one(store, rng))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - t0)
    store.close()
    queue.put((latencies, errors, ids, opened))


def run_writers(loc: Loc, procs: int, runs: int) -> dict[str, Any]:
    """``procs`` processes x ``runs`` runs at once; latencies, errors, and what is stored."""
    from auditor.release.fsck import check_store
    from auditor.store import open_store

    ctx = mp.get_context("spawn")  # no fork of a process holding connections
    # a barrier, not a fixed sleep: with 16 processes on 2 cores opening the store (imports,
    # connections) takes seconds, and runs timed meanwhile measured start-up, not recording
    start, queue = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(loc, runs, start, queue)) for _ in range(procs)]
    t_open = time.perf_counter()
    for w in workers:
        w.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a writer's open failed: its
        start.wait(timeout=600)  # error comes through the queue
    opened_s = time.perf_counter() - t_open
    t0 = time.perf_counter()
    results = [queue.get(timeout=1800) for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    latencies = sorted(x for r in results for x in r[0])
    errors = [e for r in results for e in r[1]]
    ids = [i for r in results for i in r[2]]
    store = open_store(loc[0], blobs=loc[1])
    try:
        summaries = store.list_runs()
        report = check_store(store)
    finally:
        store.close()
    return {
        "procs": procs, "runs_each": runs, "wall_s": wall,
        "runs_stored": len(summaries), "runs_acked": len(ids),
        "finished": sum(1 for s in summaries if s.status == "finished"),
        "lost": len(set(ids) - {s.id for s in summaries}),
        "errors": errors[:5], "error_count": len(errors),
        "fsck_problems": report.problems[:5],
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies else None,
        "runs_per_s": len(ids) / wall if wall else None,
        "all_open_s": opened_s,  # from the first spawn until every writer had the store open
        "open_p50_s": statistics.median(r[3] for r in results),
    }


# -- kill loops -------------------------------------------------------------------------
def _crash_child(loc: Loc, conn: Any) -> None:
    from auditor.store import open_store

    store = open_store(loc[0], blobs=loc[1])
    rng = random.Random(os.getpid())
    conn.send("ready")
    while True:
        conn.send(record_one(store, rng, size=50_000, points=500))


def check_complete(store: Any, run_id: str, points: int) -> None:
    """A finished run has everything: every object re-hashes to its name, every point."""
    rec = store.get_record(run_id)
    assert rec.identity.status == "finished", (run_id, rec.identity.status)
    assert len(rec.artifacts) == 2
    for art in rec.artifacts:
        assert store.blobs.rehash(art.sha256) == art.sha256, (run_id, art.name)
    assert sum(1 for _ in store.iter_metrics(run_id)) == points


def record_kill_loop(loc: Loc, iterations: int, seed: int = 1234) -> dict[str, Any]:
    """SIGKILL a recorder at random points; every acknowledged or finished run complete,
    every other one still 'running' (then marked crashed), fsck clean at the end."""
    from auditor.release.fsck import check_store
    from auditor.store import open_store

    ctx = mp.get_context("spawn")
    rng = random.Random(seed)
    acked: list[str] = []
    checked: set[str] = set()
    t_run = _one_run_s(loc)
    for _ in range(iterations):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_crash_child, args=(loc, child))
        proc.start()
        if not parent.poll(120):
            proc.kill()
            raise AssertionError("the recorder never opened the store")
        parent.recv()
        time.sleep(rng.uniform(0.0, 3 * t_run))
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join()
        while parent.poll():
            acked.append(parent.recv())
        store = open_store(loc[0], blobs=loc[1])
        for summary in store.list_runs():
            if summary.id in checked:
                continue
            if summary.id in acked or summary.status == "finished":
                check_complete(store, summary.id, 500)
                checked.add(summary.id)
            else:
                assert summary.status in ("running", "crashed"), summary.status
        store.mark_stale_runs()
        store.close()
    store = open_store(loc[0], blobs=loc[1])
    try:
        for run_id in acked:
            check_complete(store, run_id, 500)
        report = check_store(store, repair=True)  # objects re-hashed: none under a wrong name
    finally:
        store.close()
    assert acked, "the recorder never completed a run: kills came too early"
    return {"iterations": iterations, "complete_runs": len(checked),
            "fsck_problems": report.problems[:5]}


def _one_run_s(loc: Loc) -> float:
    from auditor.store import open_store

    store = open_store(loc[0], blobs=loc[1])
    t0 = time.perf_counter()
    record_one(store, random.Random(0), size=50_000, points=500)
    store.close()
    return time.perf_counter() - t0


def push_kill_loop(local: str, team: Loc, env: dict[str, str], iterations: int,
                   seed: int = 99) -> dict[str, Any]:
    """SIGKILL ``audit push --all`` at random points, ``iterations`` times, checking after
    each that every run at the team store is complete; then one push to the end."""
    from auditor.release.fsck import check_store
    from auditor.store import open_store

    rng = random.Random(seed)
    argv = [AUDIT, "push", "--all", "--to", team[0], "--to-blobs", team[1]]
    t0 = time.perf_counter()
    subprocess.run([AUDIT, "push", "--help"], env=env, capture_output=True, check=True)
    startup = time.perf_counter() - t0
    for _ in range(iterations):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(startup + rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = open_store(team[0], blobs=team[1])
        for summary in store.list_runs():
            check_complete(store, summary.id, 20)
        store.close()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    local_store, store = open_store(local), open_store(team[0], blobs=team[1])
    try:
        runs = set(local_store.run_versions())
        assert set(store.run_versions()) == runs
        report = check_store(store)
    finally:
        store.close()
        local_store.close()
    return {"iterations": iterations, "runs": len(runs), "fsck_problems": report.problems[:5]}


# -- servers for the bench ---------------------------------------------------------------
@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server in its own process; yields the AWS_* environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A fresh schema on the server, dropped afterwards; yields its store URL."""
    schema = "bench_" + secrets.token_hex(4)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield sa.engine.make_url(url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def new_bucket() -> str:
    import s3fs

    name = "scale-" + secrets.token_hex(4)
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/team"


def main() -> None:
    url = os.environ.get("AUDITOR_BENCH_POSTGRES") or os.environ.get("AUDITOR_TEST_POSTGRES")
    if not url:
        print("team scale: skipped (set AUDITOR_BENCH_POSTGRES)")
        return
    kills = int(os.environ.get("AUDITOR_BENCH_KILLS", "50"))
    writers_only = "--writers-only" in sys.argv[1:]  # keep the kill loops' last figures
    out = RESULTS / "team_scale.json"
    result: dict[str, Any] = json.loads(out.read_text()) if writers_only and out.exists() else {}
    with moto_server() as aws, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(aws)
        os.environ["AUDITOR_CACHE"] = str(Path(tmp) / "cache")
        with pg_schema(url) as store_url:
            scale = run_writers((store_url, new_bucket()), 16, 50)
        result["writers_16x50"] = scale
        print(f"16 x 50 runs into PostgreSQL + S3: {scale['runs_stored']} stored, "
              f"{scale['error_count']} errors, {scale['lost']} lost, fsck problems "
              f"{len(scale['fsck_problems'])}; p50 {scale['p50_s']:.3f} s, p99 "
              f"{scale['p99_s']:.3f} s per run (target < 1 s), {scale['wall_s']:.1f} s wall; "
              f"all 16 open after {scale['all_open_s']:.1f} s")
        if writers_only:
            RESULTS.mkdir(exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
            return
        with pg_schema(url) as store_url:
            t0 = time.perf_counter()
            loop = record_kill_loop((store_url, new_bucket()), kills)
            loop["wall_s"] = time.perf_counter() - t0
        result["record_kill_loop"] = loop
        print(f"record kill loop: {json.dumps(loop)}")
        local = str(Path(tmp) / "laptop")
        from auditor.store import open_store

        laptop = open_store(local)
        rng = random.Random(5)
        for _ in range(40):
            record_one(laptop, rng, size=200_000)
        laptop.close()
        with pg_schema(url) as store_url:
            t0 = time.perf_counter()
            pushed = push_kill_loop(local, (store_url, new_bucket()),
                                    {**os.environ, "AUDITOR_STORE": local}, kills)
            pushed["wall_s"] = time.perf_counter() - t0
        result["push_kill_loop"] = pushed
        print(f"push kill loop: {json.dumps(pushed)}")
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
