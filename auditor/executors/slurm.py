"""Slurm: a batch's jobs as job arrays submitted through ``submitit`` (one array per GPU
model, one task per run).

- Each task runs ``audit verify RUN --batch B`` (``VerifyTask``) with the store URLs in its
  environment and returns the exit code and the node (``SLURMD_NODENAME``).
- ``--gres=gpu:<type>:<count>`` from the recorded GPU (``base.gpu_short``: "NVIDIA
  A100-SXM4-80GB" → ``gpu:a100:1``), the time limit from the original's duration with a
  margin (``base.job_for``), ``--requeue``.
- Requeue on preemption, never on a verdict: ``VerifyTask`` is a submitit
  ``Checkpointable``, so the signal Slurm sends before preempting or timing out a task
  requeues it; a task that returns (whatever its exit code: a verdict, bad input,
  could-not-verify) is done. The rerun a preemption killed issued no certificate (a
  certificate is issued only after the comparison).
- A task past its wall limit is cancelled (``scancel``): could-not-verify.
- The controller not answering (``sbatch`` fails) is could-not-verify (exit 3), one line.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit

from auditor.core.errors import CouldNotVerify
from auditor.executors.base import Job, Outcome, Submission, gpu_short, verdict_of

Say = Callable[[str], None]
POLL_S = 1.0


class VerifyTask(submitit.helpers.Checkpointable):
    """One array task: the verification of one run. Requeued (``checkpoint``) only when
    Slurm signals a preemption or its time limit; a returned exit code is final."""

    def __init__(self, argv: dict[str, list[str]], env: dict[str, str],
                 workers: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.workers = workers  # per run: a requeued task claims its run again

    def __call__(self, run_id: str) -> dict[str, Any]:
        started = time.monotonic()
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        try:
            done = subprocess.run(self.argv[run_id], env={
                **os.environ, **self.env, "AUDITOR_WORKER": self.workers[run_id]},
                check=False, stdin=subprocess.DEVNULL)
        except OSError as exc:  # the worker has no `audit`: infrastructure, not a verdict
            return {"exit": 127, "node": node, "seconds": time.monotonic() - started,
                    "error": f"cannot run {self.argv[run_id][0]}: {exc}"}
        return {"exit": done.returncode, "node": node, "seconds": time.monotonic() - started}


def gres(job: Job) -> str | None:
    """The ``--gres`` of a job's GPU: ``gpu:a100:1``."""
    return f"gpu:{gpu_short(job.gpu)}:{job.gpu_count}" if job.gpu else None


class SlurmExecutor:
    """Submits a batch's jobs to the Slurm controller ``sbatch`` reaches."""

    def __init__(self, folder: Path, *, partition: str | None = None,
                 say: Say = lambda _line: None) -> None:
        self.folder = folder
        self.partition = partition
        self.say = say

    def _groups(self, jobs: Sequence[Job]) -> list[list[Job]]:
        groups: dict[str | None, list[Job]] = {}
        for job in jobs:
            groups.setdefault(gres(job), []).append(job)
        return list(groups.values())

    def _executor(self, group: Sequence[Job]) -> Any:
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=1)
        params: dict[str, Any] = {
            "time": math.ceil(max(j.wall_s for j in group) / 60),
            "array_parallelism": len(group), "job_name": "audit-verify",
            "cpus_per_task": 1, "stderr_to_stdout": True,
            "additional_parameters": {"requeue": True}}
        if gres(group[0]):
            params["gres"] = gres(group[0])
        if self.partition:
            params["partition"] = self.partition
        executor.update_parameters(**params)
        return executor

    def run(self, jobs: Sequence[Job], submission: Submission) -> list[Outcome]:
        logging.getLogger("submitit").setLevel(logging.ERROR)  # its warnings go to stdout
        here = Path(sys.executable).parent / "audit"  # submitit runs this interpreter there
        if submission.audit == "audit" and here.is_file():
            submission = replace(submission, audit=str(here))
        argv = {job.run_id: submission.argv(job) for job in jobs}
        task = VerifyTask(argv, submission.env,
                          {job.run_id: submission.worker(job, "slurm") for job in jobs})
        started = time.monotonic()
        outcomes: dict[str, Outcome] = {}
        submitted: list[tuple[Job, Any]] = []
        for group in self._groups(jobs):
            asked = f" (--gres={gres(group[0])})" if gres(group[0]) else ""
            try:
                array = self._executor(group).map_array(task, [j.run_id for j in group])
            except Exception as exc:  # noqa: BLE001 - sbatch failing comes in many kinds
                why = _first_line(exc)
                if "Unable to contact" in why or "Connection refused" in why:
                    raise CouldNotVerify(f"the Slurm controller did not answer: {why}",
                                         hint="is slurmctld running and reachable?") from None
                for job in group:
                    outcomes[job.run_id] = Outcome(
                        job.run_id, 3, "could-not-verify", attempts=0,
                        message=f"Slurm refused the job{asked}: {why}"
                        + (f" (the run was recorded on {job.gpu})" if job.gpu else ""))
                continue
            submitted += list(zip(group, array, strict=True))
            self.say(f"Slurm array {array[0].job_id.split('_')[0]}: {len(group)} task(s){asked}")
        for job, handle in submitted:
            outcomes[job.run_id] = self._wait(job, handle, started)
        return [outcomes[job.run_id] for job in jobs]

    def _wait(self, job: Job, handle: Any, started: float) -> Outcome:
        gone = 0
        while not handle.done():
            if time.monotonic() - started > job.wall_s:
                handle.cancel(check=False)
                return Outcome(job.run_id, 3, "could-not-verify",
                               message=f"no answer within {job.wall_s} s: Slurm task "
                               f"{handle.job_id} cancelled")
            time.sleep(POLL_S)
            gone = gone + 1 if not _queued(handle.job_id) else 0
            if gone > 5 and not handle.done():  # left the queue without a result
                return Outcome(job.run_id, 3, "could-not-verify",
                               message=f"Slurm task {handle.job_id} ended without a result "
                               "(killed, or its node was lost)")
        try:
            result = handle.result()
        except Exception as exc:  # noqa: BLE001 - submitit's failed/uncompleted job errors
            return Outcome(job.run_id, 3, "could-not-verify",
                           message=f"Slurm task {handle.job_id} failed: {_first_line(exc)}")
        code = int(result["exit"])
        return Outcome(job.run_id, code, verdict_of(code), node=str(result["node"]),
                       message=result.get("error") or f"Slurm task {handle.job_id}",
                       seconds=float(result["seconds"]))


def _queued(job_id: str) -> bool:
    """Whether Slurm still lists the task (pending, running, completing); True when
    squeue cannot say (no answer is not an end)."""
    try:
        shown = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", job_id],
                               capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if shown.returncode != 0:
        return "Invalid job id" not in shown.stderr
    return bool(shown.stdout.strip())


def _first_line(exc: object) -> str:
    """sbatch's own error line where there is one (submitit quotes its stderr), else the
    first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if "error:" in ln]
    return (said[-1] if said else lines[0] if lines else type(exc).__name__)[:300]
