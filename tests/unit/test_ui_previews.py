"""Curve previews (store/preview.py): the dashboard's cheap read of long metric series, on
SQLite and PostgreSQL. A preview is derived, display-only data: a growing run's preview
is refreshed and its newer points are shown, one that claims more than the series holds
is not used, a tampered one never changes a verdict, fsck checks it against the series
and push/pull makes it anew."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from auditor.certify.decide import decide
from auditor.compare import compare_runs
from auditor.compare.evidence import evidence_from_store
from auditor.core.policy import Policy
from auditor.core.schema import MetricsSummary
from auditor.release.fsck import check_store
from auditor.store import SqlStore, open_store
from auditor.store.base import series_digest
from auditor.store.preview import PREVIEW_POINTS, encode
from auditor.store.sync import sync
from auditor.ui.views import CURVES, curves
from tests.uifactory import put_run

LONG = 3 * PREVIEW_POINTS


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """Every preview test runs against SQLite and PostgreSQL."""
    return any_store


def wave(n: int, spike_at: int | None = None) -> list[float]:
    ys = [math.sin(i / 300) for i in range(n)]
    if spike_at is not None:
        ys[spike_at] = 40.0
    return ys


def preview_rows(store: SqlStore, run_id: str) -> list[sa.Row[tuple[str, int, int]]]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT key, upto_seq, total FROM metric_previews WHERE run_id = :r ORDER BY key"),
            {"r": run_id}))


def finished(store: SqlStore, run_id: str) -> None:
    """Store the run's final record, as the recorder does when a run ends."""
    rec = store.get_record(run_id)
    series = series_digest(store.iter_metrics(run_id))
    store.put_record(rec.model_copy(update={
        "identity": rec.identity.model_copy(update={"status": "finished"}),
        "metrics": MetricsSummary(final=dict(rec.metrics.final), points=LONG,
                                  series_sha256=series)}))


def test_long_series_get_a_preview_of_logged_points(store: SqlStore) -> None:
    ys = wave(LONG, spike_at=5555)
    run = put_run(store, name="long", series={"loss": ys, "acc": [0.5, 0.6]}).identity.id
    found = store.metric_previews(run)
    assert found is not None and sorted(found) == ["acc", "loss"]
    steps, values, total = found["loss"]
    assert total == LONG and len(steps) == PREVIEW_POINTS and 40.0 in values.tolist()
    assert all(ys[s] == v for s, v in zip(steps.tolist(), values.tolist(), strict=True))
    assert found["acc"][2] == 2
    CURVES.entries.clear()
    (curve,) = curves(store, [run], points=500)["loss"]
    assert curve["total"] == LONG and len(curve["steps"]) == 500 and 40.0 in curve["values"]


def test_a_growing_runs_preview_is_refreshed_and_its_new_points_shown(
        store: SqlStore) -> None:
    run = put_run(store, name="live", status="running",
                  series={"loss": wave(LONG)}).identity.id
    assert [tuple(r) for r in preview_rows(store, run)] == [("loss", LONG - 1, LONG)]
    # a few more points: the preview stays, the reader adds them (the tail)
    store.add_metrics(run, [("loss", LONG + i, -7.0, 0.0) for i in range(10)]
                      + [("lr", 0, 0.1, 0.0)])
    assert preview_rows(store, run)[0].upto_seq == LONG - 1
    CURVES.entries.clear()
    shown = curves(store, [run])
    assert shown["loss"][0]["total"] == LONG + 10 and -7.0 in shown["loss"][0]["values"]
    assert shown["lr"][0]["values"] == [0.1]
    # enough new points: the preview is made again at the run's new mark
    more = [("loss", 2 * LONG + i, 0.25, 0.0) for i in range(LONG)]
    store.add_metrics(run, more)
    mark = store.metrics_mark(run)
    assert {r.key: (r.upto_seq, r.total) for r in preview_rows(store, run)} == {
        "loss": (mark, 2 * LONG + 10), "lr": (mark, 1)}
    # the final record brings a preview current to the last point
    store.add_metrics(run, [("loss", 9 * LONG, 3.0, 0.0)])
    finished(store, run)
    assert {r.upto_seq for r in preview_rows(store, run)} == {store.metrics_mark(run)}
    assert store.preview_problems(run) == []


def test_a_preview_ahead_of_its_series_is_not_used(store: SqlStore) -> None:
    run = put_run(store, name="r", series={"loss": wave(LONG)}).identity.id
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE metric_previews SET upto_seq = upto_seq + 100"))
    assert store.metric_previews(run) is None  # the dashboard reads the full series
    CURVES.entries.clear()
    assert curves(store, [run])["loss"][0]["total"] == LONG


def tamper(store: SqlStore, run_id: str, values: list[float]) -> None:
    """Overwrite the run's loss preview with ``values`` (steps 0..n-1)."""
    steps, vals = encode(np.arange(len(values)), np.array(values))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE metric_previews SET steps = :s, vals = :v "
                             "WHERE run_id = :r AND key = 'loss'"),
                     {"s": steps, "v": vals, "r": run_id})


def verdict(store: SqlStore, left: str, right: str) -> str:
    a = evidence_from_store(store, store.get_record(left))
    b = evidence_from_store(store, store.get_record(right))
    policy = Policy()
    diffs = compare_runs(a, b, policy.compare, only=("metrics",))
    return decide(diffs, a.record, b.record, policy).level


def test_a_tampered_preview_never_changes_a_verdict_and_fsck_names_it(
        store: SqlStore) -> None:
    ys = wave(LONG)
    left = put_run(store, name="left", final={"loss": 0.1}, series={"loss": ys}).identity.id
    same = put_run(store, name="same", final={"loss": 0.1}, series={"loss": ys}).identity.id
    other = put_run(store, name="other", final={"loss": 0.1},
                    series={"loss": [*ys[:-1], 9.0]}).identity.id
    for run in (left, same, other):
        finished(store, run)
    assert check_store(store).problems == []
    before = (verdict(store, left, same), verdict(store, left, other))
    assert before == ("reproduced-bitwise", "not-reproduced")
    # the differing run's preview made to look like the original's, the same run's garbled
    with store.engine.connect() as conn:
        copied = conn.execute(sa.text("SELECT steps, vals FROM metric_previews "
                                      "WHERE run_id = :r"), {"r": left}).one()
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE metric_previews SET steps = :s, vals = :v "
                             "WHERE run_id = :r"),
                     {"s": copied.steps, "v": copied.vals, "r": other})
    tamper(store, same, [1e9] * 10)
    assert (verdict(store, left, same), verdict(store, left, other)) == before
    problems = check_store(store).problems
    assert len(problems) == 2 and all("curve preview of 'loss' differs" in p for p in problems)
    repaired = check_store(store, repair=True)
    assert repaired.problems == [] and sum("rebuilt" in line for line in repaired.lines) == 2
    assert check_store(store).problems == []
    CURVES.entries.clear()
    assert 1e9 not in curves(store, [same])["loss"][0]["values"]


def test_a_stale_preview_of_a_live_run_is_not_flagged(store: SqlStore) -> None:
    run = put_run(store, name="live", status="running",
                  series={"loss": wave(LONG)}).identity.id
    store.add_metrics(run, [("loss", LONG, 0.5, 0.0), ("acc", 0, 0.1, 0.0)])
    assert preview_rows(store, run)[0].upto_seq == LONG - 1  # behind the series
    assert store.preview_problems(run) == []


def test_push_makes_previews_anew_at_the_target(tmp_path: Path, store: SqlStore) -> None:
    run = put_run(store, name="r", series={"loss": wave(LONG)}).identity.id
    finished(store, run)
    tamper(store, run, [5.0, 6.0])  # a bad preview at the source is not carried over
    target = open_store(str(tmp_path / "target"))
    try:
        sync(store, target, [run])
        assert target.preview_problems(run) == []
        found = target.metric_previews(run)
        assert found is not None and found["loss"][2] == LONG
        assert 5.0 not in found["loss"][1].tolist()
        assert check_store(target).problems == []
    finally:
        target.close()


def test_a_run_without_previews_is_read_whole_and_repair_makes_them(store: SqlStore) -> None:
    run = put_run(store, name="old", series={"loss": wave(LONG, spike_at=77)}).identity.id
    with store.engine.begin() as conn:  # as a store upgraded to revision 0004 has it
        conn.execute(sa.text("DELETE FROM metric_previews"))
    assert store.metric_previews(run) is None
    CURVES.entries.clear()
    (curve,) = curves(store, [run])["loss"]
    assert curve["total"] == LONG and 40.0 in curve["values"]
    assert check_store(store).problems == []  # a missing preview is no fault
    assert check_store(store, repair=True).problems == []
    assert [tuple(r) for r in preview_rows(store, run)] == [("loss", LONG - 1, LONG)]


@pytest.mark.parametrize("seed", range(6))
def test_a_short_series_preview_is_the_same_bytes_without_numpy(seed: int) -> None:
    # previews of short series are made without numpy (a recorder need not import it);
    # they must equal the numpy path's bytes, or fsck would flag every older preview
    import random
    import struct

    from auditor.store.preview import lttb, small_preview

    rng = random.Random(seed)
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e308]
    n = rng.choice([0, 1, 2, 17, 500, PREVIEW_POINTS])
    steps = [rng.randrange(-5, 2000) if seed % 2 else i for i in range(n)]  # odd: unsorted
    values = [rng.choice(specials) if rng.random() < 0.1 else rng.uniform(-1, 1)
              for _ in range(n)]
    bits = [struct.unpack("<q", struct.pack("<d", v))[0] for v in values]
    flat = np.array(list(zip(steps, bits, strict=True)), dtype=np.int64).reshape(-1, 2)
    expected = encode(*lttb(flat[:, 0].copy(), flat[:, 1].copy().view(np.float64),
                            PREVIEW_POINTS))
    assert small_preview(list(zip(steps, bits, strict=True))) == expected
