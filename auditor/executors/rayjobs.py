"""Ray: each verification is a Ray job (``JobSubmissionClient``) whose entrypoint is
``audit verify RUN --batch B`` against the team store.

- ``--executor ray://HOST:PORT`` names the cluster's job server (the dashboard port,
  8265 by default; ``http://`` and ``https://`` addresses are taken as they are).
- The recorded GPU model becomes Ray's accelerator resource, ``accelerator_type:<TYPE>``
  (``A100``, ``H100``, … as Ray names it on a node with that GPU), in
  ``entrypoint_resources``: the job lands only on a matching node. A cluster with ``GPU``
  resources is also asked for the recorded number of GPUs. A model no node offers is
  could-not-verify (exit 3) naming it, before anything is submitted, unless the policy
  allows a GPU mismatch (then the job runs anywhere and its certificate says so).
- The store URL and artifact location go to the job as ``runtime_env`` variables, never
  a password (``base.store_env``).
- Logs are followed with ``tail_job_logs``; when that stream ends while the job still runs
  (Ray's tail ends silently when the connection drops) it reconnects, skipping what was
  already shown.
- Exit codes map to verdicts (``base.verdict_of``); an infrastructure exit (a killed
  worker, a lost node, exit 3) is submitted again once, as a new Ray job under the same
  claim-holder name (``AUDITOR_WORKER``), so it claims the run its lost attempt held. A job past its
  wall limit is stopped: could-not-verify. Idempotency is the store's claim rows, never
  Ray's ``submission_id`` (every attempt gets a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from auditor.core.errors import CouldNotVerify, InputError
from auditor.executors.base import (
    MAX_ATTEMPTS,
    Job,
    Outcome,
    Submission,
    gpu_short,
    retryable,
    verdict_of,
)

Say = Callable[[str], None]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 0.5
RECONNECT_S = 1.0
FLUSH_S = 30.0  # how long the last log lines may take once the job ended


def job_server(address: str) -> str:
    """``ray://HOST:PORT`` (or an http(s) URL) as the job server's URL."""
    parts = urlsplit(address)
    if parts.scheme not in ("ray", "http", "https") or not parts.hostname:
        raise InputError(f"not a Ray address: {address!r}", hint="use ray://HOST:PORT")
    try:
        port = parts.port or 8265
    except ValueError as exc:
        raise InputError(f"not a Ray address: {address!r}: {exc}") from None
    scheme = "http" if parts.scheme == "ray" else parts.scheme
    return f"{scheme}://{parts.hostname}:{port}"


def accelerator(model: str) -> str:
    """Ray's accelerator resource for a GPU model ("NVIDIA A100-SXM4-80GB" →
    ``accelerator_type:A100``)."""
    return f"accelerator_type:{gpu_short(model).upper()}"


@dataclass
class _Cluster:
    resources: list[dict[str, float]]  # each alive node's total resources

    def offers(self, resource: str) -> bool:
        return any(node.get(resource, 0) > 0 for node in self.resources)

    @property
    def has_gpus(self) -> bool:
        return self.offers("GPU")


class RayExecutor:
    """Submits a batch's jobs to one Ray cluster and waits for them."""

    def __init__(self, address: str, *, allow_gpu_mismatch: bool = False,
                 say: Say = lambda _line: None, follow_logs: bool = True) -> None:
        self.url = job_server(address)
        self.allow_gpu_mismatch = allow_gpu_mismatch
        self.say = say
        self.follow_logs = follow_logs
        self.client = self._connect()

    def _connect(self) -> Any:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise InputError("--executor ray needs Ray's job client",
                             hint="pip install 'auditor[executors]'") from None
        try:
            return JobSubmissionClient(self.url)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, …
            raise CouldNotVerify(f"the Ray cluster at {self.url} did not answer: "
                                 f"{_first_line(exc)}",
                                 hint="start it, or check --executor ray://HOST:PORT") from None

    def cluster(self) -> _Cluster:
        """Each alive node's resources, from the job server's state API."""
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.url, filters=[("state", "=", "ALIVE")],
                               detail=True, raise_on_missing_output=False)
        except Exception as exc:  # noqa: BLE001 - the state API raises many kinds
            raise CouldNotVerify(f"the Ray cluster at {self.url} did not list its nodes: "
                                 f"{_first_line(exc)}") from None
        return _Cluster([dict(getattr(n, "resources_total", None) or {}) for n in nodes])

    def resources(self, job: Job, cluster: _Cluster) -> tuple[dict[str, float], float]:
        """``entrypoint_resources`` and ``entrypoint_num_gpus`` of a job."""
        if not job.gpu:
            return {}, 0.0
        wanted = accelerator(job.gpu)
        if not cluster.offers(wanted):
            if self.allow_gpu_mismatch:
                self.say(f"{job.run_id}: no node of {self.url} has a {job.gpu} "
                         f"({wanted}); the policy allows a GPU mismatch")
                return {}, 0.0
            raise CouldNotVerify(
                f"run {job.run_id} was recorded on {job.gpu}: no node of the Ray cluster at "
                f"{self.url} offers {wanted}",
                hint="add a node with that GPU, or allow_gpu_mismatch in the policy")
        return {wanted: 0.001}, float(job.gpu_count) if cluster.has_gpus else 0.0

    def run(self, jobs: Sequence[Job], submission: Submission) -> list[Outcome]:
        """Submit every job, follow them, and return their outcomes in order."""
        cluster = self.cluster()
        placed: list[tuple[Job, dict[str, float], float] | Outcome] = []
        for job in jobs:  # every placement checked before anything is submitted
            try:
                placed.append((job, *self.resources(job, cluster)))
            except CouldNotVerify as exc:
                self.say(f"{job.run_id}: could not verify: {exc}")
                placed.append(Outcome(job.run_id, 3, "could-not-verify", attempts=0,
                                      message=str(exc)))
        return asyncio.run(self._all(placed, submission))

    async def _all(self, placed: Sequence[tuple[Job, dict[str, float], float] | Outcome],
                   submission: Submission) -> list[Outcome]:
        async def one(item: tuple[Job, dict[str, float], float] | Outcome) -> Outcome:
            return item if isinstance(item, Outcome) else await self._one(*item, submission)

        return list(await asyncio.gather(*(one(item) for item in placed)))

    async def _one(self, job: Job, resources: dict[str, float], gpus: float,
                   submission: Submission) -> Outcome:
        started = time.monotonic()
        message = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                job_id = await asyncio.to_thread(
                    self.client.submit_job, entrypoint=submission.shell(job),
                    runtime_env={"env_vars": {**submission.env,
                                              "AUDITOR_WORKER": submission.worker(job, "ray")}},
                    metadata={"auditor_batch": submission.batch_id, "auditor_run": job.run_id,
                              "auditor_attempt": str(attempt)},
                    entrypoint_num_cpus=1, entrypoint_num_gpus=gpus or None,
                    entrypoint_resources=resources or None)
            except Exception as exc:  # noqa: BLE001 - a lost server, a refused submission
                # tried again: were it submitted after all, the claim keeps it to one rerun
                message = f"Ray did not take the job: {_first_line(exc)}"
                self.say(f"{job.run_id}: attempt {attempt}: {message}")
                continue
            self.say(f"{job.run_id}: Ray job {job_id} (attempt {attempt})")
            status, code, node, message = await self._wait(job, job_id, started)
            if status == "TIMEOUT":
                return Outcome(job.run_id, 3, "could-not-verify", node, attempt, message,
                               time.monotonic() - started)
            if not retryable(code) and code is not None:
                return Outcome(job.run_id, code, verdict_of(code), node, attempt, message,
                               time.monotonic() - started)
            self.say(f"{job.run_id}: attempt {attempt} ended without a verdict ({message})")
        return Outcome(job.run_id, 3, "could-not-verify", None, MAX_ATTEMPTS,
                       f"no verdict after {MAX_ATTEMPTS} attempts: {message}",
                       time.monotonic() - started)

    async def _wait(self, job: Job, job_id: str, started: float
                    ) -> tuple[str, int | None, str | None, str]:
        """Follow the job to its end (or the wall limit): status, exit code, node, why."""
        deadline = started + job.wall_s
        follow = asyncio.create_task(self._follow(job, job_id)) if self.follow_logs else None
        try:
            while True:
                info = await asyncio.to_thread(self.client.get_job_info, job_id)
                status = str(getattr(info.status, "value", info.status))
                if status in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    await asyncio.to_thread(self.client.stop_job, job_id)
                    return ("TIMEOUT", None, _node(info),
                            f"no answer within {job.wall_s} s: the Ray job was stopped")
                await asyncio.sleep(POLL_S)
        finally:
            if follow is not None:  # it ends by itself once it has shown the whole log
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(follow), FLUSH_S)
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)
        code = getattr(info, "driver_exit_code", None)
        if status == "SUCCEEDED":
            code = 0
        why = f"Ray job {job_id} {status.lower()}" + (f" (exit {code})" if code is not None
                                                      else "")
        if status == "FAILED" and info.message:
            why += f": {_first_line(info.message)}"
        return status, code, _node(info), why

    async def _follow(self, job: Job, job_id: str) -> None:
        """Show the job's log lines, reconnecting when the tail ends early."""
        shown = 0
        while True:
            seen = 0
            try:
                async for chunk in self.client.tail_job_logs(job_id):
                    seen += len(chunk)
                    if seen > shown:  # a reconnect replays the log from its start
                        self._show(job, chunk[len(chunk) - (seen - shown):])
                        shown = seen
            except Exception as exc:  # noqa: BLE001 - a dropped connection is not an end
                self.say(f"{job.run_id}: log stream lost ({_first_line(exc)}); reconnecting")
            status = await asyncio.to_thread(self.client.get_job_status, job_id)
            if str(getattr(status, "value", status)) in TERMINAL:
                rest = await asyncio.to_thread(self.client.get_job_logs, job_id)
                if len(rest) > shown:
                    self._show(job, rest[shown:])
                return
            await asyncio.sleep(RECONNECT_S)

    def _show(self, job: Job, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.say(f"[{job.run_id[:10]}] {line}")


def _node(info: Any) -> str | None:
    node = getattr(info, "driver_node_id", None)
    return str(node) if node else None


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
