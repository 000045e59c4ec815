"""Batches of verifications and the claims that keep them idempotent (revision 0005).

Contract (``/work/notes/batch-contract.md`` is the executors' copy):

- A **batch** (table ``batches``) is one scheduled check: an id (given, e.g. the CI
  pipeline's, or new), the policy digest it verifies under, its shard count, executor and
  selection. Creating it is idempotent, so every shard of a CI matrix creates the same
  batch; a shard under another policy is refused (exit 2).
- A **batch item** (``batch_items``) is one run in one batch: its shard, state
  (``pending`` → ``running`` → ``done`` | ``failed`` | ``skipped``), verdict, exit code,
  where it ran (node, GPU), how long, the rerun, the certificate and links to reports.
- A **claim** (``verify_claims``) says who verifies a run under one policy and lockfile:
  its primary key is ``(run_id, policy_sha256, lock_sha256)``, so a claim is an insert
  that only one worker can win, on SQLite and PostgreSQL alike (``ON CONFLICT DO
  NOTHING``; the row count says who won). A ``done`` claim (a verdict was certified) is
  never taken again: no run is verified twice under the same policy and lock, by any
  batch. A ``failed`` claim (could-not-verify or bad input: nothing certified) is taken
  over by a later batch (never by another worker of the batch it failed in: one attempt
  per run and batch), a ``claimed`` one whose lease ran out (a worker killed mid-verify)
  by any, and a ``claimed`` one by the worker (same batch, same worker name) holding it:
  a retried executor task with a stable worker name claims its run again. Each by one
  conditional ``UPDATE``, which again only one worker wins.
- **Shards** partition runs by a stable hash of the run id: ``shard_of(id, N)`` depends
  on the id and N only, so every run is in exactly one shard and stays there as runs are
  added.

Rows never leave the module: callers get the frozen dataclasses below. SQLAlchemy errors
become ``StoreUnavailable`` (exit 3) through the store's ``unavailable``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from auditor.core.errors import InputError, StoreError

if TYPE_CHECKING:
    from auditor.core.schema import RunRecord

ITEM_STATES = ("pending", "running", "done", "failed", "skipped")
VERDICTS = ("reproduced-bitwise", "reproduced-within-tolerance", "not-reproduced",
            "could-not-verify", "bad-input")
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHARD = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")
MAX_REPORT_LINKS = 8
MAX_TEXT = 2000

_meta = sa.MetaData()  # the tables as revision 0005 makes them
t_batches = sa.Table(
    "batches",
    _meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("policy_sha256", sa.String(64), nullable=False),
    sa.Column("shards", sa.Integer, nullable=False),
    sa.Column("executor", sa.String(64), nullable=False),
    sa.Column("selection", sa.Text, nullable=False),  # JSON: what --all selected by
)
sa.Index("ix_batches_created", t_batches.c.created_at)
t_items = sa.Table(
    "batch_items",
    _meta,
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(40)),
    sa.Column("exit_code", sa.Integer),
    sa.Column("node", sa.Text),
    sa.Column("gpu", sa.Text),
    sa.Column("worker", sa.Text),
    sa.Column("started_at", sa.String(40)),
    sa.Column("seconds", sa.Float),
    sa.Column("rerun_id", sa.String(26)),
    sa.Column("certificate_sha256", sa.String(64)),
    sa.Column("reports", sa.Text, nullable=False, default="[]"),  # JSON list of links
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.PrimaryKeyConstraint("batch_id", "run_id"),
)
t_claims = sa.Table(
    "verify_claims",
    _meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("policy_sha256", sa.String(64), nullable=False),
    sa.Column("lock_sha256", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # claimed | done | failed
    sa.Column("lease_until", sa.Float, nullable=False),  # epoch seconds
    sa.Column("certificate_sha256", sa.String(64)),
    sa.PrimaryKeyConstraint("run_id", "policy_sha256", "lock_sha256"),
)
BATCH_TABLES = (t_batches, t_items, t_claims)


# -- pure helpers -------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``--shard I/N`` writes it)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with 1 <= I <= N; ``InputError`` (exit 2) for ``3/2``, ``a/b``, ``0/0``."""
    found = _SHARD.fullmatch(text.strip())
    if not found:
        raise InputError(f"invalid shard {text!r}: expected I/N with whole numbers, e.g. 2/4")
    index, count = int(found.group(1)), int(found.group(2))
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"invalid shard {text!r}: I must be between 1 and N (N >= 1)")
    return Shard(index, count)


def shard_of(run_id: str, count: int) -> int:
    """The 1-based shard of ``run_id`` among ``count``: sha256 of the id, its first 8
    bytes as an unsigned integer, modulo ``count``. Depends on nothing but the two."""
    number = int.from_bytes(hashlib.sha256(run_id.encode("utf-8")).digest()[:8], "big")
    return number % count + 1


def partition(run_ids: Iterable[str], shard: Shard) -> list[str]:
    """The ids of ``run_ids`` in ``shard``, in their order."""
    return [i for i in run_ids if shard_of(i, shard.count) == shard.index]


def policy_digest(table: Mapping[str, object]) -> str:
    """sha256 of the flat ``[verify]`` table (``Policy.table()``) as canonical JSON."""
    text = json.dumps(dict(table), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def lock_digest(record: RunRecord) -> str:
    """sha256 of the run's recorded lockfile; ``"none"`` when it has none."""
    python = record.environment.python
    return python.lock.sha256 if python and python.lock else "none"


def validate_batch_id(text: str) -> str:
    """A batch id: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not _BATCH_ID.fullmatch(text):
        raise InputError(f"invalid batch id {text[:80]!r}: use 1-64 letters, digits, '.', "
                         "'_' or '-', starting with a letter or digit")
    return text


def new_batch_id() -> str:
    """A fresh, time-sortable batch id (``b`` + UTC time + random)."""
    return f"b{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def default_worker() -> str:
    """This process as a claim holder: ``$AUDITOR_WORKER`` (an executor's stable name for
    a task, so its retry claims the run again), else host and pid."""
    given = os.environ.get("AUDITOR_WORKER", "").strip()
    return given[:200] if given else f"{os.uname().nodename}:{os.getpid()}"


# -- what callers get ---------------------------------------------------------------------
@dataclass(frozen=True)
class ItemResult:
    """What one verification of a batch came to (``finish``)."""

    verdict: str | None
    exit_code: int
    node: str | None = None
    gpu: str | None = None
    seconds: float | None = None
    rerun_id: str | None = None
    certificate_sha256: str | None = None
    reports: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class Claim:
    """The outcome of ``claim``: ``owned`` when the caller must verify the run now."""

    owned: bool
    state: str
    batch_id: str
    worker: str
    certificate_sha256: str | None = None


@dataclass(frozen=True)
class BatchItem:
    """One run of a batch."""

    run_id: str
    shard: int
    state: str
    verdict: str | None
    exit_code: int | None
    node: str | None
    gpu: str | None
    worker: str | None
    started_at: str | None
    seconds: float | None
    rerun_id: str | None
    certificate_sha256: str | None
    reports: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class BatchInfo:
    """A batch without its items, with its items counted by state and by verdict."""

    id: str
    created_at: str
    policy_sha256: str
    shards: int
    executor: str
    selection: dict[str, object]
    states: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """A batch and its items, in run-id order."""

    info: BatchInfo
    items: tuple[BatchItem, ...]


# -- the tables ---------------------------------------------------------------------------
class BatchTables:
    """Batches, items and claims in a store's database (``RunStore.batches()``)."""

    def __init__(self, engine: Engine,
                 unavailable: Callable[[sa.exc.SQLAlchemyError], StoreError],
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._unavailable = unavailable
        self._clock = clock

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def _insert_new(self, conn: Connection, table: sa.Table, row: dict[str, object]) -> bool:
        """Insert ``row`` unless its key exists; True when this call inserted it."""
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table).values(**row).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table).values(**row).on_conflict_do_nothing()  # type: ignore[assignment]
        first = next(iter(table.primary_key.columns))
        return conn.execute(stmt.returning(first)).first() is not None  # RETURNING: inserted

    # batches
    def create(self, batch_id: str, *, policy_sha256: str, shards: int = 1,
               executor: str = "local", selection: Mapping[str, object] | None = None
               ) -> BatchInfo:
        """The batch ``batch_id``, made now unless another shard made it first."""
        validate_batch_id(batch_id)
        row = {"id": batch_id, "created_at": datetime.now(UTC).isoformat(),
               "policy_sha256": policy_sha256, "shards": int(shards),
               "executor": executor[:64],
               "selection": json.dumps(dict(selection or {}), sort_keys=True, default=str)}
        with self._begin() as conn:
            self._insert_new(conn, t_batches, row)
            found = conn.execute(sa.select(t_batches).where(t_batches.c.id == batch_id)).one()
        if found.policy_sha256 != policy_sha256:
            raise InputError(f"batch {batch_id} verifies under policy "
                             f"{found.policy_sha256[:12]}…, not {policy_sha256[:12]}…",
                             hint="every shard of a batch must use the same auditor.toml; "
                             "start a new batch for another policy")
        if found.shards != int(shards):
            raise InputError(f"batch {batch_id} has {found.shards} shard(s), not {shards}",
                             hint="every shard of a batch must pass the same --shard I/N")
        return _info(found, {}, {})

    def add_items(self, batch_id: str, items: Iterable[tuple[str, int]]) -> None:
        """Add runs (with their shard) as ``pending``; runs already in the batch stay."""
        with self._begin() as conn:
            for run_id, shard in items:
                self._insert_new(conn, t_items, {
                    "batch_id": batch_id, "run_id": run_id, "shard": int(shard),
                    "state": "pending", "reports": "[]", "message": ""})

    def needs_verification(self, run_ids: Sequence[str], policy_sha256: str,
                           locks: Mapping[str, str]) -> list[str]:
        """The ids (order kept) without a ``done`` claim under this policy and lock."""
        done: set[tuple[str, str]] = set()
        with self._begin() as conn:
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start:start + 500])
                rows = conn.execute(sa.select(t_claims.c.run_id, t_claims.c.lock_sha256).where(
                    t_claims.c.run_id.in_(chunk), t_claims.c.policy_sha256 == policy_sha256,
                    t_claims.c.state == "done"))
                done.update((r.run_id, r.lock_sha256) for r in rows)
        return [i for i in run_ids if (i, locks.get(i, "none")) not in done]

    def claim(self, batch_id: str, run_id: str, policy_sha256: str, lock_sha256: str, *,
              worker: str, lease_s: float) -> Claim:
        """Try to become the one verifier of ``run_id`` under this policy and lock."""
        now = self._clock()
        key = ((t_claims.c.run_id == run_id) & (t_claims.c.policy_sha256 == policy_sha256)
               & (t_claims.c.lock_sha256 == lock_sha256))
        with self._begin() as conn:
            won = self._insert_new(conn, t_claims, {
                "run_id": run_id, "policy_sha256": policy_sha256, "lock_sha256": lock_sha256,
                "batch_id": batch_id, "worker": worker, "state": "claimed",
                "lease_until": now + lease_s})
            if not won:  # taken over only when nothing is certified and no one holds it
                won = conn.execute(t_claims.update().where(
                    key, ((t_claims.c.state == "failed") & (t_claims.c.batch_id != batch_id))
                    | ((t_claims.c.state == "claimed") & (t_claims.c.lease_until < now))
                    | ((t_claims.c.state == "claimed") & (t_claims.c.batch_id == batch_id)
                       & (t_claims.c.worker == worker))  # the same worker, retried
                ).values(batch_id=batch_id, worker=worker, state="claimed",
                         lease_until=now + lease_s, certificate_sha256=None)).rowcount == 1
            row = conn.execute(sa.select(t_claims).where(key)).one()
            if won:
                conn.execute(t_items.update().where(
                    t_items.c.batch_id == batch_id, t_items.c.run_id == run_id
                ).values(state="running", worker=worker,
                         started_at=datetime.now(UTC).isoformat()))
        return Claim(won, str(row.state), str(row.batch_id), str(row.worker),
                     row.certificate_sha256)

    def finish(self, batch_id: str, run_id: str, policy_sha256: str, lock_sha256: str,
               result: ItemResult, *, worker: str) -> None:
        """Record the item's result; close the claim this worker holds (a verdict: ``done``,
        never verified again under this policy and lock; otherwise ``failed``)."""
        certified = result.exit_code in (0, 1) and result.certificate_sha256 is not None
        reports = [str(r)[:MAX_TEXT] for r in result.reports[:MAX_REPORT_LINKS]]
        with self._begin() as conn:
            conn.execute(t_claims.update().where(
                t_claims.c.run_id == run_id, t_claims.c.policy_sha256 == policy_sha256,
                t_claims.c.lock_sha256 == lock_sha256, t_claims.c.batch_id == batch_id,
                t_claims.c.worker == worker, t_claims.c.state == "claimed",
            ).values(state="done" if certified else "failed",
                     certificate_sha256=result.certificate_sha256))
            values = {"state": "done" if result.exit_code in (0, 1) else "failed",
                      "verdict": result.verdict, "exit_code": result.exit_code,
                      "node": result.node, "gpu": result.gpu, "seconds": result.seconds,
                      "rerun_id": result.rerun_id,
                      "certificate_sha256": result.certificate_sha256,
                      "reports": json.dumps(reports), "message": result.message[:MAX_TEXT],
                      "worker": worker}
            updated = conn.execute(t_items.update().where(
                t_items.c.batch_id == batch_id, t_items.c.run_id == run_id).values(**values))
            if updated.rowcount == 0:  # a run verified into a batch without add_items
                conn.execute(t_items.insert().values(batch_id=batch_id, run_id=run_id,
                                                     shard=1, **values))

    def skip(self, batch_id: str, run_id: str, reason: str, *,
             certificate_sha256: str | None = None, verdict: str | None = None) -> None:
        """Mark an item ``skipped`` (verified already, or held by another worker)."""
        with self._begin() as conn:
            conn.execute(t_items.update().where(
                t_items.c.batch_id == batch_id, t_items.c.run_id == run_id,
                t_items.c.state.in_(("pending", "skipped")),
            ).values(state="skipped", message=reason[:MAX_TEXT], verdict=verdict,
                     certificate_sha256=certificate_sha256))

    def refuse(self, batch_id: str, run_id: str, reason: str) -> bool:
        """Mark an item no worker ever took ``failed`` (could-not-verify, exit 3): refused
        before it started (no node has its GPU, the engine never ran its job). An item a
        worker took keeps what that worker recorded. True when the item was changed."""
        with self._begin() as conn:
            changed = conn.execute(t_items.update().where(
                t_items.c.batch_id == batch_id, t_items.c.run_id == run_id,
                t_items.c.state == "pending",
            ).values(state="failed", verdict="could-not-verify", exit_code=3,
                     message=reason[:MAX_TEXT]))
        return bool(changed.rowcount)

    def get(self, batch_id: str) -> Batch:
        """The batch and its items; ``InputError`` (exit 2) when there is none."""
        validate_batch_id(batch_id)
        with self._begin() as conn:
            found = conn.execute(sa.select(t_batches).where(t_batches.c.id == batch_id)
                                 ).one_or_none()
            if found is None:
                raise InputError(f"no batch {batch_id!r} in this store",
                                 hint="`audit batch list` shows the batches")
            rows = conn.execute(sa.select(t_items).where(t_items.c.batch_id == batch_id)
                                .order_by(t_items.c.run_id)).all()
        items = tuple(_item(r) for r in rows)
        states, verdicts = _counts(items)
        return Batch(_info(found, states, verdicts), items)

    def list(self, limit: int = 50) -> list[BatchInfo]:
        """The newest batches first, with their items counted."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(t_batches).order_by(
                t_batches.c.created_at.desc(), t_batches.c.id.desc()).limit(limit)).all()
            counted = conn.execute(sa.select(
                t_items.c.batch_id, t_items.c.state, t_items.c.verdict, sa.func.count()
            ).where(t_items.c.batch_id.in_([r.id for r in rows])).group_by(
                t_items.c.batch_id, t_items.c.state, t_items.c.verdict)).all()
        states: dict[str, dict[str, int]] = {}
        verdicts: dict[str, dict[str, int]] = {}
        for batch_id, state, verdict, count in counted:
            per = states.setdefault(batch_id, {})
            per[state] = per.get(state, 0) + int(count)
            if verdict:
                vper = verdicts.setdefault(batch_id, {})
                vper[verdict] = vper.get(verdict, 0) + int(count)
        return [_info(r, states.get(r.id, {}), verdicts.get(r.id, {})) for r in rows]


def _info(row: sa.Row[tuple[object, ...]], states: dict[str, int],
          verdicts: dict[str, int]) -> BatchInfo:
    try:
        selection = json.loads(str(row.selection))
    except ValueError:
        selection = {}
    return BatchInfo(str(row.id), str(row.created_at), str(row.policy_sha256),
                     int(row.shards), str(row.executor),
                     selection if isinstance(selection, dict) else {}, states, verdicts)


def _item(row: sa.Row[tuple[object, ...]]) -> BatchItem:
    try:
        reports = json.loads(str(row.reports))
    except ValueError:
        reports = []
    return BatchItem(
        run_id=str(row.run_id), shard=int(row.shard), state=str(row.state),
        verdict=row.verdict, exit_code=row.exit_code, node=row.node, gpu=row.gpu,
        worker=row.worker, started_at=row.started_at, seconds=row.seconds,
        rerun_id=row.rerun_id, certificate_sha256=row.certificate_sha256,
        reports=tuple(str(r) for r in reports if isinstance(r, str)) if isinstance(
            reports, list) else (),
        message=str(row.message or ""))


def _counts(items: Sequence[BatchItem]) -> tuple[dict[str, int], dict[str, int]]:
    states: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    for item in items:
        states[item.state] = states.get(item.state, 0) + 1
        if item.verdict:
            verdicts[item.verdict] = verdicts.get(item.verdict, 0) + 1
    return states, verdicts
