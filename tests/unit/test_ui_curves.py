"""The dashboard's metric reads, on SQLite and PostgreSQL: exact series straight from the
driver's cursor, LTTB downsampling on the server, and the curve cache a running run's new
points get past."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditor.store import SqlStore
from auditor.ui.views import CurveCache, curves, lttb
from tests.uifactory import put_run


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """Every curve test runs against SQLite and PostgreSQL."""
    return any_store


def test_metric_arrays_are_exact_and_in_logging_order(store: SqlStore) -> None:
    run = put_run(store, name="r").identity.id
    values = [0.1, -0.0, math.nan, 1e-310, 2.5, math.inf]
    store.add_metrics(run, [("loss", s, v, 0.0) for s, v in zip((5, 3, 9, 1, 7, 8), values,
                                                               strict=True)])
    store.add_metrics(run, [("acc", 0, 0.25, 0.0), ("loss", 0, 0.3, 0.0)])
    got = store.metric_arrays(run)
    assert sorted(got) == ["acc", "loss"]
    steps, read = got["loss"]
    assert steps.tolist() == [5, 3, 9, 1, 7, 8, 0]
    want = np.array([*values, 0.3])
    assert read.view(np.int64).tolist() == want.view(np.int64).tolist()  # bit for bit
    assert sorted(store.metric_arrays(run, "acc")) == ["acc"]
    assert store.metric_arrays(run, "absent") == {}
    assert store.metric_arrays(put_run(store, name="empty").identity.id) == {}


def test_curves_are_downsampled_keeping_the_shape(store: SqlStore) -> None:
    ys = [math.sin(i / 300) for i in range(5000)]
    ys[2222] = 40.0  # a spike a stride-sampler would miss
    run = put_run(store, name="long", series={"loss": ys}).identity.id
    (curve,) = curves(store, [run], points=500)["loss"]
    assert curve["total"] == 5000 and len(curve["steps"]) == 500
    assert curve["steps"][0] == 0 and curve["steps"][-1] == 4999
    assert 40.0 in curve["values"] and curve["steps"] == sorted(curve["steps"])


def test_lttb_drops_non_finite_and_orders_steps() -> None:
    xs, ys = lttb(np.array([3, 1, 2, 0]), np.array([3.0, math.nan, 2.0, 0.0]), 10)
    assert xs == [0, 2, 3] and ys == [0.0, 2.0, 3.0]


def test_cache_sees_a_running_runs_new_points(store: SqlStore) -> None:
    run = put_run(store, name="live", status="running", series={"loss": [1.0, 0.9]})
    cache = CurveCache()
    first = cache.get(store, run.identity.id, None, 100)
    assert first["loss"]["values"] == [1.0, 0.9]
    assert cache.get(store, run.identity.id, None, 100) is first  # unchanged: not re-read
    mark = store.metrics_mark(run.identity.id)
    store.add_metrics(run.identity.id, [("loss", 2, 0.8, 2.0), ("acc", 2, 0.5, 2.0)])
    assert store.metrics_mark(run.identity.id) == mark + 2
    later = cache.get(store, run.identity.id, None, 100)
    assert later["loss"]["values"] == [1.0, 0.9, 0.8] and later["acc"]["total"] == 1
    assert store.metrics_mark(put_run(store, name="none").identity.id) == -1


def test_run_versions_are_the_record_digests(store: SqlStore) -> None:
    a = put_run(store, name="a")
    b = put_run(store, name="b", minute=1)
    versions = store.run_versions()
    assert set(versions) == {a.identity.id, b.identity.id}
    assert all(len(sha) == 64 for sha in versions.values())
    store.put_record(a.model_copy(update={"params": {"lr": 0.5}}))
    assert store.run_versions()[a.identity.id] != versions[a.identity.id]
    assert store.run_versions()[b.identity.id] == versions[b.identity.id]
