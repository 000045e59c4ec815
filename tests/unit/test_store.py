"""The store: records, prefixes, metrics fidelity, integrity, schema checks."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from auditor import store as store_pkg
from auditor.core.errors import (
    AmbiguousRunId,
    CorruptRecord,
    IntegrityError,
    InvalidRunId,
    RunNotFound,
    StoreError,
)
from auditor.core.schema import (
    SCHEMA_VERSION,
    RunRecord,
    is_run_id_prefix,
    new_run_id,
    record_sha256,
)
from auditor.store import MetricPoint, SqlStore, open_store, validate_run_ref
from tests.factories import make_record


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """Every store test runs against SQLite and PostgreSQL."""
    return any_store


def test_schema_version_is_pinned() -> None:
    # Changing the record shape must bump SCHEMA_VERSION and add a migration, unless the
    # field is optional and left out of the bytes while empty: `checkpoints` (issue 19) is,
    # so a record without checkpoints keeps its bytes and digest, and an older auditor
    # refuses (extra="forbid") a record that has them instead of misreading it.
    assert SCHEMA_VERSION == 1
    fields = sorted(RunRecord.model_fields)
    assert fields == [
        "artifacts",
        "checkpoints",
        "code",
        "command",
        "data",
        "determinism",
        "environment",
        "identity",
        "metrics",
        "not_captured",
        "params",
        "schema_version",
        "seeds",
    ]


def test_run_ids_sort_by_time_and_are_path_safe() -> None:
    a, b = new_run_id(1_000), new_run_id(2_000)
    assert a < b and len(a) == 26 and is_run_id_prefix(a)
    assert all((c.isalnum() and c.islower()) or c.isdigit() for c in a)


def test_put_get_roundtrip(store: SqlStore) -> None:
    rec = make_record()
    store.put_record(rec)
    assert store.get_record(rec.identity.id) == rec


def test_prefix_resolution(store: SqlStore) -> None:
    a, b = make_record(id=new_run_id(10**12)), make_record(id=new_run_id(10**12))
    store.put_record(a)
    store.put_record(b)
    assert store.resolve(a.identity.id) == a.identity.id
    assert (
        store.resolve(a.identity.id[:20]) == a.identity.id
        or a.identity.id[:20] == b.identity.id[:20]
    )
    with pytest.raises(AmbiguousRunId):
        store.resolve(a.identity.id[:8])
    with pytest.raises(RunNotFound):
        store.resolve("zzzzzzzz")


TRAVERSAL = [
    "../x",
    "..\\x",
    "/etc/passwd",
    "%2e%2e%2f",
    "a/../../b",
    ".",
    "..",
    "",
    "abc\0def",
    "a" * 10_000,
    "‥",
    "．．/",
    "abc#def",
    "abc?def",
    "abc%def",
    "abc:def",
    "CON",
    "NUL",
    "ABCDEFGH",
    "abcde",
]


@pytest.mark.parametrize("bad", TRAVERSAL)
def test_run_id_traversal_rejected(bad: str) -> None:
    with pytest.raises(InvalidRunId):
        validate_run_ref(bad)


@given(st.text(max_size=40))
def test_validator_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidRunId):
        validate_run_ref(text)


SPECIAL = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1.7976931348623157e308,
    -0.0,
    5e-324,
    2.2250738585072014e-308 / 3,
    0.1,
]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_metric_values_roundtrip_bitwise(store: SqlStore) -> None:
    rec = make_record()
    store.put_record(rec)
    store.add_metrics(rec.identity.id, [MetricPoint("m", i, v, 1.0) for i, v in enumerate(SPECIAL)])
    back = [p.value for p in store.iter_metrics(rec.identity.id)]
    assert [_bits(v) for v in back] == [_bits(v) for v in SPECIAL]
    assert math.isinf(back[1]) and back[3] == 1.7976931348623157e308  # inf never clamped


def test_nan_never_satisfies_comparisons_in_queries(store: SqlStore) -> None:
    rec = make_record()
    store.put_record(rec)
    store.add_metrics(rec.identity.id, [MetricPoint("m", 0, float("nan"), 0.0)])
    with store.engine.connect() as conn:
        for op in ("<", "<=", "=", ">", ">="):
            assert (
                conn.exec_driver_sql(f"select count(*) from metrics where value {op} 0").scalar()
                == 0
            )


def test_record_with_nan_final_metric_roundtrips(store: SqlStore) -> None:
    rec = make_record()
    rec = rec.model_copy(
        update={
            "metrics": rec.metrics.model_copy(
                update={"final": {"loss": float("nan"), "best": float("inf")}}
            )
        }
    )
    store.put_record(rec)
    got = store.get_record(rec.identity.id)
    assert math.isnan(got.metrics.final["loss"]) and got.metrics.final["best"] == float("inf")
    assert store.list_runs()[0].final_metrics["best"] == float("inf")


def test_edited_record_is_detected(store: SqlStore) -> None:
    rec = make_record()
    store.put_record(rec)
    with store.engine.begin() as conn:
        text = conn.exec_driver_sql("select record from runs").scalar_one()
        edited = text.replace('"name":"t"', '"name":"T"')
        conn.execute(sa.text("update runs set record=:r"), {"r": edited})
    with pytest.raises(CorruptRecord, match="does not match its sha256"):
        store.get_record(rec.identity.id)


@pytest.mark.parametrize("cut", [1, 10, 57, 200])
def test_truncated_record_is_one_line_error(store: SqlStore, cut: int) -> None:
    rec = make_record()
    store.put_record(rec)
    with store.engine.begin() as conn:
        text = conn.exec_driver_sql("select record from runs").scalar_one()
        conn.execute(sa.text("update runs set record=:r"), {"r": text[:cut]})
    with pytest.raises(CorruptRecord, match=r"invalid JSON at byte \d+"):
        store.get_record(rec.identity.id)


def test_blob_tamper_detected(store: SqlStore, tmp_path: Path) -> None:
    sha, _ = store.blobs.put_bytes(b"weights" * 100)
    path = store.blobs.path_for(sha)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="altered"):
        store.blobs.read_bytes(sha, "outputs/model.bin")


def test_store_newer_than_the_code_is_refused_in_one_line(
    store_location: tuple[str, str | None],
) -> None:
    opened = open_store(store_location[0], blobs=store_location[1])
    with opened.engine.begin() as conn:
        conn.exec_driver_sql("update alembic_version set version_num='9999'")
    opened.close()
    with pytest.raises(StoreError, match="revision 9999, newer than this auditor") as err:
        open_store(store_location[0], blobs=store_location[1])
    assert "\n" not in str(err.value) and "upgrade auditor" in str(err.value)


def test_unknown_legacy_schema_is_refused(tmp_path: Path) -> None:
    opened = open_store(str(tmp_path / "s"))
    with opened.engine.begin() as conn:
        conn.exec_driver_sql("drop table alembic_version")
        conn.exec_driver_sql("update meta set value='0' where key='schema_version'")
    opened.close()
    with pytest.raises(StoreError, match="unknown schema"):
        open_store(str(tmp_path / "s"))


def test_network_filesystem_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_pkg, "filesystem_type", lambda _p: "nfs4")
    with pytest.raises(StoreError, match="nfs4 filesystem"):
        open_store(str(tmp_path / "s"))


def test_missing_store_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        open_store(str(tmp_path / "nothing"), create=False)
    assert not (tmp_path / "nothing" / "store.db").exists()


def test_list_newest_first(store: SqlStore) -> None:
    ids = [new_run_id(10**12 + i * 10**6) for i in range(3)]
    for i in ids:
        store.put_record(make_record(id=i))
    assert [r.id for r in store.list_runs()] == list(reversed(ids))
    assert len(store.list_runs(limit=2)) == 2


def test_record_digest_is_canonical() -> None:
    rec = make_record(id="0" * 26)
    same = RunRecord.model_validate(json.loads(rec.model_dump_json()))
    assert record_sha256(rec) == record_sha256(same)


@given(st.text(max_size=300))
def test_record_parser_fuzz_raises_only_corrupt_record(text: str) -> None:
    # T43: whatever bytes a record row holds, reading it is one of our errors, never a crash.
    from auditor.store.sql import _parse_record

    with pytest.raises(CorruptRecord):
        _parse_record("0" * 26, text, "0" * 64)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=20))
def test_record_parser_fuzz_on_json_shapes(data: object) -> None:
    from auditor.store.sql import _parse_record

    with pytest.raises(CorruptRecord):
        _parse_record("0" * 26, json.dumps(data), "0" * 64)


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "outputs/../../x", "a\\b", "", ".",
                                  "c:/x", "outputs//x", "x\0y"])
def test_record_naming_an_escaping_artifact_is_refused(store: SqlStore, name: str) -> None:
    # T32: a record whose artifact name escapes is refused when read, whoever wrote it.
    rec = make_record()
    store.put_record(rec)
    with store.engine.begin() as conn:
        text = conn.exec_driver_sql("select record from runs").scalar_one()
        data = json.loads(text)
        data["artifacts"] = [{"name": name, "sha256": "0" * 64, "size": 1, "kind": "output"}]
        conn.execute(sa.text("update runs set record=:r"), {"r": json.dumps(data)})
    with pytest.raises(CorruptRecord, match="artifacts"):
        store.get_record(rec.identity.id)
