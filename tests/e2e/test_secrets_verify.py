"""T34/T36 through a real verify: a secret the policy passes to the rerun (``pass_env``) is
scrubbed from the rerun's logs and records too; one it does not pass never reaches the
rerun; no planted value, in any encoding, is in the store, the certificate log, the HTML,
JUnit or Markdown (step summary) reports, or what `audit verify` prints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from auditor.store import open_store
from tests.conftest import audit
from tests.integration.test_secrets_store import GH_TOKEN, HF, all_bytes, forms

pytestmark = [pytest.mark.slow]
SCRIPT = """\
import json, os, sys
tok = os.environ.get("HF_TOKEN", "")
print(f"hub login with token={tok}")
print(f"machine hub.internal login bot password {tok}", file=sys.stderr)
print("github token set:", "GITHUB_TOKEN" in os.environ)
with open("run_config.json", "w") as fh:
    json.dump({"lr": 0.1, "hf_token": tok}, fh)
with open("service.json", "w") as fh:  # holds a secret at record time only
    json.dump({"github_token": os.environ.get("GITHUB_TOKEN", "")}, fh)
with open("result.txt", "w") as fh:
    fh.write("42\\n")
print(json.dumps({"step": 0, "loss": 0.25}))
"""


def test_a_secret_passed_to_the_rerun_reaches_no_report(make_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / "trainenv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    repo = make_repo({"train.py": SCRIPT, "auditor.toml": '[verify]\npass_env = ["HF_TOKEN"]\n',
                      ".gitignore": "*.json\n*.txt\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "HF_TOKEN": HF, "GITHUB_TOKEN": GH_TOKEN}
    res = audit("--json", "record", "--", str(venv / "bin" / "python"), "train.py",
                cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    reports = tmp_path / "reports"
    reports.mkdir()
    verify_env = {**env, "GITHUB_TOKEN": ""}  # verify on a machine where only HF_TOKEN is set
    verify_env.pop("GITHUB_TOKEN")
    res = audit("--json", "verify", run_id, "--backend", "venv", "--html", str(reports / "r.html"),
                "--junit", str(reports / "r.xml"), "--markdown", str(reports / "summary.md"),
                cwd=repo, env={**verify_env, "GITHUB_STEP_SUMMARY": str(reports / "step.md")},
                timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    searched = all_bytes(tmp_path / "store") + all_bytes(reports)
    assert {p.name for p, _ in all_bytes(reports)} >= {"r.html", "r.xml", "summary.md"}
    hits = [(str(path), value[:6]) for path, data in searched
            for value in (HF, GH_TOKEN) for form in forms(value) if form in data]
    assert hits == []
    for value in (HF, GH_TOKEN):
        assert value not in res.stdout + res.stderr
    store = open_store(str(tmp_path / "store"))
    rerun = next(r for r in store.list_runs() if r.id != run_id)
    rec = store.get_record(rerun.id)
    assert rec.identity.reproduces == run_id
    out = store.blobs.read_bytes(rec.artifact("logs/stdout.txt").sha256).decode()  # type: ignore[union-attr]
    err = store.blobs.read_bytes(rec.artifact("logs/stderr.txt").sha256).decode()  # type: ignore[union-attr]
    assert "hub login with token=[REDACTED]" in out  # the rerun had it: pass_env
    assert "github token set: False" in out  # not passed: never reached the rerun
    assert "login bot password [REDACTED]" in err
    # run_config.json is withheld on both sides; service.json held a secret only in the
    # original, so the rerun's copy is stored but not compared; result.txt is compared
    original = store.get_record(run_id)
    assert {"outputs/run_config.json", "outputs/service.json"} <= set(original.not_captured)
    assert "outputs/run_config.json" in rec.not_captured
    assert rec.artifact("outputs/service.json") and rec.artifact("outputs/result.txt")
    verdict = json.loads(res.stdout)["results"][0]["verdict"]
    assert verdict["level"].startswith("reproduced")
    assert "outputs/result.txt" in verdict["outputs"]["compared"]
    assert {"outputs/run_config.json", "outputs/service.json"} <= \
        set(verdict["outputs"]["ignored"]) and not \
        {"outputs/run_config.json", "outputs/service.json"} & set(verdict["outputs"]["compared"])
