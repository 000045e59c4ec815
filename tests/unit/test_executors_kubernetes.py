"""Kubernetes manifests (issue 21 item 3): ``audit verify --all --executor kubernetes
--emit DIR`` and ``audit ci init kubernetes``.

No cluster can run here, so nothing is applied. Every emitted manifest is validated
against the Kubernetes OpenAPI schemas by ``kubernetes-validate`` (strict: an unknown
field fails) and read back through the official client's models (``kubernetes.client``:
required fields and enums checked client-side); a round trip through the models must give
the document back, so a field the models do not know cannot hide. The container's shell
is run with ``sh`` for each index (``audit`` on PATH being a stub that prints its argv,
which is then parsed by the real click tree).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from auditor.cli.main import main
from auditor.core.errors import InputError
from auditor.core.schema import Accelerators, Environment, Gpu
from auditor.executors.base import Job, gpu_label
from auditor.executors.kubernetes import (
    GPU_PRODUCT,
    QUEUE_LABEL,
    Settings,
    batch_manifests,
    documents,
)
from auditor.release.ci import check_command
from auditor.store import RunStore
from tests.factories import make_record

K8S_VERSION = "1.33"  # backoffLimitPerIndex is GA from 1.33, podFailurePolicy from 1.31
MODELS = {"Job": "V1Job", "CronJob": "V1CronJob", "ConfigMap": "V1ConfigMap"}
A100 = "NVIDIA A100-SXM4-80GB"


def _job(run_id: str, gpu: str | None = None, count: int = 1) -> Job:
    return Job(run_id=run_id, name="t", gpu=gpu, gpu_count=count if gpu else 0,
               timeout_s=900, wall_s=1500)


def validate(doc: dict[str, Any]) -> None:
    """Schema-valid for Kubernetes, and the client's model gives the same document back."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    api = kubernetes.client.ApiClient()

    class Response:
        data = json.dumps(doc)

    model = api.deserialize(Response(), MODELS[doc["kind"]])
    assert api.sanitize_for_serialization(model) == doc


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return dict(spec["template"]["spec"])


def _job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"])


def check_job(doc: dict[str, Any], completions: int) -> None:
    """What issue 21 item 3 lists, on one Job (or a CronJob's Job)."""
    spec = _job_spec(doc)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == completions
    assert spec["backoffLimitPerIndex"] == 1 and spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailIndex", "onExitCodes": {
        "containerName": "verify", "operator": "In", "values": [1, 2]}}
    assert rules[1]["action"] == "Ignore"  # disruptions: retried, not counted
    assert rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = _pod(doc)
    assert pod["restartPolicy"] == "Never" and pod["activeDeadlineSeconds"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AUDITOR_STORE"]["valueFrom"]["secretKeyRef"] == {
        "name": "auditor-store", "key": "store-url"}
    assert all("value" not in e or e["name"] not in ("AUDITOR_STORE", "PGPASSWORD")
               for e in container["env"])


def run_index(script: str, index: int, tmp_path: Path, batch: str = "b1") -> list[str]:
    """The container's shell for one index, with ``audit`` a stub printing its argv."""
    stub = tmp_path / "bin" / "audit"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\nexec python3 -c \'import json,sys; '
                    'print(json.dumps(["audit", *sys.argv[1:]]))\' "$@"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          check=True, env={"PATH": f"{stub.parent}:{os.environ['PATH']}",
                                           "JOB_COMPLETION_INDEX": str(index),
                                           "AUDITOR_BATCH": batch})
    return list(json.loads(done.stdout))


def test_emitted_jobs_validate_and_carry_every_required_field(tmp_path: Path) -> None:
    jobs = [_job("r0"), _job("r1", A100), _job("r2"), _job("r3", A100),
            _job("r4", "NVIDIA H100 80GB HBM3", 2)]
    files = batch_manifests("nightly-42", jobs, Settings(image="reg.example/auditor:1.0"))
    assert len(files) == 3  # CPU, A100, 2 x H100: one Indexed Job per GPU model
    by_gpu = {}
    for text in files.values():
        (doc,) = documents(text)
        validate(doc)
        selector = _pod(doc).get("nodeSelector", {})
        by_gpu[selector.get(GPU_PRODUCT)] = doc
    assert set(by_gpu) == {None, "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"}
    check_job(by_gpu[None], 2)
    check_job(by_gpu["NVIDIA-A100-SXM4-80GB"], 2)
    check_job(by_gpu["NVIDIA-H100-80GB-HBM3"], 1)
    h100 = _pod(by_gpu["NVIDIA-H100-80GB-HBM3"])["containers"][0]["resources"]
    assert h100["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in _pod(by_gpu[None])["containers"][0]["resources"]["limits"]
    # index i verifies the i-th run of its group, in the batch, and nothing else
    script = _pod(by_gpu["NVIDIA-A100-SXM4-80GB"])["containers"][0]["args"][0]
    for index, run in enumerate(["r1", "r3"]):
        argv = run_index(script, index, tmp_path, batch="nightly-42")
        assert argv[:5] == ["audit", "verify", run, "--batch", "nightly-42"], argv
        check_command(main, argv)  # a command line the real CLI accepts


@pytest.mark.parametrize("spoil", ["unknown-field", "wrong-type", "no-containers", "no-image"])
def test_the_validation_catches_a_broken_manifest(spoil: str) -> None:
    """The checks above can fail: a spoiled copy of an emitted Job is refused."""
    (text,) = batch_manifests("b", [_job("r1")], Settings()).values()
    (doc,) = documents(text)
    spec = doc["spec"]
    container = spec["template"]["spec"]["containers"][0]
    if spoil == "unknown-field":
        spec["backoffLimitPerIndexx"] = 1
    elif spoil == "wrong-type":
        spec["completions"] = "two"
    elif spoil == "no-containers":
        del spec["template"]["spec"]["containers"]
    else:
        del container["image"]
        del container["name"]
    with pytest.raises((kubernetes_validate.ValidationError, ValueError, AssertionError)):
        validate(doc)


def test_a_queue_name_adds_kueue_flavors_and_suspends(tmp_path: Path) -> None:
    files = batch_manifests("b", [_job("r1", A100)], Settings(queue="team-gpus"))
    (text,) = files.values()
    flavor, job = documents(text)
    assert flavor["apiVersion"] == "kueue.x-k8s.io/v1beta1" and flavor["kind"] == "ResourceFlavor"
    assert flavor["spec"]["nodeLabels"] == {GPU_PRODUCT: "NVIDIA-A100-SXM4-80GB"}
    assert flavor["metadata"]["name"] == "gpu-nvidia-a100-sxm4-80gb"
    validate(job)
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-gpus"
    assert job["spec"]["suspend"] is True


def test_ci_init_kubernetes_writes_a_valid_sharded_cronjob(tmp_path: Path) -> None:
    out = tmp_path / "k8s" / "audit.yaml"
    res = CliRunner().invoke(main, ["ci", "init", "kubernetes", "--output", str(out),
                                    "--shards", "3", "--image", "auditor:2"])
    assert res.exit_code == 0, res.output
    (doc,) = documents(out.read_text())
    validate(doc)
    assert doc["kind"] == "CronJob" and doc["spec"]["schedule"] == "17 3 * * *"
    check_job(doc, 3)
    env = {e["name"]: e for e in _pod(doc)["containers"][0]["env"]}
    assert env["AUDITOR_BATCH"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    script = _pod(doc)["containers"][0]["args"][0]
    shards = [run_index(script, i, tmp_path, batch="audit-verify-29000") for i in range(3)]
    assert [a[a.index("--shard") + 1] for a in shards] == ["1/3", "2/3", "3/3"]
    for argv in shards:
        assert argv[:6] == ["audit", "verify", "--all", "--batch", "audit-verify-29000",
                            "--shard"]
        check_command(main, argv)
    again = CliRunner().invoke(main, ["ci", "init", "kubernetes", "--output", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("settings", [
    Settings(image="auditor:1\n  hostNetwork: true"),
    Settings(image='x" , "privileged": true'),
    Settings(queue='q", "x": "y'),
    Settings(queue="Team_GPUs"),
    Settings(secret="store; rm -rf /"),
    Settings(parallelism=0),
])
def test_hostile_or_invalid_names_are_refused(settings: Settings) -> None:
    with pytest.raises(InputError):
        batch_manifests("b", [_job("r1")], settings)


def test_a_gpu_name_becomes_a_valid_label() -> None:
    assert gpu_label("NVIDIA A100-SXM4-80GB") == "NVIDIA-A100-SXM4-80GB"
    assert gpu_label("Tesla V100-SXM2-16GB (x) ") == "Tesla-V100-SXM2-16GB-x"
    with pytest.raises(InputError):
        gpu_label(" () ")


def _gpu_env(model: str) -> Environment:
    return Environment(accelerators=Accelerators(gpus=(Gpu(index=0, name=model),)))


def test_verify_all_emits_manifests_from_the_store_without_the_store_url(
        tmp_path: Path, store: RunStore) -> None:
    cpu = make_record(status="finished", duration_s=120.0)
    gpu = make_record(status="finished", duration_s=4000.0, environment=_gpu_env(A100))
    for record in (cpu, gpu):
        store.put_record(record)
    out = tmp_path / "manifests"
    location = str(tmp_path / "store")
    res = CliRunner().invoke(main, ["--store", location, "--json", "verify", "--all",
                                    "--executor", "kubernetes", "--emit", str(out),
                                    "--batch", "nightly-1", "--queue", "gpus"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["batch"] == "nightly-1" and set(shown["runs"]) == {cpu.identity.id,
                                                                     gpu.identity.id}
    texts = [p.read_text() for p in sorted(out.iterdir())]
    assert len(texts) == 2 and all(location not in t for t in texts)
    docs = [d for t in texts for d in documents(t)]
    jobs = [d for d in docs if d["kind"] == "Job"]
    for doc in jobs:
        validate(doc)
        check_job(doc, 1)
    walls = {(_pod(d).get("nodeSelector") or {}).get(GPU_PRODUCT): _pod(d)["activeDeadlineSeconds"]
             for d in jobs}
    assert walls[gpu_label(A100)] > 3 * 4000 > walls[None]  # the limit follows the duration
    items = {i.run_id: i.state for i in store.batches().get("nightly-1").items}
    assert items == {cpu.identity.id: "pending", gpu.identity.id: "pending"}


@pytest.mark.parametrize("given", ["file", "profile", "none"])
def test_pods_verify_under_the_batchs_own_policy_from_a_configmap(
        tmp_path: Path, store: RunStore, monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    """The pods read the policy the batch was planned under (its digest is the batch's),
    from a ConfigMap in the emitted file, not the image's: with ``--policy FILE``, with a
    tolerance profile, and with the defaults (an empty file)."""
    from auditor.core.policy import load_policy
    from auditor.store.batches import policy_digest

    monkeypatch.chdir(tmp_path)  # no auditor.toml here but ours
    run = make_record(status="finished", duration_s=60.0)
    store.put_record(run)
    policy = tmp_path / "team-policy.toml"
    policy.write_text('[verify]\npass_env = ["HF_TOKEN"]\n')
    args = {"file": ["--policy", str(policy)], "profile": ["--profile", "relaxed"],
            "none": []}[given]
    out = tmp_path / "m"
    res = CliRunner().invoke(main, ["--store", str(tmp_path / "store"), "--json", "verify",
                                    "--all", "--executor", "kubernetes", "--emit", str(out),
                                    "--batch", "pol-1", *args])
    assert res.exit_code == 0, res.output
    (text,) = [p.read_text() for p in out.iterdir()]
    config, job = documents(text)
    kubernetes_validate.validate(config, K8S_VERSION, strict=True)
    validate(config)
    validate(job)
    assert config["kind"] == "ConfigMap" and "secret" not in config["metadata"]["name"]
    pod = _pod(job)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert {"name": "policy", "mountPath": "/policy", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    argv = run_index(pod["containers"][0]["args"][0], 0, tmp_path, batch="pol-1")
    check_command(main, argv)
    assert argv[argv.index("--policy") + 1] == "/policy/auditor.toml", argv
    # the pod's policy, read as the pod reads it, is the batch's
    mounted = tmp_path / "policy" / "auditor.toml"
    mounted.parent.mkdir()
    mounted.write_text(config["data"]["auditor.toml"])
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    pods = policy_digest(load_policy(mounted, profile=profile).table())
    assert pods == store.batches().get("pol-1").info.policy_sha256
    assert (pods == policy_digest(load_policy(None).table())) == (given == "none")


def test_executor_option_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    location = str(tmp_path / "store")
    for args, words in (
        (["--executor", "kubernetes"], "--emit"),
        (["--executor", "nomad"], "unknown executor"),
        (["--emit", str(tmp_path / "m")], "--executor kubernetes"),
        (["--executor", "ray://", "--image", "x"], "--executor kubernetes"),
        (["--executor", "slurm", "--shard", "1/2"], "--shard"),
    ):
        res = runner.invoke(main, ["--store", location, "verify", "--all", *args])
        assert res.exit_code == 2, (args, res.output)
        assert words in res.output and "Traceback" not in res.output
    assert yaml.safe_load("a: 1") == {"a": 1}
