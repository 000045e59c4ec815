"""Many verifications at once, on the engines teams already run (issue 21 items 3-5).

We write no scheduler: an executor turns a batch of run ids into jobs of an engine, each
running ``audit verify RUN --batch B`` against the team store, and maps each job's exit
code to a verdict (``base``). The batch and its claim rows are the store's
(``auditor.store.batches``): ``submit`` records the batch, leaves out the runs already
verified under this policy and lock, and submits the rest; a job whose run another batch
holds, or has verified, verifies nothing.

- ``kubernetes``: Indexed Job manifests (``--emit DIR``), never a cluster call.
- ``slurm``: job arrays through submitit.
- ``rayjobs``: Ray jobs through ``JobSubmissionClient`` (``ray://HOST:PORT``).

``executors`` sits at rank 8 beside ``verify``: it uses the store, the record schema and
the CI template folder, and runs verifications only through the ``audit`` command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor.core.errors import InputError
from auditor.core.policy import Policy
from auditor.executors.base import Job, Outcome, Submission, plan, store_env
from auditor.store import RunStore

ENGINES = ("kubernetes", "slurm", "ray://HOST:PORT")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Planned:
    """A recorded batch: the jobs to submit and the runs left out (already verified)."""

    batch_id: str
    jobs: list[Job]
    skipped: list[str]
    submission: Submission


def engine_of(spec: str) -> str:
    """``kubernetes``, ``slurm`` or ``ray`` for an ``--executor`` value."""
    if spec in ("kubernetes", "slurm"):
        return spec
    if spec.startswith(("ray://", "http://", "https://")):
        return "ray"
    raise InputError(f"unknown executor {spec!r}", hint=f"one of: {', '.join(ENGINES)}")


def prepare(store: RunStore, run_ids: Sequence[str], lacking: Sequence[str],
            skipped: Sequence[tuple[str, str]], policy: Policy, *, batch_id: str,
            engine: str, verify_args: Sequence[str] = (), timeout_s: int | None = None,
            needs_env: bool = True) -> Planned:
    """Record the batch and its items in the store (the runs that need no verification,
    ``skipped`` with the reason, as ``auditor.verify.lacking_certificate`` tells), and plan
    a job for each run of ``lacking``."""
    from auditor.store.batches import policy_digest

    batches = store.batches()
    batches.create(batch_id, policy_sha256=policy_digest(policy.table()), executor=engine,
                   selection={"runs": len(run_ids)})
    batches.add_items(batch_id, [(run_id, 1) for run_id in run_ids])
    for run_id, why in skipped:
        batches.skip(batch_id, run_id, why)
    env = store_env(store, dict(os.environ)) if needs_env else {}
    return Planned(batch_id, plan(store, lacking, timeout_s), [r for r, _ in skipped],
                   Submission(batch_id, tuple(verify_args), env))


def submit(spec: str, planned: Planned, *, allow_gpu_mismatch: bool, say: Say,
           folder: Path) -> list[Outcome]:
    """Run the planned jobs on the engine ``spec`` names and wait for them."""
    if not planned.jobs:
        return []
    engine = engine_of(spec)
    if engine == "ray":
        from auditor.executors.rayjobs import RayExecutor

        return RayExecutor(spec, allow_gpu_mismatch=allow_gpu_mismatch,
                           say=say).run(planned.jobs, planned.submission)
    if engine == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise InputError("--executor slurm needs submitit",
                             hint="pip install 'auditor[executors]'") from None
        from auditor.executors.slurm import SlurmExecutor

        return SlurmExecutor(folder, say=say).run(planned.jobs, planned.submission)
    raise InputError("the kubernetes executor writes manifests: give --emit DIR")
