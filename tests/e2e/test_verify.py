"""`audit verify` end to end: real torch runs, a real docker engine, real certificates.

The six cases the issue names: seeded -> reproduced-bitwise; clock-seeded -> not reproduced
at step 0; a setting the rerun must honour (PYTHONHASHSEED, thread count) reproduces when
replayed and fails, naming the setting, when deliberately not replayed; a stored artifact
altered after recording; a changed data input; bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, audit, git
from tests.e2e.conftest import training_project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
PY = sys.executable


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, torch_rerun_env: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """The fixture training project (data git-ignored, as data usually is) and a store."""
    root, store = training_project(tmp_path_factory.mktemp("verify"),
                                   gitignore="outputs/\n.auditor/\ndata/\n")
    yield {"root": root, "env": {**store, **torch_rerun_env}}


def record(project: dict[str, Any], *args: str, env: dict[str, str] | None = None,
           name: str = "mlp") -> str:
    res = audit(
        "--json",
        "record",
        "--name",
        name,
        "--input",
        "data/blobs.csv",
        "--",
        PY,
        "train_mlp.py",
        "--epochs",
        "2",
        *args,
        cwd=project["root"],
        env={**project["env"], **(env or {})},
    )
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout.strip().splitlines()[-1])["id"])


def verify(project: dict[str, Any], run_id: str, *args: str) -> tuple[int, dict[str, Any], str]:
    res = audit(
        "--json", "verify", run_id, *args, cwd=project["root"], env=project["env"], timeout=900
    )
    data = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res.returncode, data, res.stderr


def only(data: dict[str, Any]) -> dict[str, Any]:
    assert len(data["results"]) == 1, data
    return data["results"][0]  # type: ignore[no-any-return]


def test_seeded_run_reproduces_bitwise_with_a_certificate(
    project: dict[str, Any], tmp_path: Path
) -> None:
    run_id = record(project, "--seed", "3")
    cert = tmp_path / "run.cert.json"
    code, data, err = verify(project, run_id, "--certificate", str(cert))
    assert code == 0, err
    result = only(data)
    assert result["verdict"]["level"] == "reproduced-bitwise"
    assert result["backend"] == "docker" and result["rerun_run"]
    assert any("python" in n.lower() for n in result["verdict"]["notes"])  # 3.11.x patch differs
    statement = json.loads(__import__("base64").b64decode(json.loads(cert.read_text())["payload"]))
    assert statement["predicate"]["verdict"] == "reproduced-bitwise"
    assert statement["predicate"]["original_run"] == run_id
    names = {s["name"] for s in statement["subject"]}
    assert "outputs/outputs/model.safetensors" in names and f"record:{run_id}" in names
    # the rerun is itself a run pointing at the original
    shown = json.loads(
        audit("--json", "show", result["rerun_run"], cwd=project["root"], env=project["env"]).stdout
    )
    assert shown["identity"]["reproduces"] == run_id
    assert shown["environment"]["container_image"] == result["image"]
    # and the stored result renders to a report without rerunning
    html = tmp_path / "r.html"
    res = audit("report", run_id, "--html", str(html), cwd=project["root"], env=project["env"])
    assert res.returncode == 0, res.stderr
    assert "reproduced-bitwise" in html.read_text()


def test_clock_seeded_run_is_not_reproduced_from_step_0(project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "clock")
    code, data, err = verify(project, run_id)
    assert code == 1, err
    verdict = only(data)["verdict"]
    assert verdict["level"] == "not-reproduced"
    assert (
        verdict["first_divergence"].startswith("metrics/")
        and "@step 0" in verdict["first_divergence"]
    )
    assert verdict["causes"][0]["category"] == "seed"


def test_pythonhashseed_is_replayed_and_named_when_not(project: dict[str, Any]) -> None:
    run_id = record(project, "--hash-order", "--seed", "5")
    code, data, err = verify(project, run_id)
    assert code == 0, err
    code, data, err = verify(project, run_id, "--skip-replay", "pythonhashseed")
    assert code == 1, err
    verdict = only(data)["verdict"]
    assert verdict["level"] == "not-reproduced"
    assert "PYTHONHASHSEED" in [c["what"] for c in verdict["causes"][:2]]
    assert any("not replayed" in n for n in verdict["notes"])


def test_thread_count_is_replayed_and_named_when_not(project: dict[str, Any]) -> None:
    # The L2 sum over 300k weights is a parallel reduction: its bits depend on the threads.
    args = ("--epochs", "1", "--hidden", "512", "--l2", "1e-4", "--seed", "9")
    run_id = record(project, *args, env={"OMP_NUM_THREADS": "1"})
    code, data, err = verify(project, run_id, "--bitwise")
    assert code == 0, err
    code, data, err = verify(project, run_id, "--bitwise", "--skip-replay", "threads")
    assert code == 1, err
    causes = [c["what"] for c in only(data)["verdict"]["causes"][:3]]
    assert any(c in ("torch_num_threads", "OMP_NUM_THREADS") for c in causes), causes


def test_altered_stored_artifact_is_refused_before_any_verdict(project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "4")
    shown = json.loads(
        audit("--json", "show", run_id, cwd=project["root"], env=project["env"]).stdout
    )
    weights = next(a for a in shown["artifacts"] if a["name"].endswith("model.safetensors"))
    blob = (
        Path(project["env"]["AUDITOR_STORE"])
        / "objects"
        / "sha256"
        / weights["sha256"][:2]
        / weights["sha256"][2:]
    )
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, out, err = verify(project, run_id)
    assert code == 3 and out == {}
    assert "altered" in err and weights["name"] in err
    assert err.count("\n") == 1 and err.startswith("error:")


def test_changed_data_input_stops_verification(project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "6")
    data_file = project["root"] / "data" / "blobs.csv"
    original = data_file.read_bytes()
    try:
        data_file.write_bytes(original.replace(b"0.", b"1.", 1))
        code, out, err = verify(project, run_id)
    finally:
        data_file.write_bytes(original)
    assert code == 3 and out == {}
    assert "input data/blobs.csv changed" in err


def test_bad_input_gets_one_line_and_exit_2(project: dict[str, Any]) -> None:
    for bad in ("zzzzzzzzzz", "../../etc", ""):
        res = audit("verify", bad, cwd=project["root"], env=project["env"])
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:")


def test_rerun_command_records_a_run_that_reproduces_the_original(project: dict[str, Any]) -> None:
    run_id = record(project, "--seed", "8")
    res = audit("--json", "rerun", run_id, cwd=project["root"], env=project["env"], timeout=900)
    assert res.returncode == 0, res.stderr
    rerun_id = json.loads(res.stdout)["rerun"]
    compared = audit("--json", "compare", run_id, rerun_id, cwd=project["root"], env=project["env"])
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["level"] == "reproduced-bitwise"
    listing = json.loads(audit("--json", "list", "--include-reruns", cwd=project["root"],
                               env=project["env"]).stdout)
    assert next(r for r in listing if r["id"] == rerun_id)["reproduces"] == run_id


def test_verify_all_continues_past_failures_and_writes_reports(project: dict[str, Any],
                                                              tmp_path: Path) -> None:
    good = record(project, "--seed", "11", name="nightly-good")
    bad = record(project, "--seed", "clock", name="nightly-bad")
    reports = tmp_path / "reports"
    res = audit("--json", "verify", "--all", "--name", "nightly-*", "--since", "1h",
                "--report-dir", str(reports), "--markdown", str(reports / "summary.md"),
                "--junit", str(reports / "junit.xml"), cwd=project["root"], env=project["env"],
                timeout=900)
    assert res.returncode == 1, res.stderr  # one run did not reproduce
    levels = {r["original_run"]: r["verdict"]["level"] for r in json.loads(res.stdout)["results"]}
    assert levels == {good: "reproduced-bitwise", bad: "not-reproduced"}
    assert (reports / f"{good}.html").is_file() and (reports / f"{bad}.html").is_file()
    summary = (reports / "summary.md").read_text()
    assert "not reproduced: 1" in summary and "reproduced (bitwise): 1" in summary
    assert "<testsuite" in (reports / "junit.xml").read_text()


def test_api_script_records_and_verifies_in_a_container(project: dict[str, Any]) -> None:
    shutil.copy(FIXTURES / "train" / "train_api.py", project["root"])
    git(project["root"], "add", "train_api.py")
    git(project["root"], "commit", "-q", "-m", "api script")
    res = audit("--json", "record", "--name", "api", "--input", "data/blobs.csv", "--", PY,
                "train_api.py", "--epochs", "2",
                cwd=project["root"], env=project["env"])
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    shown = json.loads(audit("--json", "show", run_id, cwd=project["root"],
                             env=project["env"]).stdout)
    assert shown["params"]["optimizer"] == "sgd" and shown["seeds"]["seed"] == 1234
    assert shown["determinism"]["torch_deterministic_algorithms"] is True
    code, data, err = verify(project, run_id)
    assert code == 0, err
    result = only(data)
    assert result["verdict"]["level"] == "reproduced-bitwise"
    assert result["verdict"]["summary"]["compared_metrics"] == 2  # the API's metrics, rerun too
    rerun = json.loads(audit("--json", "show", result["rerun_run"], cwd=project["root"],
                             env=project["env"]).stdout)
    assert rerun["seeds"]["seed"] == 1234 and rerun["params"]["hidden"] == 32
    assert any(a["name"] == "outputs/model.safetensors" for a in rerun["artifacts"])
