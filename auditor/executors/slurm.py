"""Slurm: a batch's jobs as job arrays submitted through ``submitit`` (one array per GPU
model, one task per run).

- Each task runs ``audit verify RUN --batch B`` (``VerifyTask``) with the store URLs in its
  environment and returns the exit code and the node (``SLURMD_NODENAME``).
- ``--gres=gpu:<type>:<count>`` from the recorded GPU (``base.gpu_short``: "NVIDIA
  A100-SXM4-80GB" → ``gpu:a100:1``), the time limit from the original's duration with a
  margin (``base.job_for``), ``--requeue``.
- Requeue on preemption, never on a verdict. A preemption (``PreemptMode=REQUEUE``), an
  ``scontrol requeue`` or a node failure ends the running task with SIGTERM (then SIGKILL)
  and Slurm starts it again (after ``AuthInfo=cred_expire``, 120 s by default). The task's
  ``audit verify`` runs with SIGTERM blocked, so Slurm's signal reaches only ``VerifyTask``:
  when Slurm has counted a restart of the task (``scontrol show job``: ``Restarts``), it
  kills the verification (its claim stays open to the same worker name) and exits without
  a result, so the requeued task claims the run again and its result is the only one;
  otherwise (``scancel``, our wall limit) it interrupts the verification (SIGINT), which
  records could-not-verify. A task that returns (whatever its exit code: a verdict, bad
  input, could-not-verify) is done: Slurm requeues no exit code. The killed attempt issued
  no certificate (a certificate is issued only after the comparison). Submitit's own
  time-limit signal (USR2) checkpoints and requeues the task once (``max_num_timeout=1``).
- A task past its wall limit is cancelled (``scancel``): could-not-verify.
- The controller not answering (``sbatch`` fails) is could-not-verify (exit 3), one line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
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
    """One array task: the verification of one run. Started again only when Slurm
    requeues it (preemption, ``scontrol requeue``, a lost node, submitit's time-limit
    checkpoint); a returned exit code is final."""

    def __init__(self, argv: dict[str, list[str]], env: dict[str, str],
                 workers: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.workers = workers  # per run: a requeued task claims its run again

    def __call__(self, run_id: str) -> dict[str, Any]:
        started = time.monotonic()
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        env = {**os.environ, **self.env, "AUDITOR_WORKER": self.workers[run_id]}
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the child inherits it
        try:
            child = subprocess.Popen(self.argv[run_id], env=env, stdin=subprocess.DEVNULL)
            signal.signal(signal.SIGTERM, lambda _sig, _frame: _terminated(child))
        except OSError as exc:  # the worker has no `audit`: infrastructure, not a verdict
            return {"exit": 127, "node": node, "seconds": time.monotonic() - started,
                    "error": f"cannot run {self.argv[run_id][0]}: {exc}"}
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        return {"exit": child.wait(), "node": node, "seconds": time.monotonic() - started,
                "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1}


def _terminated(child: subprocess.Popen[bytes]) -> None:
    """Slurm's SIGTERM to this task. Requeued (Slurm counted one more restart than this
    attempt's ``SLURM_RESTART_COUNT``, or gave no answer): the verification is killed
    before it can close its claim, and the task exits without a result (the requeued
    task's is the result). Cancelled: the verification is interrupted and records
    could-not-verify."""
    restarts = _restarts(os.environ.get("SLURM_JOB_ID", ""))
    ours = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if restarts is None or restarts > ours:
        for pid in [child.pid, *_descendants(child.pid)]:  # the rerun too: nothing closes
            with contextlib.suppress(ProcessLookupError):  # the claim, nothing writes
                os.kill(pid, signal.SIGKILL)
        child.wait()
        sys.stderr.write(f"auditor: Slurm requeues this task (restart {ours + 1}): the "
                         "verification was stopped and runs again\n")
        sys.stderr.flush()
        os._exit(143)  # no result file: the requeued task writes it
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGINT)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc), before any of them is killed."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        above = todo.pop()
        below = [p for p, parent in parents.items() if parent == above]
        found += below
        todo += below
    return found


def _restarts(job_id: str) -> int | None:
    """How many times Slurm has requeued the task (``scontrol show job``: ``Restarts``,
    counted when the requeue is decided), None when Slurm does not answer."""
    if not job_id:
        return None
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                               text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for field in shown.stdout.split():
        if field.startswith("Restarts=") and field[9:].isdigit():
            return int(field[9:])
    return None


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
                       attempts=int(result.get("attempt", 1)),
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
