"""`audit import mlflow` from a real `mlflow server` (SQLite backend, 127.0.0.1, started
here), through MLflow's own client: params, full paged metric histories, tags, the git
commit, timestamps, artifacts, clamped infinities, deleted runs, idempotent re-import,
and what an imported run lacks to be verified."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.record.from_mlflow import CLAMPED, LACKS, safe_artifact_path
from auditor.store import open_store
from tests.conftest import audit, skip_or_fail

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and local artifacts on 127.0.0.1."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        skip_or_fail("mlflow is not installed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server did not start: {tail}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _log_runs(url: str, experiment: str, tmp_path: Path) -> dict[str, str]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=url)
    exp_id = client.create_experiment(experiment)
    kept = client.create_run(exp_id, run_name="winner", tags={
        "mlflow.source.git.commit": COMMIT, "team": "blue"})
    rid = kept.info.run_id
    client.log_param(rid, "lr", "0.1")
    now = int(time.time() * 1000)
    series = [Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(1200)]
    for i in range(0, len(series), 1000):
        client.log_batch(rid, metrics=series[i:i + 1000])
    client.log_metric(rid, "grad", float("inf"), step=0)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00\x01weights" * 1000)
    client.log_artifact(rid, str(weights), artifact_path="model")
    client.set_terminated(rid, "FINISHED")
    gone = client.create_run(exp_id, run_name="deleted")
    client.set_terminated(gone.info.run_id, "FINISHED")
    client.delete_run(gone.info.run_id)
    return {"kept": rid, "deleted": gone.info.run_id, "weights": str(weights)}


def test_import_from_a_real_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    logged = _log_runs(mlflow_server, "exp-a", tmp_path)
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_SIGN_KEY": ""}
    first = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment", "exp-a",
                  cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "imported 1 run(s)" in first.stdout
    again = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment", "exp-a",
                  "--run-id", logged["deleted"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "imported 0 run(s)" in again.stdout and "1 imported before, 1 skipped" in again.stdout
    store = open_store(str(tmp_path / "store"))
    try:
        [summary] = store.list_runs()
        rec = store.get_record(summary.id)
        assert rec.params == {"lr": "0.1"} and rec.code is not None and rec.code.commit == COMMIT
        assert "team=blue" in rec.identity.tags and "imported:mlflow" in rec.identity.tags
        loss = [p for p in store.iter_metrics(summary.id, "loss")]
        assert [p.step for p in loss] == list(range(1200))
        assert [p.value for p in loss] == [1.0 / (s + 1) for s in range(1200)]
        from mlflow import MlflowClient

        source = MlflowClient(tracking_uri=mlflow_server).get_run(logged["kept"])
        assert int(rec.identity.started_at.timestamp() * 1000) == source.info.start_time
        [grad] = list(store.iter_metrics(summary.id, "grad"))
        assert abs(grad.value) == CLAMPED  # MLflow clamped the infinity; we say so
        assert any("grad step 0" in w and "clamped" in w for w in rec.metrics.warnings)
        [art] = rec.artifacts
        assert art.name == "mlflow/model/weights.bin"
        assert store.blobs.read_bytes(art.sha256) == Path(logged["weights"]).read_bytes()
        assert rec.not_captured["verifiable"] == LACKS
    finally:
        store.close()
    shown = audit("show", summary.id, cwd=tmp_path, env=env)
    assert shown.returncode == 0 and "no lockfile" in shown.stdout
    listed = audit("list", cwd=tmp_path, env=env)
    assert "1 imported run(s) cannot be verified" in listed.stdout
    assert json.loads(audit("--json", "list", cwd=tmp_path, env=env).stdout)[0]["tags"][0] == \
        "imported:mlflow"
    verify = audit("verify", summary.id, cwd=tmp_path, env=env)
    assert verify.returncode == 3
    assert verify.stderr.count("\n") == 1 and "cannot be verified" in verify.stderr
    assert "no lockfile" in verify.stderr
    deleted = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--run-id",
                    logged["deleted"], "--include-deleted", cwd=tmp_path, env=env)
    assert deleted.returncode == 0 and "imported 1 run(s)" in deleted.stdout, deleted.stderr
    assert audit("fsck", cwd=tmp_path, env=env).returncode == 0


def test_unreachable_server_and_unknown_experiment_are_one_line(
    mlflow_server: str, tmp_path: Path
) -> None:
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    down = audit("import", "mlflow", "--tracking-uri",
                 f"http://user:pw-never-shown@127.0.0.1:{_free_port()}", cwd=tmp_path, env=env,
                 timeout=180)
    assert down.returncode == 2 and down.stderr.count("\n") == 1, down.stderr
    assert "pw-never-shown" not in down.stdout + down.stderr
    unknown = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment", "nope",
                    cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "no MLflow experiment named 'nope'" in unknown.stderr


def test_escaping_artifact_paths_are_refused() -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\b", "", "a//b", "c:/x", "./x"):
        assert not safe_artifact_path(bad), bad
    assert safe_artifact_path("model/weights.bin")


@pytest.mark.slow
def test_more_than_a_page_of_runs(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("many")
    for i in range(1001):
        run = client.create_run(exp_id, run_name=f"r{i}")
        client.set_terminated(run.info.run_id, "FINISHED")
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment", "many",
                cwd=tmp_path, env=env, timeout=900)
    assert res.returncode == 0, res.stderr
    assert "imported 1001 run(s)" in res.stdout
