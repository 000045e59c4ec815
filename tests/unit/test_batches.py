"""Shards and claims (``store/batches.py``): every run in exactly one shard, stable as runs
are added; bad shard specs are one line and exit 2; a claim is won once, a certified run
is never claimed again, a failed or abandoned one is taken over by one worker."""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.core.errors import InputError
from auditor.store import open_store
from auditor.store.batches import (
    BatchTables,
    ItemResult,
    Shard,
    parse_shard,
    partition,
    shard_of,
    validate_batch_id,
)
from tests.conftest import audit

RUN_IDS = st.lists(st.text(alphabet=string.digits + "abcdefghjkmnpqrstvwxyz", min_size=26,
                           max_size=26), unique=True, max_size=60)
P, L = "p" * 64, "l" * 64


@given(RUN_IDS, st.integers(min_value=1, max_value=40))
def test_every_run_is_in_exactly_one_shard(ids: list[str], count: int) -> None:
    shards = [partition(ids, Shard(i, count)) for i in range(1, count + 1)]
    flat = [run for shard in shards for run in shard]
    assert sorted(flat) == sorted(ids)  # none lost, none twice
    for index, shard in enumerate(shards, start=1):
        assert all(shard_of(run, count) == index for run in shard)


@given(RUN_IDS, RUN_IDS, st.integers(min_value=1, max_value=16))
def test_a_run_keeps_its_shard_as_runs_are_added(old: list[str], new: list[str],
                                                 count: int) -> None:
    before = {run: i for i in range(1, count + 1) for run in partition(old, Shard(i, count))}
    grown = old + [r for r in new if r not in before]
    after = {run: i for i in range(1, count + 1) for run in partition(grown, Shard(i, count))}
    assert all(after[run] == shard for run, shard in before.items())


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=999), st.integers(min_value=0, max_value=999))
def test_shard_spec_parses_exactly_when_index_is_within_count(index: int, count: int) -> None:
    if 1 <= index <= count:
        assert parse_shard(f"{index}/{count}") == Shard(index, count)
    else:
        with pytest.raises(InputError):
            parse_shard(f"{index}/{count}")


def test_shards_are_spread_over_many_runs() -> None:
    ids = [f"{i:026d}" for i in range(4000)]
    sizes = [len(partition(ids, Shard(i, 4))) for i in range(1, 5)]
    assert min(sizes) > 900, sizes  # a stable hash, not a skewed one


@pytest.mark.parametrize("spec", ["3/2", "a/b", "0/0", "1/0", "0/3", "-1/2", "1/2/3", "", "1",
                                  "1 / 2x", "９/１０"])
def test_bad_shard_specs(spec: str) -> None:
    with pytest.raises(InputError, match="invalid shard") as err:
        parse_shard(spec)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("spec", ["3/2", "a/b", "0/0"])
def test_cli_bad_shard_is_one_line_exit_2_before_the_store(spec: str, tmp_path: Path) -> None:
    res = audit("--store", str(tmp_path / "s"), "verify", "--all", "--shard", spec,
                cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: invalid shard") and res.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()  # refused before any store was opened


def test_cli_shard_needs_all_and_a_good_batch_id(tmp_path: Path) -> None:
    res = audit("--store", str(tmp_path / "s"), "verify", "01abcdef", "--shard", "1/2",
                cwd=tmp_path)
    assert res.returncode == 2 and "--shard splits --all" in res.stderr
    res = audit("--store", str(tmp_path / "s"), "verify", "--all", "--batch", "../x",
                cwd=tmp_path)
    assert res.returncode == 2 and "invalid batch id" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("bad", ["", "-x", "a" * 65, "a b", "a/b", "é"])
def test_bad_batch_ids(bad: str) -> None:
    with pytest.raises(InputError):
        validate_batch_id(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tables(store_location: tuple[str, str | None]) -> Iterator[tuple[BatchTables, Clock]]:
    """The batch tables of a fresh store, SQLite and PostgreSQL, on a clock we move."""
    store = open_store(store_location[0], blobs=store_location[1])
    clock = Clock()
    yield BatchTables(store.engine, store.unavailable, clock), clock  # type: ignore[attr-defined]
    store.close()


def test_a_claim_is_won_once_and_a_certified_run_never_again(
        tables: tuple[BatchTables, Clock]) -> None:
    t, clock = tables
    t.create("b1", policy_sha256=P)
    t.add_items("b1", [("r1", 1)])
    assert t.claim("b1", "r1", P, L, worker="w1", lease_s=60).owned
    lost = t.claim("b2", "r1", P, L, worker="w2", lease_s=60)
    assert not lost.owned and lost.batch_id == "b1" and lost.worker == "w1"
    t.finish("b1", "r1", P, L, ItemResult("not-reproduced", 1, certificate_sha256="c" * 64),
             worker="w1")
    clock.now += 10**9  # long after any lease: a verdict stays final
    again = t.claim("b3", "r1", P, L, worker="w3", lease_s=60)
    assert not again.owned and again.state == "done" and again.certificate_sha256 == "c" * 64
    assert t.needs_verification(["r1", "r2"], P, {"r1": L}) == ["r2"]
    # another policy or another lockfile is another question: claimable
    assert t.claim("b3", "r1", "q" * 64, L, worker="w3", lease_s=60).owned
    assert t.claim("b3", "r1", P, "m" * 64, worker="w3", lease_s=60).owned


def test_could_not_verify_and_an_expired_lease_are_taken_over(
        tables: tuple[BatchTables, Clock]) -> None:
    t, clock = tables
    t.create("b1", policy_sha256=P)
    assert t.claim("b1", "r1", P, L, worker="w1", lease_s=60).owned
    t.finish("b1", "r1", P, L, ItemResult("could-not-verify", 3, message="no engine"),
             worker="w1")
    assert t.needs_verification(["r1"], P, {"r1": L}) == ["r1"]  # nothing certified
    assert not t.claim("b1", "r1", P, L, worker="w9", lease_s=60).owned  # one try a batch
    assert t.claim("b2", "r1", P, L, worker="w2", lease_s=60).owned  # taken over
    assert not t.claim("b3", "r1", P, L, worker="w3", lease_s=60).owned  # w2 holds it
    assert t.claim("b2", "r1", P, L, worker="w2", lease_s=60).owned  # w2's retry
    clock.now += 61  # w2 was killed: its lease ran out
    assert t.claim("b3", "r1", P, L, worker="w3", lease_s=60).owned
    # the killed worker's late finish does not close w3's claim
    t.finish("b2", "r1", P, L, ItemResult("reproduced-bitwise", 0, certificate_sha256="d" * 64),
             worker="w2")
    assert not t.claim("b4", "r1", P, L, worker="w4", lease_s=60).owned
    assert t.needs_verification(["r1"], P, {"r1": L}) == ["r1"]


def test_batch_items_record_where_and_how_long(tables: tuple[BatchTables, Clock]) -> None:
    t, _ = tables
    t.create("ci-7", policy_sha256=P, shards=2, executor="github",
             selection={"since": "7d"})
    t.create("ci-7", policy_sha256=P, shards=2)  # the other shard: the same batch
    t.add_items("ci-7", [("r1", 1), ("r2", 2), ("r3", 2)])
    t.add_items("ci-7", [("r1", 1)])  # idempotent
    assert t.claim("ci-7", "r1", P, L, worker="w1", lease_s=60).owned
    t.finish("ci-7", "r1", P, L, ItemResult(
        "reproduced-bitwise", 0, node="node-a", gpu="NVIDIA A100-SXM4-80GB", seconds=12.5,
        rerun_id="r" * 26, certificate_sha256="c" * 64, reports=("audit-reports/r1.html",)),
        worker="w1")
    t.skip("ci-7", "r2", "has certificate cccc… under this policy")
    batch = t.get("ci-7")
    assert batch.info.executor == "github" and batch.info.selection == {"since": "7d"}
    assert batch.info.states == {"done": 1, "skipped": 1, "pending": 1}
    first = batch.items[0]
    assert (first.run_id, first.state, first.verdict, first.node, first.gpu, first.seconds,
            first.reports) == ("r1", "done", "reproduced-bitwise", "node-a",
                               "NVIDIA A100-SXM4-80GB", 12.5, ("audit-reports/r1.html",))
    assert [b.id for b in t.list()] == ["ci-7"]


def test_an_item_refused_before_any_worker_took_it_fails_and_a_taken_one_is_kept(
        tables: tuple[BatchTables, Clock]) -> None:
    t, _ = tables
    t.create("b1", policy_sha256=P)
    t.add_items("b1", [("r1", 1), ("r2", 1)])
    assert t.claim("b1", "r2", P, L, worker="w1", lease_s=60).owned
    t.finish("b1", "r2", P, L, ItemResult("reproduced-bitwise", 0,
                                          certificate_sha256="c" * 64), worker="w1")
    assert t.refuse("b1", "r1", "no node offers GPU 'Tesla T4'")
    assert not t.refuse("b1", "r2", "late")  # what its worker recorded stays
    items = {i.run_id: i for i in t.get("b1").items}
    assert (items["r1"].state, items["r1"].verdict, items["r1"].exit_code,
            items["r1"].message) == ("failed", "could-not-verify", 3,
                                     "no node offers GPU 'Tesla T4'")
    assert (items["r2"].state, items["r2"].verdict) == ("done", "reproduced-bitwise")
    # nothing was claimed for r1: a later batch verifies it
    assert t.needs_verification(["r1"], P, {"r1": L}) == ["r1"]


def test_a_shard_under_another_policy_or_count_is_refused(
        tables: tuple[BatchTables, Clock]) -> None:
    t, _ = tables
    t.create("ci-8", policy_sha256=P, shards=2)
    with pytest.raises(InputError, match="verifies under policy"):
        t.create("ci-8", policy_sha256="q" * 64, shards=2)
    with pytest.raises(InputError, match="has 2 shard"):
        t.create("ci-8", policy_sha256=P, shards=3)
    with pytest.raises(InputError, match="no batch"):
        t.get("nope")
