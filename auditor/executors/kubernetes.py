"""Kubernetes: manifests, never a cluster call. ``audit verify --all --executor kubernetes
--emit DIR`` writes one Indexed Job per GPU model of the batch (index i verifies the i-th
run); ``audit ci init kubernetes`` writes a CronJob whose Indexed Job runs one shard per
index. Both render ``templates/ci/kubernetes-job.yml.j2``:

- ``completionMode: Indexed``, ``backoffLimitPerIndex``, a ``podFailurePolicy`` that fails
  an index without retry on a verdict (exit 1) or bad input (exit 2), ignores disruptions
  (preemption, eviction) and counts every other exit (could-not-verify, OOM, signals) as a
  retry; ``ttlSecondsAfterFinished``; the pod's ``activeDeadlineSeconds`` (a hanging job).
- non-root (uid 1000), read-only root filesystem, no privilege escalation, all
  capabilities dropped, resource requests and limits (``nvidia.com/gpu`` for a GPU run).
- the recorded GPU model as ``nodeSelector`` on ``nvidia.com/gpu.product`` and, with a
  queue name, as a Kueue ``ResourceFlavor``'s node label (the Job carries the
  ``kueue.x-k8s.io/queue-name`` label and starts suspended).
- the store URL and credentials from a Secret's keys (``secretKeyRef``), never inline.
- the policy the batch was planned under (its file's text, empty for the defaults) as a
  ConfigMap in each file, mounted read-only at ``/policy``: every pod verifies with
  ``--policy /policy/auditor.toml``, so its claims and certificates carry the batch's
  policy digest, not whatever policy the image holds.

Every value is a constant here or passes the ``yaml`` filter (``release.ci.yaml_scalar``
for scalars, JSON flow collections otherwise), so a run id, image or queue name cannot add
keys. ``tests/unit/test_executors_kubernetes.py`` validates every emitted manifest with
the official client's models and ``kubernetes-validate``; nothing here was run on a cluster.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auditor.core.errors import InputError
from auditor.core.safefile import check_folder, write_target
from auditor.executors.base import Job, gpu_label
from auditor.release.ci import TEMPLATE_DIR, validate_cron

GPU_PRODUCT = "nvidia.com/gpu.product"  # NVIDIA GPU feature discovery's label
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DEFAULT_IMAGE = "auditor:latest"
DEFAULT_SECRET = "auditor-store"
DEFAULT_KEY_SECRET = "auditor-signing-key"
POLICY_MOUNT = "/policy"
POLICY_FILE = "auditor.toml"
TTL_S = 86400
RETRIES = 1
REQUESTS = {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi"}
LIMITS = {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "40Gi"}
KEY_ARG = '$( [ -r /keys/auditor.key ] && echo "--sign-key /keys/auditor.key" )'
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Settings:
    """What the manifests need besides the runs."""

    image: str = DEFAULT_IMAGE
    secret: str = DEFAULT_SECRET
    key_secret: str = DEFAULT_KEY_SECRET
    queue: str | None = None
    parallelism: int = 4
    verify_args: tuple[str, ...] = ()
    policy: str | None = None  # the policy file's text for the pods (None: the image's)


@dataclass
class _JobValues:
    """The template's ``j``."""

    batch: str | None
    completions: int
    parallelism: int
    script: str
    image: str
    secret: str
    key_secret: str
    wall_s: int
    queue: str | None
    node_selector: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=lambda: dict(REQUESTS))
    limits: dict[str, str] = field(default_factory=lambda: dict(LIMITS))
    retries: int = RETRIES
    ttl: int = TTL_S
    labels: dict[str, str] = field(default_factory=dict)
    job_labels: dict[str, str] = field(default_factory=dict)
    policy_config: str | None = None  # the ConfigMap with the policy


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=False,
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["yaml"] = lambda value: json.dumps(value)  # JSON is YAML: one value, no keys
    return env


def dns_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lower case, ``-``), short enough that an Indexed
    Job's pod hostnames (name-index) stay within 63 characters."""
    text = _NAME_BAD.sub("-", "-".join(parts).lower()).strip("-")
    return text[:52].rstrip("-") or "audit"


_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")


def _check(settings: Settings) -> None:
    """Names as Kubernetes takes them (a Secret, a LocalQueue: DNS-1123 names; an image
    reference): anything else is exit 2, so no value reaches the manifest unchecked."""
    if not _IMAGE.fullmatch(settings.image):
        raise InputError(f"invalid image reference {settings.image!r}")
    for what, value in (("secret", settings.secret), ("key secret", settings.key_secret),
                        ("queue", settings.queue)):
        if value is not None and (not _DNS_NAME.fullmatch(value) or
                                  (what == "queue" and len(value) > 63)):
            raise InputError(f"invalid {what} name {value!r}",
                             hint="lower-case letters, digits, '-' and '.'")
    if settings.parallelism < 1:
        raise InputError("--parallelism must be at least 1")


def _labels(batch: str | None, queue: str | None) -> tuple[dict[str, str], dict[str, str]]:
    pod = {"app.kubernetes.io/name": "auditor", "app.kubernetes.io/component": "verify"}
    if batch:
        pod["auditor.dev/batch"] = dns_name(batch)
    job = dict(pod)
    if queue:
        job[QUEUE_LABEL] = queue
    return pod, job


def _values(batch: str | None, jobs: Sequence[Job], script: str, settings: Settings,
            completions: int, wall_s: int, gpu: str | None, gpu_count: int) -> _JobValues:
    pod, job = _labels(batch, settings.queue)
    values = _JobValues(batch=batch, completions=completions,
                        parallelism=min(settings.parallelism, completions), script=script,
                        image=settings.image, secret=settings.secret,
                        key_secret=settings.key_secret, wall_s=wall_s, queue=settings.queue,
                        labels=pod, job_labels=job)
    if gpu:
        values.node_selector = {GPU_PRODUCT: gpu_label(gpu)}
        values.requests["nvidia.com/gpu"] = values.limits["nvidia.com/gpu"] = str(gpu_count)
    return values


def run_script(jobs: Sequence[Job], settings: Settings) -> str:
    """The container's shell: the run of this index, verified in the batch."""
    runs = " ".join(shlex.quote(j.run_id) for j in jobs)
    timeout = max(j.timeout_s for j in jobs)
    extra = shlex.join(_policy_args(settings) + list(settings.verify_args))
    return ("set -eu\n"
            f"set -- {runs}\n"
            'shift "$JOB_COMPLETION_INDEX"\n'
            'export AUDITOR_WORKER="kubernetes:$AUDITOR_BATCH:$1"\n'  # a retried index
            f'exec audit verify "$1" --batch "$AUDITOR_BATCH" --timeout {timeout} '
            f"{KEY_ARG} {extra}".rstrip() + "\n")


def _policy_args(settings: Settings) -> list[str]:
    return ["--policy", f"{POLICY_MOUNT}/{POLICY_FILE}"] if settings.policy is not None else []


def shard_script(shards: int, settings: Settings, timeout_s: int) -> str:
    """The container's shell for a scheduled batch: shard index+1 of ``shards``."""
    extra = shlex.join(settings.verify_args)
    return ("set -eu\n"
            'export AUDITOR_WORKER="kubernetes:$AUDITOR_BATCH:$JOB_COMPLETION_INDEX"\n'
            f'exec audit verify --all --batch "$AUDITOR_BATCH" '
            f'--shard "$((JOB_COMPLETION_INDEX + 1))/{shards}" --timeout {timeout_s} '
            f"{KEY_ARG} {extra}".rstrip() + "\n")


def batch_manifests(batch_id: str, jobs: Sequence[Job], settings: Settings) -> dict[str, str]:
    """File name → manifest text: one Indexed Job per GPU model (CPU runs together)."""
    _check(settings)
    groups: dict[tuple[str | None, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.gpu, job.gpu_count), []).append(job)
    out: dict[str, str] = {}
    for (gpu, count), members in groups.items():
        kind = gpu_label(gpu).lower() + (f"-x{count}" if count > 1 else "") if gpu else "cpu"
        name = dns_name("audit", batch_id[:20], kind)
        values = _values(batch_id, members, run_script(members, settings), settings,
                         len(members), max(j.wall_s for j in members), gpu, count)
        flavor = dns_name("gpu", kind) if gpu and settings.queue else None
        if settings.policy is not None:
            values.policy_config = dns_name("audit", batch_id[:20], "policy")
        text = _env().get_template("kubernetes-emit.yml.j2").render(
            j=asdict(values), name=name, flavor=flavor,
            policy={POLICY_FILE: settings.policy} if settings.policy is not None else None)
        list(yaml.safe_load_all(text))  # our own template must stay valid YAML
        out[f"{name}.yaml"] = text
    return out


def emit(folder: Path, batch_id: str, jobs: Sequence[Job], settings: Settings) -> list[Path]:
    """Write the batch's manifests into ``folder`` (through ``core.safefile``)."""
    check_folder(folder)
    manifests = batch_manifests(batch_id, jobs, settings)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in manifests.items():
        write_target(folder / name, text.encode("utf-8"))
        written.append(folder / name)
    return written


def cronjob(*, schedule: str, shards: int, settings: Settings, timeout_s: int = 3600,
            gpu: str | None = None, gpu_count: int = 1) -> str:
    """``audit ci init kubernetes``: a CronJob whose Indexed Job runs one shard per index."""
    _check(settings)
    if not 1 <= shards <= 1000:
        raise InputError(f"--shards must be 1..1000, not {shards}")
    values = _values(None, (), shard_script(shards, settings, timeout_s), settings, shards,
                     timeout_s + 600, gpu, gpu_count)
    text = _env().get_template("kubernetes.yml.j2").render(
        j=asdict(values), name="audit-verify", schedule=validate_cron(schedule))
    yaml.safe_load(text)
    return text


CRONJOB_PATH = Path("k8s/audit-verify.yaml")


def write_cronjob(output: Path | None, *, force: bool, image: str | None, shards: int,
                  schedule: str) -> Path:
    """``audit ci init kubernetes``: write the CronJob (never over a file without force)."""
    text = cronjob(schedule=schedule, shards=shards,
                   settings=Settings(image=image or DEFAULT_IMAGE))
    path = output or CRONJOB_PATH
    if path.exists() and not force:
        raise InputError(f"{path} already exists", hint="pass --output PATH or --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_target(path, text.encode("utf-8"))
    return path


def documents(text: str) -> list[dict[str, Any]]:
    """The YAML documents of a manifest file."""
    return [d for d in yaml.safe_load_all(text) if d]
