"""Benchmarks of the dashboard (issue 12): server time measured in process through the
whole ASGI stack (FastAPI's TestClient), median of several requests after one warm-up.

* ``runs-table``: the first page of the runs table (HTML and JSON) over 10,000 runs;
  also a filtered, sorted page (``params.lr < 0.01``, ``-metrics.accuracy``), and a deep
  page sorted by a param (filtered, sorted and cut in SQL);
* ``compare``: 20 runs with a 100,000-point curve each: server time and payload of
  ``/api/compare`` and of the ``/compare`` page (curves LTTB-downsampled on the server),
  cold (the process's curve cache emptied before every request: the curves come from the
  store's previews, written when the points were stored: the first view of these runs),
  warm (the downsampled curves kept by ``CurveCache``: any later view while the runs are
  unchanged), and cold without previews (every series read whole: a store upgraded to
  revision 0004 whose older runs have no previews yet);
* ``importance``: random forest + permutation importance + seed noise over 1,000 runs x
  20 params.

Writes ``bench/results/ui.json``. ``--runs``/``--points`` shrink it for a quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.core.schema import Command, Identity, MetricsSummary, RunRecord, new_run_id  # noqa: E402
from auditor.store import open_store  # noqa: E402
from auditor.store.query import all_rows  # noqa: E402
from auditor.store.sql import SqlStore, _record_row, t_previews, t_runs, t_values  # noqa: E402
from auditor.store.values import record_text_rows  # noqa: E402
from auditor.ui.importance import importance  # noqa: E402
from auditor.ui.views import CURVES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ui.json"
START = datetime(2026, 1, 1, tzinfo=UTC)


def record(i: int, params: dict[str, Any], final: dict[str, float]) -> RunRecord:
    return RunRecord(
        identity=Identity(id=new_run_id(), name=f"run-{i}", user="u", host="h",
                          started_at=START + timedelta(seconds=i), status="finished",
                          tags=("bench",)),
        command=Command(argv=("python", "train.py"), cwd="."),
        params=params, metrics=MetricsSummary(final=final))


def bulk(store: SqlStore, records: list[RunRecord]) -> None:
    """The rows ``put_record`` writes (the run and its ``run_values``), in one go."""
    rows = [_record_row(r, None) for r in records]
    with store.engine.begin() as conn:
        conn.execute(t_runs.insert(), rows)
        conn.execute(t_values.insert(), [v for row in rows
                                         for v in record_text_rows(str(row["record"]))])


def timed(client: Any, url: str, repeat: int = 5, *, cold: bool = False) -> dict[str, float]:
    """Median of ``repeat`` requests after the first (whose time is ``first_ms``: the
    server's caches filling); ``cold`` empties the curve cache before every request."""
    times, size, first = [], 0, 0.0
    for i in range(repeat + 1):
        if cold:
            CURVES.entries.clear()
        t = time.perf_counter()
        r = client.get(url)
        elapsed = (time.perf_counter() - t) * 1000
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        if i == 0:
            first = elapsed
        else:
            times.append(elapsed)
        size = len(r.content)
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "first_ms": round(first, 1), "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--compare", type=int, default=20)
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from auditor.ui.app import create_app

    rnd = random.Random(0)
    out: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(),
                           "date": datetime.now(UTC).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "store"))
        recs = [record(i, {"lr": rnd.choice([0.001, 0.01, 0.1]), "batch": rnd.choice([32, 64]),
                           "opt": rnd.choice(["sgd", "adam"]), "seed": i % 3},
                       {"accuracy": rnd.random(), "loss": rnd.random()})
                for i in range(args.runs)]
        bulk(store, recs)
        client = TestClient(create_app(store))
        out["runs-table"] = {
            "runs": args.runs,
            "html first page": timed(client, "/"),
            "json first page": timed(client, "/api/runs"),
            "filtered sorted page": timed(
                client, "/api/runs?where=params.lr%20%3C%200.01&sort=-metrics.accuracy"),
            "page 100 sorted by a param": timed(
                client, "/api/runs?sort=params.batch,-metrics.loss&page=100"),
        }
        print(json.dumps(out["runs-table"]), flush=True)
        ids = [r.identity.id for r in recs[: args.compare]]
        for run_id in ids:
            store.add_metrics(run_id, [("loss", s, 1.0 / (1 + s) + rnd.random() * 0.01,
                                        float(s)) for s in range(args.points)])
        joined = ",".join(ids)
        out["compare"] = {"runs": args.compare, "points per curve": args.points,
                          "api cold (curves read from the store's previews)":
                              timed(client, f"/api/compare?runs={joined}", 3, cold=True),
                          "api": timed(client, f"/api/compare?runs={joined}", 3),
                          "page": timed(client, f"/compare?runs={joined}", 3)}
        with store.engine.begin() as conn:  # a store upgraded to 0004, not yet repaired
            conn.execute(t_previews.delete())
        out["compare"]["api cold without previews (full series read)"] = timed(
            client, f"/api/compare?runs={joined}", 3, cold=True)
        print(json.dumps(out["compare"]), flush=True)
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "store"))
        recs = []
        for i in range(1000):
            params: dict[str, Any] = {f"p{j}": rnd.choice([1, 2, 3, 4]) for j in range(19)}
            params["lr"] = rnd.choice([0.001, 0.01, 0.1])
            params["seed"] = i % 3
            recs.append(record(i, params, {"accuracy": params["lr"] * 5 + rnd.random() * 0.05}))
        bulk(store, recs)
        rows = all_rows(store)
        importance(rows[:50], "accuracy")  # warm-up: imports
        t = time.perf_counter()
        result = importance(rows, "accuracy")
        out["importance"] = {"runs": 1000, "params": 20,
                             "seconds": round(time.perf_counter() - t, 2),
                             "top": result.params[0].name}
        print(json.dumps(out["importance"]), flush=True)
        store.close()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
