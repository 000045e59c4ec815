"""The metrics family of the SQL store: each run's series (``metrics``, append-only, exact
IEEE-754 bits beside a queryable value) and their curve previews (``metric_previews``,
derived and display-only: ``store/preview.py``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from auditor.store.base import MetricPoint, bits_to_float
from auditor.store.sql_base import SqlBase, db, db_iter
from auditor.store.sql_schema import t_metrics, t_previews

if TYPE_CHECKING:  # numpy loads for the dashboard's reads only
    import numpy as np

_INSERT_METRICS = ("INSERT INTO metrics (run_id, seq, key, step, value, bits, time) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)")


class MetricTables(SqlBase):
    """Metric series and their curve previews."""

    @db
    def add_metrics(self, run_id: str,
                    points: Iterable[MetricPoint | tuple[str, int, float, float]]) -> int:
        """Append points in one transaction, preserving exact float bits."""
        batch = list(points)
        if not batch:
            return 0
        values = array("d", [p[2] for p in batch])
        bits = array("q")
        bits.frombytes(values.tobytes())  # IEEE bits of every value at once
        with self.write_tx(run_id) as conn:
            start = conn.execute(sa.select(sa.func.coalesce(sa.func.max(t_metrics.c.seq), -1))
                                 .where(t_metrics.c.run_id == run_id)).scalar_one() + 1
            rows = [(run_id, start + i, p[0], p[1], None if p[2] != p[2] else p[2], b, p[3])
                    for i, (p, b) in enumerate(zip(batch, bits, strict=True))]
            if self.is_sqlite:
                conn.exec_driver_sql(_INSERT_METRICS, rows)
            else:
                cols = ("run_id", "seq", "key", "step", "value", "bits", "time")
                conn.execute(t_metrics.insert(), [dict(zip(cols, r, strict=True)) for r in rows])
            write_previews(conn, run_id, self.paramstyle, only_if_due=True)
        return len(batch)

    @db
    def metric_previews(self, run_id: str
                        ) -> dict[str, tuple[np.ndarray, np.ndarray, int]] | None:
        """key -> (steps, values, total) of every series of the run as its stored preview
        plus the points logged after it (store/preview.py): the dashboard's cheap read.
        None when the run has no usable preview (none stored, or one claiming more points
        than the run has): the caller reads the full series."""
        import numpy as np

        from auditor.store.preview import decode

        mark = self.paramstyle
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(f"SELECT key, upto_seq, total, steps, vals FROM metric_previews "
                               f"WHERE run_id = {mark}", (run_id,))
                stored = cursor.fetchall()
                cursor.execute(f"SELECT MAX(seq) FROM metrics WHERE run_id = {mark}",
                               (run_id,))
                found = cursor.fetchone()
                top = found[0] if found else None
                if not stored or top is None:
                    return None
                upto = {int(r[1]) for r in stored}
                if len(upto) != 1 or next(iter(upto)) > int(top):
                    return None  # not made at one mark, or ahead of the series: not used
                since = next(iter(upto))
                cursor.execute(f"SELECT key, step, bits FROM metrics WHERE run_id = {mark} "
                               f"AND seq > {mark} ORDER BY seq", (run_id, since))
                tail = cursor.fetchall()
            finally:
                cursor.close()
        out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        for key, _upto, total, steps, vals in stored:
            arrays = decode(bytes(steps), bytes(vals))
            if arrays is None:
                return None
            out[str(key)] = (*arrays, int(total))
        if tail:
            grouped: dict[str, list[tuple[int, int]]] = {}
            for key, step, bits in tail:
                grouped.setdefault(str(key), []).append((int(step), int(bits)))
            for key, pairs in grouped.items():
                flat = np.array(pairs, dtype=np.int64)
                steps_, vals_ = flat[:, 0].copy(), flat[:, 1].copy().view(np.float64)
                old = out.get(key)
                if old is None:
                    out[key] = (steps_, vals_, len(pairs))
                else:
                    out[key] = (np.concatenate([old[0], steps_]),
                                np.concatenate([old[1], vals_]), old[2] + len(pairs))
        return out

    @db
    def refresh_previews(self, run_id: str) -> None:
        """Recompute the run's curve previews from its series now."""
        with self.write_tx(run_id) as conn:
            write_previews(conn, run_id, self.paramstyle, only_if_due=False, force=True)

    @db
    def preview_problems(self, run_id: str, *, repair: bool = False) -> list[str]:
        """Previews of the run that differ from what its series gives (``repair``:
        rebuilt); a preview made before later points is not a problem."""
        from auditor.store.preview import decode

        with self.engine.connect() as conn:
            stored = conn.execute(sa.select(t_previews).where(t_previews.c.run_id == run_id)
                                  ).all()
            upto = max((int(r.upto_seq) for r in stored), default=-1)
            want = _previews_of(conn, run_id, self.paramstyle, upto) if stored else {}
        if not stored:
            if repair:  # a run stored before previews existed gets its previews
                self.refresh_previews(run_id)
            return []
        problems = []
        keys = {str(r.key) for r in stored}
        if set(want) - keys:
            problems.append(f"run {run_id}: curve previews lack "
                            + ", ".join(sorted(set(want) - keys)))
        for r in stored:
            arrays = decode(bytes(r.steps), bytes(r.vals))
            expected = want.get(str(r.key))
            if (arrays is None or expected is None or int(r.upto_seq) != upto
                    or int(r.total) != expected[2] or arrays[0].tobytes() != expected[0]
                    or arrays[1].tobytes() != expected[1]):
                problems.append(f"run {run_id}: curve preview of {str(r.key)!r} differs from "
                                "its series (derived data: `audit fsck --repair` rebuilds it)")
        if problems and repair:
            self.refresh_previews(run_id)
        return problems

    @db_iter
    def iter_metrics(self, run_id: str, key: str | None = None) -> Iterator[MetricPoint]:
        """Points in logging order."""
        query = (
            sa.select(t_metrics.c.key, t_metrics.c.step, t_metrics.c.bits, t_metrics.c.time)
            .where(t_metrics.c.run_id == run_id)
            .order_by(t_metrics.c.seq)
        )
        if key is not None:
            query = query.where(t_metrics.c.key == key)
        with self.engine.connect() as conn:
            for r in conn.execute(query.execution_options(yield_per=10_000)):
                yield MetricPoint(r.key, int(r.step), bits_to_float(int(r.bits)), float(r.time))

    @db
    def metric_arrays(self, run_id: str, key: str | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (steps, values) as numpy arrays in logging order: the bulk read behind
        the dashboard's curves (exact values from the stored bits). One query per key,
        read through the driver's own cursor straight into numpy (no row objects: a
        100,000-point series is 100,000 driver tuples, not 100,000 SQLAlchemy rows)."""
        import itertools

        import numpy as np  # only here: `audit list` does not pay for numpy

        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                if key is None:
                    cursor.execute(f"SELECT DISTINCT key FROM metrics WHERE run_id = {mark}",
                                   (run_id,))
                    keys = sorted(str(r[0]) for r in cursor.fetchall())
                else:
                    keys = [key]
                for k in keys:
                    cursor.execute(f"SELECT step, bits FROM metrics WHERE run_id = {mark} "
                                   f"AND key = {mark} ORDER BY seq", (run_id, k))
                    flat = np.fromiter(itertools.chain.from_iterable(cursor),  # type: ignore[arg-type]
                                       dtype=np.int64)
                    if len(flat):
                        pairs = flat.reshape(-1, 2)
                        out[k] = (pairs[:, 0].copy(), pairs[:, 1].copy().view(np.float64))
            finally:
                cursor.close()
        return out

    @db
    def metrics_mark(self, run_id: str) -> int:
        """How many metric points the run has had appended (points are append-only, so
        an unchanged mark means unchanged series): a primary-key lookup, for caches."""
        with self.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(t_metrics.c.seq))
                               .where(t_metrics.c.run_id == run_id)).scalar_one()
        return -1 if top is None else int(top)


def _previews_of(conn: Connection, run_id: str, mark: str, upto: int
                 ) -> dict[str, tuple[bytes, bytes, int]]:
    """key -> (steps bytes, values bytes, total) of the run's series up to seq ``upto``."""
    import itertools

    from auditor.store.preview import PREVIEW_POINTS, encode, lttb, small_preview

    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"SELECT key, step, bits FROM metrics WHERE run_id = {mark} "
                       f"AND seq <= {mark} ORDER BY key, seq", (run_id, upto))
        out: dict[str, tuple[bytes, bytes, int]] = {}
        for key, group in itertools.groupby(cursor.fetchall(), key=lambda r: r[0]):
            rows = [(int(r[1]), int(r[2])) for r in group]
            if len(rows) <= PREVIEW_POINTS:  # the same bytes, without importing numpy
                out[str(key)] = (*small_preview(rows), len(rows))
                continue
            import numpy as np

            flat = np.fromiter(itertools.chain.from_iterable(rows),
                               dtype=np.int64).reshape(-1, 2)
            steps, values = flat[:, 0].copy(), flat[:, 1].copy().view(np.float64)
            total = len(steps)
            out[str(key)] = (*encode(*lttb(steps, values, PREVIEW_POINTS)), total)
        return out
    finally:
        cursor.close()


def write_previews(conn: Connection, run_id: str, mark: str, *, only_if_due: bool,
                   force: bool = False) -> None:
    """Recompute the run's curve previews at its current mark (store/preview.py) unless
    they are at it already (``force``: even then); with ``only_if_due`` only when enough
    points came since the last ones."""
    from auditor.store.preview import due

    top = conn.execute(sa.select(sa.func.max(t_metrics.c.seq))
                       .where(t_metrics.c.run_id == run_id)).scalar_one()
    if top is None:
        conn.execute(t_previews.delete().where(t_previews.c.run_id == run_id))
        return
    upto = conn.execute(sa.select(sa.func.max(t_previews.c.upto_seq))
                        .where(t_previews.c.run_id == run_id)).scalar_one()
    upto = -1 if upto is None else int(upto)
    if not force and (upto == int(top) or (only_if_due and not due(upto, int(top)))):
        return
    previews = _previews_of(conn, run_id, mark, int(top))
    conn.execute(t_previews.delete().where(t_previews.c.run_id == run_id))
    conn.execute(t_previews.insert(), [
        {"run_id": run_id, "key": key, "upto_seq": int(top), "total": total, "steps": steps,
         "vals": vals} for key, (steps, vals, total) in previews.items()])
