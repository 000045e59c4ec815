"""What every executor shares: the jobs of a batch, the command each job runs, the store
URLs it gets, and how a job's exit code becomes a verdict (or a retry).

A job is one recorded run. Its worker runs the CLI, ``audit verify RUN --batch B``, against
the team store; the batch's claim rows (``auditor.store.batches``) make a second
submission of the same batch verify nothing twice, whatever the engine did with the first.
An engine's own retries and ids (Ray's ``submission_id``, Slurm requeues, Kubernetes
indexes) are never the idempotency.

Exit codes of the job's command (``auditor.core.errors``): 0 reproduced, 1 not
reproduced, 2 bad input — a verdict or our refusal: never retried. Anything else (3
could-not-verify, a signal, an OOM kill, a lost node) is infrastructure: retried once, then
could-not-verify with the reason.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from auditor.core.errors import InputError
from auditor.core.schema import RunRecord
from auditor.store import RunStore

VERDICTS: dict[int, str] = {0: "reproduced", 1: "not-reproduced", 2: "bad-input",
                            3: "could-not-verify"}
FINAL = frozenset({0, 1, 2})  # a verdict or a refusal of the input: never retried
MAX_ATTEMPTS = 2  # an infrastructure failure is retried once
MARGIN = 3.0  # the rerun may take this many times the original's duration …
ALLOWANCE_S = 600  # … plus this much for the build and the comparison
MIN_TIMEOUT_S = 300
PASSED_ENV = ("AUDITOR_CA_BUNDLE", "AUDITOR_WHEELHOUSE", "AUDITOR_WHEEL_CACHE",
              "AUDITOR_BASE_IMAGE", "AUDITOR_BWRAP", "AUDITOR_CACHE")


@dataclass(frozen=True)
class Job:
    """One verification to run somewhere: the run, the GPU it was recorded on, its limits."""

    run_id: str
    name: str
    gpu: str | None  # the recorded GPU model, e.g. "NVIDIA A100-SXM4-80GB"
    gpu_count: int
    timeout_s: int  # the rerun's limit (`audit verify --timeout`)
    wall_s: int  # the engine's limit for the whole job: the rerun's plus the allowance


@dataclass(frozen=True)
class Outcome:
    """How one job ended, as the executor saw it (the batch row holds the verifier's view)."""

    run_id: str
    exit_code: int
    verdict: str
    node: str | None = None
    attempts: int = 1
    message: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class Submission:
    """What the jobs of one batch run: ``argv(run)`` with ``env``."""

    batch_id: str
    verify_args: tuple[str, ...] = ()  # forwarded options (--policy, --backend, ...)
    env: dict[str, str] = field(default_factory=dict)
    audit: str = "audit"  # the command on the workers

    def argv(self, job: Job) -> list[str]:
        return [self.audit, "verify", job.run_id, "--batch", self.batch_id,
                "--timeout", str(job.timeout_s), *self.verify_args]

    def shell(self, job: Job) -> str:
        return shlex.join(self.argv(job))

    def worker(self, job: Job, engine: str) -> str:
        """The job's stable claim-holder name (``AUDITOR_WORKER``): a retry or a requeue of
        the same job claims its run again; another job or batch cannot."""
        return f"{engine}:{self.batch_id}:{job.run_id}"


def verdict_of(exit_code: int) -> str:
    """The verdict word of a job's exit code (infrastructure exits: could-not-verify)."""
    return VERDICTS.get(exit_code, "could-not-verify")


def retryable(exit_code: int | None) -> bool:
    """An infrastructure exit (could-not-verify, a signal, a lost worker): retried once."""
    return exit_code is None or exit_code not in FINAL


def job_for(record: RunRecord, timeout_s: int | None = None) -> Job:
    """The job of one run: its GPU model and count, and limits from its duration (the
    recorded duration times ``MARGIN`` with a floor, or ``timeout_s`` when given)."""
    acc = record.environment.accelerators
    gpus = acc.gpus if acc else ()
    duration = record.identity.duration_s or 0.0
    limit = timeout_s or max(MIN_TIMEOUT_S, math.ceil(duration * MARGIN))
    return Job(run_id=record.identity.id, name=record.identity.name,
               gpu=gpus[0].name if gpus else None, gpu_count=len(gpus),
               timeout_s=int(limit), wall_s=int(limit) + ALLOWANCE_S)


def plan(store: RunStore, run_ids: Sequence[str], timeout_s: int | None = None) -> list[Job]:
    """The jobs of the runs, in order."""
    return [job_for(store.get_record(run_id), timeout_s) for run_id in run_ids]


def store_env(store: RunStore, environ: dict[str, str]) -> dict[str, str]:
    """The environment a worker needs to reach the team store: its URL (never a password:
    workers take it from ``PGPASSWORD``/``~/.pgpass`` of their own, as every engineer does),
    the artifact location, and the auditor settings set here (``PASSED_ENV``)."""
    url = store.url
    if "***" in url:
        raise InputError(
            f"the store URL {url} holds a password, which a worker's command line or job "
            "record would show", hint="put it in PGPASSWORD or ~/.pgpass on the workers")
    env = {"AUDITOR_STORE": url}
    blobs = getattr(store.blobs, "url", None) or str(getattr(store.blobs, "root", ""))
    if blobs:
        env["AUDITOR_BLOBS"] = blobs
    env.update({k: environ[k] for k in PASSED_ENV if environ.get(k)})
    return env


_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def gpu_label(model: str) -> str:
    """A GPU model as NVIDIA's GPU feature discovery writes ``nvidia.com/gpu.product``
    ("NVIDIA A100-SXM4-80GB" → "NVIDIA-A100-SXM4-80GB"): a valid label value."""
    value = _LABEL_BAD.sub("-", model.strip())[:63].strip("-._")
    if not value:
        raise InputError(f"GPU model {model!r} makes no label value")
    return value


_SHORT = re.compile(r"\b(gb200|gh200|[abhlkmptv]\d{1,3}[a-z]?|rtx\s?\d{4}|gtx\s?\d{3,4})\b")


def gpu_short(model: str) -> str:
    """The short model name engines use for a GPU type ("NVIDIA A100-SXM4-80GB" → "a100",
    Slurm's ``--gres=gpu:a100``, Ray's ``accelerator_type:A100``)."""
    found = _SHORT.search(model.lower().replace("tesla ", ""))
    if not found:
        raise InputError(f"cannot tell the GPU type of {model!r}",
                         hint="the run's GPU model is not one engines name")
    return found.group(1).replace(" ", "")
