"""The certificate log (T13): hash chain, head, signed head, concurrent appends."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auditor.certify.certificate import envelope_bytes, sign_payload
from auditor.certify.log import (
    GENESIS,
    HEAD_NAME,
    LOG_NAME,
    SIGNED_HEAD_NAME,
    append,
    read_entries,
    verify_log,
)
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import generate_keypair, load_private_key

REPO = Path(__file__).resolve().parents[2]


def _cert(n: int) -> str:
    return hashlib.sha256(f"certificate {n}".encode()).hexdigest()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def log(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A signed log of five entries."""
    for n in range(1, 6):
        append(tmp_path, _cert(n), f"run-{n}", key)
    return tmp_path


def _lines(log_dir: Path) -> list[bytes]:
    return (log_dir / LOG_NAME).read_bytes().splitlines(keepends=True)


def _rewrite(log_dir: Path, lines: list[bytes]) -> None:
    (log_dir / LOG_NAME).write_bytes(b"".join(lines))


def test_empty_directory_has_no_entries(tmp_path: Path) -> None:
    assert verify_log(tmp_path) == 0


def test_missing_directory_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        verify_log(tmp_path / "absent")


def test_appends_form_a_chain_from_genesis(log: Path, key: Ed25519PrivateKey) -> None:
    assert verify_log(log) == 5
    assert verify_log(log, [key.public_key()]) == 5
    entries = read_entries(log)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_sha256 == GENESIS
    lines = _lines(log)
    for entry, previous in zip(entries[1:], lines, strict=False):
        assert entry.prev_sha256 == hashlib.sha256(previous.rstrip(b"\n")).hexdigest()
    assert [e.run_id for e in entries] == [f"run-{n}" for n in range(1, 6)]


def test_lines_are_canonical_json(log: Path) -> None:
    line = _lines(log)[0].rstrip(b"\n")
    data = json.loads(line)
    assert set(data) == {"seq", "prev_sha256", "cert_sha256", "run_id", "time"}
    assert line == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert data["time"].endswith("Z")


def test_head_records_the_last_line(log: Path) -> None:
    head = json.loads((log / HEAD_NAME).read_bytes())
    assert head == {
        "seq": 5,
        "line_sha256": hashlib.sha256(_lines(log)[-1].rstrip(b"\n")).hexdigest(),
        "size": (log / LOG_NAME).stat().st_size,
    }
    signed = json.loads((log / SIGNED_HEAD_NAME).read_bytes())
    assert signed["payloadType"] == "application/vnd.auditor.loghead+json"
    assert json.loads(base64.b64decode(signed["payload"])) == head


# -- T13: tampering is found at the first broken link --------------------------------


@pytest.mark.parametrize("deleted", [1, 2, 4])
def test_deleted_line_is_detected_at_its_place(log: Path, deleted: int) -> None:
    lines = _lines(log)
    del lines[deleted - 1]
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match=f"line {deleted}:") as info:
        verify_log(log)
    assert info.value.exit_code == 3


def test_reordered_lines_are_detected_at_the_first_moved_line(log: Path) -> None:
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match="line 2:"):
        verify_log(log)


def test_edited_line_breaks_the_next_link(log: Path) -> None:
    lines = _lines(log)
    lines[1] = lines[1].replace(b'"run-2"', b'"run-X"')
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match="line 3: prev_sha256 does not match line 2"):
        verify_log(log)


def test_edited_last_line_is_detected_against_the_head(log: Path) -> None:
    lines = _lines(log)
    lines[-1] = lines[-1].replace(b'"run-5"', b'"run-X"')
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match="line 5: does not match the head"):
        verify_log(log)


def test_non_canonical_edit_is_detected_on_the_line_itself(log: Path) -> None:
    lines = _lines(log)
    lines[-1] = lines[-1].replace(b'"seq":5', b'"seq": 5')
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match="line 5: not in canonical form"):
        verify_log(log)


def test_garbage_line_is_detected(log: Path) -> None:
    lines = _lines(log)
    lines[2] = b"{not json\n"
    _rewrite(log, lines)
    with pytest.raises(IntegrityError, match="line 3: not a log entry"):
        verify_log(log)


def test_wrong_seq_in_a_consistent_chain_is_detected(tmp_path: Path) -> None:
    prev, lines = GENESIS, []
    for seq in (1, 3):  # a forger who recomputes the hashes but skips a number
        entry = {
            "seq": seq,
            "prev_sha256": prev,
            "cert_sha256": _cert(seq),
            "run_id": "r",
            "time": "t",
        }
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        lines.append(line + b"\n")
        prev = hashlib.sha256(line).hexdigest()
    _rewrite(tmp_path, lines)
    with pytest.raises(IntegrityError, match="line 2: seq is 3"):
        verify_log(tmp_path)


def test_truncated_tail_is_detected_against_the_head(log: Path) -> None:
    _rewrite(log, _lines(log)[:3])
    with pytest.raises(IntegrityError, match=r"line 4: missing.*truncated"):
        verify_log(log)


def test_line_cut_in_half_is_detected(log: Path) -> None:
    data = (log / LOG_NAME).read_bytes()
    (log / LOG_NAME).write_bytes(data[:-20])
    with pytest.raises(IntegrityError, match="line 5: incomplete"):
        verify_log(log)


def test_truncation_with_a_forged_unsigned_head_is_caught_by_the_signed_head(
    log: Path, key: Ed25519PrivateKey
) -> None:
    lines = _lines(log)[:3]
    _rewrite(log, lines)
    forged = {
        "seq": 3,
        "line_sha256": hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest(),
        "size": len(b"".join(lines)),
    }
    (log / HEAD_NAME).write_text(json.dumps(forged, sort_keys=True, separators=(",", ":")))
    with pytest.raises(IntegrityError, match="covers 5 lines but the log has 3"):
        verify_log(log)  # the signed head is checked against the lines even without a key
    with pytest.raises(IntegrityError, match="covers 5 lines but the log has 3"):
        verify_log(log, [key.public_key()])


def test_tampered_head_signature_is_detected(log: Path, key: Ed25519PrivateKey) -> None:
    signed = json.loads((log / SIGNED_HEAD_NAME).read_bytes())
    sig = bytearray(base64.b64decode(signed["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    signed["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (log / SIGNED_HEAD_NAME).write_text(json.dumps(signed))
    assert verify_log(log) == 5
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_log(log, [key.public_key()])


def test_head_signed_by_another_key_is_detected(log: Path) -> None:
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_log(log, [Ed25519PrivateKey.generate().public_key()])


def test_garbled_signed_head_is_integrity_error(log: Path, key: Ed25519PrivateKey) -> None:
    (log / SIGNED_HEAD_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(IntegrityError, match="not a DSSE envelope"):
        verify_log(log, [key.public_key()])


def test_missing_signed_head_is_detected_when_keys_are_trusted(
    log: Path, key: Ed25519PrivateKey
) -> None:
    (log / SIGNED_HEAD_NAME).unlink()
    assert verify_log(log) == 5
    with pytest.raises(IntegrityError, match="not signed"):
        verify_log(log, [key.public_key()])


def test_missing_head_is_detected(log: Path) -> None:
    (log / HEAD_NAME).unlink()
    with pytest.raises(IntegrityError, match="missing, but the log has 5 lines"):
        verify_log(log)


def test_line_appended_outside_append_is_detected(log: Path) -> None:
    lines = _lines(log)
    _rewrite(log, [*lines, lines[-1]])
    with pytest.raises(IntegrityError, match="line 6:"):
        verify_log(log)


# -- append guards ------------------------------------------------------------------


def test_append_refuses_to_extend_a_truncated_log(log: Path, key: Ed25519PrivateKey) -> None:
    _rewrite(log, _lines(log)[:3])
    with pytest.raises(IntegrityError, match="refusing to append"):
        append(log, _cert(9), "run-9", key)
    assert len(_lines(log)) == 3


def test_append_refuses_when_the_signed_head_was_altered(log: Path, key: Ed25519PrivateKey) -> None:
    (log / SIGNED_HEAD_NAME).write_bytes(
        (log / SIGNED_HEAD_NAME).read_bytes().replace(b'"sig":"', b'"sig":"AA')
    )
    with pytest.raises(IntegrityError):
        append(log, _cert(9), "run-9", key)


def test_an_unsigned_append_keeps_the_signed_head(log: Path, key: Ed25519PrivateKey) -> None:
    """Issue 16 item 5: an unsigned append used to delete the signed head, after which every
    gate failed and nothing vouched for the lines any more. It stays, covering a prefix."""
    signed = (log / SIGNED_HEAD_NAME).read_bytes()
    append(log, _cert(6), "run-6")
    append(log, _cert(7), "run-7")
    assert (log / SIGNED_HEAD_NAME).read_bytes() == signed
    assert verify_log(log) == 7
    assert verify_log(log, [key.public_key()]) == 7
    append(log, _cert(8), "run-8", key)
    assert verify_log(log, [key.public_key()]) == 8
    assert json.loads(_signed_payload(log))["seq"] == 8


def _signed_payload(log_dir: Path) -> bytes:
    return base64.b64decode(json.loads((log_dir / SIGNED_HEAD_NAME).read_bytes())["payload"])


def _rechain(log_dir: Path, drop: int) -> None:
    """What someone with write access does to hide line ``drop``: delete it, renumber and
    re-link every later line, and rewrite the unsigned head to match."""
    entries = [json.loads(line) for line in _lines(log_dir)]
    del entries[drop - 1]
    prev, out = GENESIS, []
    for seq, entry in enumerate(entries, start=1):
        line = json.dumps({**entry, "seq": seq, "prev_sha256": prev}, sort_keys=True,
                          separators=(",", ":")).encode()
        out.append(line + b"\n")
        prev = hashlib.sha256(line).hexdigest()
    _rewrite(log_dir, out)
    head = {"seq": len(out), "line_sha256": prev, "size": len(b"".join(out))}
    (log_dir / HEAD_NAME).write_text(json.dumps(head, sort_keys=True, separators=(",", ":")))


def test_lines_under_the_signed_head_re_chained_are_caught(
    log: Path, key: Ed25519PrivateKey
) -> None:
    append(log, _cert(6), "run-6")  # an unsigned verify: the signed head covers lines 1-5
    _rechain(log, drop=3)
    for trusted in (None, [key.public_key()]):
        with pytest.raises(IntegrityError, match="not the line the signed head signed"):
            verify_log(log, trusted)
    for signer in (None, key):  # no append, signed or not, extends it
        with pytest.raises(IntegrityError, match="refusing to append"):
            append(log, _cert(9), "run-9", signer)
    assert len(_lines(log)) == 5


def _envelope(key: Ed25519PrivateKey | None, n: int) -> bytes:
    """A certificate-like envelope, signed with ``key`` (unsigned without)."""
    return envelope_bytes(sign_payload(f"statement {n}".encode(),
                                       "application/vnd.in-toto+json", key))


def test_a_removed_signed_head_is_never_signed_over(tmp_path: Path,
                                                     key: Ed25519PrivateKey) -> None:
    """The laundering: the signed head deleted, a line deleted and the log re-chained; the
    next signed append must not bless it. The log holds a certificate signed with the key,
    so it had a signed head: its absence is tampering."""
    blobs = {_cert(n): _envelope(key if n == 1 else None, n) for n in range(1, 5)}
    append(tmp_path, _cert(1), "run-1", key, read_certificate=blobs.__getitem__)
    for n in (2, 3):
        append(tmp_path, _cert(n), f"run-{n}", read_certificate=blobs.__getitem__)
    (tmp_path / SIGNED_HEAD_NAME).unlink()
    _rechain(tmp_path, drop=2)
    with pytest.raises(IntegrityError, match="not signed"):
        verify_log(tmp_path, [key.public_key()])
    with pytest.raises(IntegrityError, match="removed behind auditor's back"):
        append(tmp_path, _cert(4), "run-4", key, read_certificate=blobs.__getitem__)
    assert len(_lines(tmp_path)) == 2
    other = Ed25519PrivateKey.generate()  # a log never signed with a key may start signing
    fresh = tmp_path / "fresh"
    append(fresh, _cert(2), "run-2", read_certificate=blobs.__getitem__)
    append(fresh, _cert(1), "run-1", other, read_certificate=blobs.__getitem__)
    assert verify_log(fresh, [other.public_key()]) == 2


@pytest.mark.parametrize("digest", ["", "abc", "AB" * 32, "g" * 64])
def test_append_refuses_a_malformed_digest(tmp_path: Path, digest: str) -> None:
    with pytest.raises(InputError, match="64 lowercase hex"):
        append(tmp_path, digest, "run-1")


def test_append_refuses_an_empty_run_id(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run id"):
        append(tmp_path, _cert(1), "")


# -- concurrency --------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from auditor.certify.log import append
    from auditor.core.keys import load_private_key

    log_dir, key_path, worker = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    key = load_private_key(key_path)
    for n in range(25):
        run_id = f"{worker}-{n:02d}"
        append(log_dir, hashlib.sha256(run_id.encode()).hexdigest(), run_id, key)
    """
)


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path / "keys")
    log_dir = tmp_path / "log"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(log_dir), str(private_path), f"w{i}"], env=env
        )
        for i in range(4)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    public = load_private_key(private_path).public_key()
    assert verify_log(log_dir, [public]) == 100
    run_ids = [e.run_id for e in read_entries(log_dir)]
    assert sorted(run_ids) == sorted(f"w{i}-{n:02d}" for i in range(4) for n in range(25))
    for i in range(4):  # each writer's appends stay in its own order
        mine = [r for r in run_ids if r.startswith(f"w{i}-")]
        assert mine == sorted(mine)
