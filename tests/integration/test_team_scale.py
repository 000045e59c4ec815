"""Team scale on real parts: concurrent recorders into PostgreSQL + S3 (moto's server on
127.0.0.1) and SIGKILL loops of a record and of a push (the workload is
``bench/bench_team_scale.py``'s; the bench runs 16 x 50 runs and 50 kills of each)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from auditor.store import open_store
from bench.bench_team_scale import push_kill_loop, record_kill_loop, record_one, run_writers


def _check_scale(result: dict[str, object], total: int) -> None:
    assert result["error_count"] == 0, result["errors"]
    assert result["runs_stored"] == result["runs_acked"] == result["finished"] == total
    assert result["lost"] == 0 and result["fsck_problems"] == []


def test_concurrent_recorders_into_postgresql_and_s3(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    _check_scale(run_writers((pg_url, s3_bucket), 4, 10), 40)


@pytest.mark.slow
def test_16_recorders_x_50_runs(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    result = run_writers((pg_url, s3_bucket), 16, 50)
    _check_scale(result, 800)
    print(f"16 x 50: p50 {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s per run")


def test_record_kill_loop_postgresql_and_s3(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    assert record_kill_loop((pg_url, s3_bucket), 6)["fsck_problems"] == []


def test_push_kill_loop(
    pg_url: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    local = str(tmp_path / "laptop")
    laptop = open_store(local)
    rng = random.Random(3)
    for _ in range(10):
        record_one(laptop, rng, size=200_000)
    laptop.close()
    result = push_kill_loop(local, (pg_url, s3_bucket), {**os.environ, "AUDITOR_STORE": local}, 4)
    assert result["runs"] == 10 and result["fsck_problems"] == []
