"""What every executor shares (issue 21): exit codes to verdicts and retries, a run's job
(GPU model, limits from its duration), GPU names as engines write them, the environment a
worker gets (never a password), and the Ray address forms."""

from __future__ import annotations

import pytest

from auditor.core.errors import InputError
from auditor.core.schema import Accelerators, Environment, Gpu
from auditor.executors import engine_of
from auditor.executors.base import (
    ALLOWANCE_S,
    MIN_TIMEOUT_S,
    Submission,
    job_for,
    retryable,
    store_env,
    verdict_of,
)
from auditor.executors.rayjobs import accelerator, job_server
from auditor.executors.slurm import gres
from auditor.store import RunStore
from tests.factories import make_record


@pytest.mark.parametrize(("code", "verdict", "retry"), [
    (0, "reproduced", False), (1, "not-reproduced", False), (2, "bad-input", False),
    (3, "could-not-verify", True), (-9, "could-not-verify", True),
    (137, "could-not-verify", True), (None, None, True),
])
def test_a_verdict_is_final_and_anything_else_is_retried(code: int | None, verdict: str | None,
                                                         retry: bool) -> None:
    assert retryable(code) is retry
    if code is not None:
        assert verdict_of(code) == verdict


def test_a_job_takes_the_recorded_gpu_and_a_limit_from_the_duration() -> None:
    gpus = (Gpu(index=0, name="NVIDIA A100-SXM4-80GB"), Gpu(index=1, name="NVIDIA A100-SXM4-80GB"))
    record = make_record(status="finished", duration_s=1000.0,
                         environment=Environment(accelerators=Accelerators(gpus=gpus)))
    job = job_for(record)
    assert (job.gpu, job.gpu_count) == ("NVIDIA A100-SXM4-80GB", 2)
    assert job.timeout_s == 3000 and job.wall_s == 3000 + ALLOWANCE_S
    assert gres(job) == "gpu:a100:2" and accelerator(job.gpu or "") == "accelerator_type:A100"
    short = job_for(make_record(status="finished", duration_s=2.0))
    assert short.timeout_s == MIN_TIMEOUT_S and short.gpu is None and gres(short) is None
    assert job_for(record, timeout_s=60).timeout_s == 60  # --timeout wins


@pytest.mark.parametrize(("model", "short"), [
    ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla V100-SXM2-16GB", "V100"), ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10G"), ("NVIDIA GeForce RTX 4090", "RTX4090"),
])
def test_gpu_models_as_engines_name_them(model: str, short: str) -> None:
    assert accelerator(model) == f"accelerator_type:{short}"


def test_an_unknown_gpu_model_is_bad_input() -> None:
    with pytest.raises(InputError):
        accelerator("Mystery Accelerator")


def test_the_worker_environment_never_carries_a_password(store: RunStore) -> None:
    env = store_env(store, {"AUDITOR_CA_BUNDLE": "/ca.pem", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                            "PGPASSWORD": "pw"})
    assert env["AUDITOR_STORE"] == store.url and env["AUDITOR_CA_BUNDLE"] == "/ca.pem"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "PGPASSWORD" not in env

    class WithPassword:
        url = "postgresql+psycopg://u:***@db/x"
        blobs = None

    with pytest.raises(InputError, match="password"):
        store_env(WithPassword(), {})  # type: ignore[arg-type]


def test_a_submission_is_one_audit_verify_per_run() -> None:
    job = job_for(make_record(status="finished", duration_s=10.0))
    sub = Submission("b-1", ("--policy", "/p/auditor.toml"))
    assert sub.argv(job) == ["audit", "verify", job.run_id, "--batch", "b-1", "--timeout",
                             str(MIN_TIMEOUT_S), "--policy", "/p/auditor.toml"]


@pytest.mark.parametrize(("spec", "url"), [
    ("ray://10.1.2.3:8265", "http://10.1.2.3:8265"), ("ray://head", "http://head:8265"),
    ("https://ray.example:443", "https://ray.example:443"),
])
def test_ray_addresses(spec: str, url: str) -> None:
    assert engine_of(spec) == "ray" and job_server(spec) == url


@pytest.mark.parametrize("spec", ["ray://", "ray://h:port", "tcp://h:1"])
def test_bad_ray_addresses_are_bad_input(spec: str) -> None:
    with pytest.raises(InputError):
        job_server(spec) if spec.startswith("ray") else engine_of(spec)
