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
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the test server: `mlflow.db` and `artifacts/`."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="session")
def mlflow_server(mlflow_home: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and local artifacts on 127.0.0.1."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        skip_or_fail("mlflow is not installed (pip install -e '.[test]')")
    root = mlflow_home
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


# ---------------------------------------------------------------- issue 16 item 7: host data

HOST_MARK = "HOSTFILE-4b1d9e7c0a3f-do-not-import"  # not secret-shaped: only location stops it
PARAM_SECRET = "Kx9pQ2wE7rT4yU1iO8aS5dF3gH6jL0zXcVbNm2Qw"
TAG_TOKEN = "ghp_" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBaZ"
METRIC_TOKEN = "ghp_" + "Mn4Bv5Cx6Za7Sd8Fg9Hj0Kl1Qw2Er3Ty4Ui5Op"
ART_KEY = "artKey-5Gh8Jk2Lm9Qw"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDh0st"


def _planted_hits(store_dir: Path, values: list[str]) -> list[tuple[str, str]]:
    """Every file of the store (database and objects) searched for each value, raw,
    base64, URL-encoded and hex (as tests/integration/test_secrets_store.py does)."""
    import base64
    import binascii
    import urllib.parse

    hits = []
    for path in store_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in values:
                raw = value.encode()
                quoted = urllib.parse.quote(value, safe="").encode()
                for form in (raw, base64.b64encode(raw), quoted, binascii.hexlify(raw)):
                    if form in data:
                        hits.append((str(path), value[:10]))
    return hits


def _host_folder(tmp_path: Path) -> Path:
    host = tmp_path / "host" / "keys"
    host.mkdir(parents=True)
    (host / "signing.key").write_text(HOST_MARK + "\n")
    return host


def _point_run_at(db: Path, run_id: str, uri: str) -> None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("update runs set artifact_uri = ? where run_uuid = ?",
                            (uri, run_id)).rowcount == 1


def test_a_crafted_artifact_uri_reads_nothing_of_the_host(
    mlflow_server: str, mlflow_home: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    host = _host_folder(tmp_path)
    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("crafted-uri")
    crafted = {"abs": str(host), "file": f"file://{host}",
               "dotdot": f"{mlflow_home / 'artifacts'}/../../{host.relative_to(tmp_path.parent)}",
               "other-host": "mlflow-artifacts://evil.example:5000/x/artifacts"}
    ids = {}
    for name, uri in crafted.items():
        run = client.create_run(exp_id, run_name=name)
        client.set_terminated(run.info.run_id, "FINISHED")
        _point_run_at(mlflow_home / "mlflow.db", run.info.run_id, uri)
        ids[run.info.run_id] = name
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment",
                "crafted-uri", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "imported 4 run(s)" in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("refused the artifacts")]
    assert len(lines) == 4, res.stderr
    assert sorted(ln.split(" of MLflow run ")[1].split(":")[0] for ln in lines) == sorted(ids)
    assert HOST_MARK not in res.stdout + res.stderr
    assert _planted_hits(tmp_path / "store", [HOST_MARK]) == []
    store = open_store(str(tmp_path / "store"))
    try:
        for summary in store.list_runs():
            rec = store.get_record(summary.id)
            assert rec.artifacts == () and "not read" in rec.not_captured["artifacts"]
    finally:
        store.close()


LOCAL_STORE = """
import sys
from pathlib import Path
from mlflow import MlflowClient

uri, location, weights = sys.argv[1:]
client = MlflowClient(tracking_uri=uri)
exp_id = client.create_experiment("local", artifact_location=location)
run = client.create_run(exp_id, run_name="local")
client.log_artifact(run.info.run_id, weights, artifact_path="model")
client.set_terminated(run.info.run_id, "FINISHED")
print(client.get_run(run.info.run_id).info.artifact_uri)
"""


def _local_store(tmp_path: Path, artifact_location: Path) -> tuple[str, Path]:
    """A SQLite tracking store used without a server, made by MLflow's client in its own
    process (its SQLAlchemy models warn under SQLAlchemy 2.1, and warnings are errors
    here): (tracking URI, the run's artifact folder)."""
    db = tmp_path / "mlstore" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00\x01weights" * 100)
    made = subprocess.run([sys.executable, "-c", LOCAL_STORE, uri, str(artifact_location),
                           str(weights)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert made.returncode == 0, made.stderr[-2000:]
    folder = Path(made.stdout.strip().splitlines()[-1].removeprefix("file://"))
    assert folder.is_dir() and folder.is_relative_to(artifact_location)
    return uri, folder


def test_a_symlink_inside_the_artifact_root_is_never_followed(tmp_path: Path) -> None:
    host = _host_folder(tmp_path)
    uri, folder = _local_store(tmp_path, tmp_path / "mlstore" / "mlruns" / "local")
    (folder / "model" / "stolen.key").symlink_to(host / "signing.key")
    (folder / "all-keys").symlink_to(host, target_is_directory=True)
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("import", "mlflow", "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    refused = sorted(ln for ln in res.stderr.splitlines() if ln.startswith("refused artifact"))
    assert len(refused) == 2 and "all-keys" in refused[0] and "model/stolen.key" in refused[1]
    assert all("symbolic link" in ln for ln in refused)
    assert _planted_hits(tmp_path / "store", [HOST_MARK]) == []
    store = open_store(str(tmp_path / "store"))
    try:
        rec = store.get_record(store.list_runs()[0].id)
    finally:
        store.close()
    assert [a.name for a in rec.artifacts] == ["mlflow/model/weights.bin"]  # the root is read
    assert "symbolic link" in rec.not_captured["mlflow/model/stolen.key"]


def test_an_artifact_root_elsewhere_needs_the_option(tmp_path: Path) -> None:
    elsewhere = tmp_path / "team-artifacts"
    uri, _folder = _local_store(tmp_path, elsewhere)
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    refused = audit("import", "mlflow", "--tracking-uri", uri, cwd=tmp_path, env=env)
    assert refused.returncode == 0 and "--artifact-root" in refused.stderr, refused.stderr
    env2 = {"AUDITOR_STORE": str(tmp_path / "store2")}
    allowed = audit("import", "mlflow", "--tracking-uri", uri, "--artifact-root", str(elsewhere),
                    cwd=tmp_path, env=env2)
    assert allowed.returncode == 0 and "refused" not in allowed.stderr, allowed.stderr
    store = open_store(str(tmp_path / "store2"))
    try:
        rec = store.get_record(store.list_runs()[0].id)
    finally:
        store.close()
    assert [a.name for a in rec.artifacts] == ["mlflow/model/weights.bin"]
    bad = audit("import", "mlflow", "--tracking-uri", uri, "--artifact-root",
                str(tmp_path / "nope"), cwd=tmp_path, env=env2)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a folder" in bad.stderr


def test_secrets_in_params_tags_metric_names_and_artifacts_reach_nowhere(
    mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("secrets")
    run = client.create_run(exp_id, run_name="leaky", tags={"deploy": f"token {TAG_TOKEN}",
                                                            "team": "blue"})
    rid = run.info.run_id
    client.log_param(rid, "aws_secret_access_key", PARAM_SECRET)
    client.log_param(rid, "lr", "0.1")
    client.log_metric(rid, METRIC_TOKEN, 1.0, step=0)
    client.log_metric(rid, "loss", 0.5, step=0)
    files = tmp_path / "files"
    files.mkdir()
    (files / "run_config.json").write_text(json.dumps({"lr": 0.1, "api_key": ART_KEY}))
    (files / "key.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n"
                                   "-----END PRIVATE KEY-----\n")
    (files / "echo.txt").write_text(f"the param was {PARAM_SECRET}\n")  # a known secret
    (files / "metrics.txt").write_text("loss 0.5\n")
    for name in ("run_config.json", "key.pem", "echo.txt", "metrics.txt"):
        client.log_artifact(rid, str(files / name))
    client.set_terminated(rid, "FINISHED")
    env = {"AUDITOR_STORE": str(tmp_path / "store")}
    res = audit("import", "mlflow", "--tracking-uri", mlflow_server, "--experiment", "secrets",
                cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    planted = [PARAM_SECRET, TAG_TOKEN, METRIC_TOKEN, ART_KEY, PEM_BODY]
    assert _planted_hits(tmp_path / "store", planted) == []
    for value in planted:
        assert value not in res.stdout + res.stderr
    withheld = sorted(ln for ln in res.stderr.splitlines() if ln.startswith("refused artifact"))
    assert [ln.split()[2] for ln in withheld] == ["echo.txt", "key.pem", "run_config.json"]
    assert "a value named api_key" in withheld[2] and "a private key block" in withheld[1]
    store = open_store(str(tmp_path / "store"))
    try:
        rec = store.get_record(store.list_runs()[0].id)
        assert rec.params == {"aws_secret_access_key": "[REDACTED]", "lr": "0.1"}
        assert "team=blue" in rec.identity.tags
        assert [a.name for a in rec.artifacts] == ["mlflow/metrics.txt"]
        assert "not stored, it holds" in rec.not_captured["mlflow/run_config.json"]
        assert rec.metrics is not None and rec.metrics.final["loss"] == 0.5
        assert "[REDACTED]" in rec.metrics.final
    finally:
        store.close()
