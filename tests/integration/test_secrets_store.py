"""T34/T35 end to end: planted secrets never reach the store, its objects or its logs."""

from __future__ import annotations

import base64
import binascii
import json
import sys
import urllib.parse
from pathlib import Path

from auditor.store import open_store
from tests.conftest import audit, git

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GH_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"
DB_PASS = "s3cr3t-Pa55word"
SVC = "Zq8Xv2Lm9Tk4Rp7Wc1Ny6Hb3Gd5Fs0Aj8Ke2Lu4"
API_KEY = "sk-live-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
REMOTE_TOKEN = "glpat-Xy7Zq2Wv9Rt5Lm3Np8Kd"
INDEX_PASS = "idxPa55-w0rd-9931"
PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
       "-----END PRIVATE KEY-----")

PLANTED = [AWS_SECRET, GH_TOKEN, HF, DB_PASS, SVC, API_KEY, REMOTE_TOKEN, INDEX_PASS,
           "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"]


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), urllib.parse.quote(value, safe="").encode(),
            binascii.hexlify(raw)]


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_planted_secrets_reach_nowhere(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    script = ("import os, sys, json\n"
              "print('token is', os.environ['GITHUB_TOKEN'])\n"
              "print(os.environ['AWS_SECRET_ACCESS_KEY'], file=sys.stderr)\n"
              "print(json.dumps({'step': 0, 'loss': 0.5}))\n"
              "open('out.txt', 'w').write('done')\n")
    repo = make_repo({"train.py": script,
                      "requirements.txt": f"--index-url https://user:{INDEX_PASS}@pypi.internal/simple\n"
                                          "six==1.16.0\n"})
    git(repo, "remote", "add", "origin", f"https://oauth2:{REMOTE_TOKEN}@gitlab.example/x/y.git")
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "GITHUB_TOKEN": GH_TOKEN, "HF_TOKEN": HF,
           "WANDB_API_KEY": SVC[::-1], "MLFLOW_TRACKING_PASSWORD": DB_PASS,
           "DATABASE_URL": f"postgres://u:{DB_PASS}@db.internal/x", "COOKIE": f"session={SVC}",
           "AUTHORIZATION": f"Bearer {GH_TOKEN}", "MY_SVC_CRED": SVC, "PRIVATE_PEM": PEM,
           "OMP_NUM_THREADS": "1"}
    res = audit("record", "--", sys.executable, "train.py", "--api-key", API_KEY, "--lr", "0.1",
                cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    hits = [(str(path), value[:6]) for path, data in all_bytes(tmp_path / "store")
            for value in [*PLANTED, SVC[::-1]] for form in forms(value) if form in data]
    assert hits == []
    store = open_store(str(tmp_path / "store"))
    rec = store.get_record(store.list_runs()[0].id)
    kept = rec.environment.env_vars
    assert kept["GITHUB_TOKEN"] == "[REDACTED]" and kept["MY_SVC_CRED"] == "[REDACTED]"
    assert kept["OMP_NUM_THREADS"] == "1"  # allowlisted and harmless: kept verbatim
    assert "[REDACTED]" in rec.command.argv and rec.params["lr"] == 0.1
    assert rec.code and rec.code.remote and REMOTE_TOKEN not in rec.code.remote
    stdout = store.blobs.read_bytes(rec.artifact("logs/stdout.txt").sha256).decode()  # type: ignore[union-attr]
    assert "[REDACTED]" in stdout and json.loads(stdout.splitlines()[1])["loss"] == 0.5
    # and nothing on our own stdout/stderr except what the child printed itself
    assert REMOTE_TOKEN not in res.stdout + res.stderr
