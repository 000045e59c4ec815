"""Records signed when written (issue 8, finding 5): with ``AUDITOR_SIGN_KEY`` set, every
record write is signed; ``audit show`` and ``audit list`` say when a record is unsigned or
its signature is for another version; ``audit fsck --key`` verifies the signatures."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from auditor.core.keys import generate_keypair
from auditor.core.schema import RunRecord, record_bytes, record_sha256
from tests.conftest import audit

SCRIPT = "import json\nprint(json.dumps({'step': 0, 'loss': 0.5}))\n"


def test_records_are_signed_and_unsigned_ones_are_named(make_repo: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    repo = make_repo({"t.py": SCRIPT, ".gitignore": ".auditor/\n"})
    key, pub = generate_keypair(tmp_path / "keys")
    _, other = generate_keypair(tmp_path / "keys", "other")
    store = tmp_path / "store"
    plain = {"AUDITOR_STORE": str(store)}
    signing = {**plain, "AUDITOR_SIGN_KEY": str(key)}
    ids = []
    for env in (plain, signing):
        res = audit("--json", "record", "--", sys.executable, "t.py", cwd=repo, env=env)
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout.strip().splitlines()[-1])["id"])
    unsigned, signed = ids
    assert "record signature: none" in audit("show", unsigned, cwd=repo, env=plain).stdout
    shown = audit("show", signed, cwd=repo, env=plain).stdout
    assert "record signature: signed, keyid" in shown
    listed = {r["id"]: r for r in json.loads(audit("--json", "list", cwd=repo, env=plain).stdout)}
    assert listed[signed]["signed"] is True and listed[unsigned]["signed"] is False
    assert audit("fsck", "--key", str(pub), cwd=repo, env=plain).returncode == 0
    res = audit("fsck", "--key", str(other), cwd=repo, env=plain)
    assert res.returncode == 3 and f"run {signed}: record signature does not verify" in res.stdout
    # a rewrite that keeps the row consistent, as in finding 5, loses the signature
    with sqlite3.connect(store / "store.db") as conn:
        text = conn.execute("select record from runs where id=?", (signed,)).fetchone()[0]
        record = RunRecord.model_validate_json(text)
        forged = record.model_copy(update={"params": {"lr": 10.0}})
        conn.execute("update runs set record=?, record_sha256=? where id=?",
                     (record_bytes(forged).decode(), record_sha256(forged), signed))
    shown = audit("show", signed, cwd=repo, env=plain).stdout
    assert "record signature: for another version of this record" in shown
    res = audit("fsck", "--key", str(pub), cwd=repo, env=plain)
    assert res.returncode == 3 and "changed after it was signed" in res.stdout
