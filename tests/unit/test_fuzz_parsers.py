"""Property tests of every parser that reads untrusted bytes (issue 8, acceptance): a
stored record, a lockfile, a certificate envelope, the certificate log, a verification
policy, a gate policy and the run-id validator. For any input each either returns a value
or raises one of our ``AuditorError``s (one line, an exit code): never another exception,
which the CLI would report as an internal error.

The budget is fixed so CI time is bounded and runs are reproducible: derandomized, a set
number of examples per property, no deadline (the machine is shared).
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.certify import log as certlog
from auditor.certify.certificate import (
    ReproductionPredicate,
    Subject,
    canonical_json,
    envelope_bytes,
    make_statement,
    open_envelope,
    seal,
)
from auditor.core.errors import AuditorError, InvalidRunId
from auditor.core.keys import generate_keypair, load_private_key, load_public_key
from auditor.core.lockfile import parse_requirements_lock
from auditor.core.policy import load_policy
from auditor.core.schema import (
    is_run_id_prefix,
    record_bytes,
    record_sha256,
)
from auditor.release.gate import load_gate_policy
from auditor.store import validate_run_ref
from auditor.store.sql import _parse_record
from tests.factories import make_record

BUDGET = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=20)
RECORD = make_record(started_at=datetime(2026, 1, 1, tzinfo=UTC), status="finished",
                     argv=("python", "t.py"))
GOOD_LOCK = ("six==1.17.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
             "idna==3.10 --hash=sha256:" + "b" * 64 + "\n")


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid input cut short, with a byte flipped, or with bytes spliced in."""
    n = len(data)
    cut = st.integers(0, n).map(lambda i: data[:i])
    flip = st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
        lambda p: data[:p[0]] + bytes([data[p[0]] ^ p[1]]) + data[p[0] + 1:])
    splice = st.tuples(st.integers(0, n), st.binary(max_size=16)).map(
        lambda p: data[:p[0]] + p[1] + data[p[0]:])
    return st.one_of(cut, flip, splice)


# -- records ---------------------------------------------------------------------------------
@BUDGET
@given(st.one_of(st.text(max_size=200), mutations(record_bytes(RECORD)).map(
    lambda b: b.decode("utf-8", "replace")), JSON.map(json.dumps)))
def test_stored_record_parser(text: str) -> None:
    with contextlib.suppress(AuditorError):
        _parse_record(RECORD.identity.id, text, record_sha256(RECORD))


# -- lockfiles -------------------------------------------------------------------------------
@BUDGET
@given(st.one_of(st.text(max_size=300), mutations(GOOD_LOCK.encode()).map(
    lambda b: b.decode("utf-8", "replace"))), st.booleans())
def test_requirements_lock_parser(text: str, allow_unhashed: bool) -> None:
    with contextlib.suppress(AuditorError):
        parse_requirements_lock(text, name="requirements.lock", allow_unhashed=allow_unhashed)


# -- certificates ----------------------------------------------------------------------------
def _envelope(key_path: Path) -> bytes:
    predicate = ReproductionPredicate(verdict="reproduced-bitwise", original_run=RECORD.identity.id,
                                      original_record_sha256="0" * 64,
                                      issued_at=datetime(2026, 1, 1, tzinfo=UTC),
                                      auditor_version="0.1.0")
    statement = make_statement([Subject(name="m", digest={"sha256": "a" * 64})], predicate)
    return envelope_bytes(seal(statement, load_private_key(key_path)))


@BUDGET
@given(data=st.data())
def test_certificate_envelope_parser(tmp_path_factory, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path_factory.getbasetemp() / "fuzz-keys"
    if not (keys / "f.pub").exists():
        generate_keypair(keys, "f")
    good = _envelope(keys / "f.key")
    payload = json.loads(good)
    statement = base64.b64decode(payload["payload"])
    blob = data.draw(st.one_of(
        mutations(good), st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
        mutations(statement).map(lambda s: json.dumps(
            {**payload, "payload": base64.b64encode(s).decode()}).encode())))
    trusted = data.draw(st.sampled_from([None, [load_public_key(keys / "f.pub")]]))
    with contextlib.suppress(AuditorError):
        open_envelope(blob, trusted, require_signature=data.draw(st.booleans()))


@BUDGET
@given(st.binary(max_size=300), st.binary(max_size=120))
def test_certificate_log_reader(tmp_path_factory, log: bytes, head: bytes) -> None:  # type: ignore[no-untyped-def]
    where = tmp_path_factory.mktemp("log")
    (where / certlog.LOG_NAME).write_bytes(log)
    (where / certlog.HEAD_NAME).write_bytes(head)
    with contextlib.suppress(AuditorError):
        certlog.verify_log(where)


# -- policies --------------------------------------------------------------------------------
TOML_VALUE = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(-1, 1, allow_nan=False),
                       st.text(max_size=8), st.lists(st.text(max_size=6), max_size=3))
POLICY_KEYS = st.sampled_from(["bitwise", "nan_equal", "compare_logs", "ignore_outputs",
                               "allow_gpu_mismatch", "pass_env", "log_masks", "verify",
                               "metric_tolerance", "unknown"])
GATE_KEYS = st.sampled_from(["min_level", "max_age_days", "require_signature", "latest_only",
                             "require_registered", "min_isolation", "allowed_loosenings",
                             "trusted_keys", "max_rtol", "max_atol", "unknown"])


def _toml(pairs: dict[str, object]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in pairs.items())


@BUDGET
@given(st.one_of(st.dictionaries(POLICY_KEYS, TOML_VALUE, max_size=4).map(_toml),
                 st.text(max_size=120)))
def test_verification_policy_parser(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("policy") / "auditor.toml"
    path.write_text(text, encoding="utf-8", errors="replace")
    with contextlib.suppress(AuditorError):
        load_policy(path)


@BUDGET
@given(st.one_of(st.dictionaries(GATE_KEYS, TOML_VALUE, max_size=4).map(_toml),
                 st.text(max_size=120)))
def test_gate_policy_parser(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("gate") / "gate.toml"
    path.write_text(text, encoding="utf-8", errors="replace")
    with contextlib.suppress(AuditorError):
        load_gate_policy(path)


# -- run ids ---------------------------------------------------------------------------------
@BUDGET
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789abcdefghjkmnpqrstvwxyz",
                                               max_size=30)))
def test_run_id_validator(text: str) -> None:
    try:
        validate_run_ref(text)
    except InvalidRunId as exc:
        assert not is_run_id_prefix(text) and len(str(exc)) < 200
        return
    assert 6 <= len(text) <= 26 and text == text.strip()


def test_canonical_json_refuses_what_it_cannot_write() -> None:
    try:
        canonical_json({"x": float("nan")})
    except ValueError:
        return
    raise AssertionError("NaN must not be written")
