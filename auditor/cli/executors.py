"""``audit verify … --executor kubernetes|slurm|ray://HOST:PORT``: the verifications of a
batch as jobs of an engine (``auditor/executors``). ``verify_cmd`` takes the executor's
options out of its keywords first (``take``: before the policy loader pops the switches a
job must get too) and hands over to ``run`` once the runs are selected."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from auditor.cli.options import OutFolder, hint, say, wants_json
from auditor.core.errors import InputError

if TYPE_CHECKING:
    from auditor.core.policy import Policy
    from auditor.executors.base import Outcome
    from auditor.store import RunStore
    from auditor.store.batches import BatchItem

F = Any


def executor_options(fn: F) -> F:
    """The options of ``audit verify`` that send its runs to an engine."""
    for option in reversed([
        click.option("--executor", metavar="ENGINE",
                     help="Run each verification as a job of kubernetes (with --emit), "
                     "slurm (submitit job arrays) or ray://HOST:PORT (Ray jobs)."),
        click.option("--emit", type=OutFolder,
                     help="--executor kubernetes: write the Indexed Job manifests here."),
        click.option("--image", default=None, help="--executor kubernetes: the image with "
                     "auditor installed (default auditor:latest)."),
        click.option("--queue", default=None, help="--executor kubernetes: a Kueue "
                     "LocalQueue (the GPU model becomes a ResourceFlavor)."),
    ]):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class ExecutorArgs:
    spec: str
    engine: str
    emit: Path | None
    image: str | None
    queue: str | None
    forwarded: tuple[str, ...]  # the options every job's `audit verify` gets
    allow_gpu_mismatch: bool
    policy_text: str | None = None  # kubernetes: the policy file's text for the pods


def take(kw: dict[str, Any]) -> ExecutorArgs | None:
    """The executor's options, out of ``kw`` (None without ``--executor``), and the verify
    options each job repeats. Bad combinations are exit 2 before the store opens."""
    spec, emit = kw.pop("executor", None), kw.pop("emit", None)
    image, queue = kw.pop("image", None), kw.pop("queue", None)
    if not spec:
        if emit or image or queue:
            raise InputError("--emit, --image and --queue go with --executor kubernetes")
        return None
    from auditor.executors import engine_of  # only with --executor

    engine = engine_of(spec)
    if engine == "kubernetes" and not emit:
        raise InputError("--executor kubernetes writes manifests", hint="give --emit DIR")
    if emit:
        from auditor.core.safefile import check_folder

        check_folder(Path(emit))  # a link, FIFO or device: exit 2 before the store opens
    if engine != "kubernetes" and (emit or image or queue):
        raise InputError("--emit, --image and --queue go with --executor kubernetes")
    if kw.get("shard"):
        raise InputError("--shard splits a batch between hosts; an executor spreads it itself")
    for local in ("certificate", "html_path", "markdown_path", "junit_path", "report_dir"):
        if kw.get(local):
            raise InputError(f"--{local.removesuffix('_path').replace('_', '-')} writes "
                             "here; with --executor see `audit batch show BATCH`")
    forwarded: list[str] = []
    policy = kw.get("policy_path") or (Path("auditor.toml") if Path("auditor.toml").is_file()
                                       else None)
    policy_text = None
    if policy and engine != "kubernetes":  # a path the workers share
        forwarded += ["--policy", str(Path(policy).resolve())]
    elif engine == "kubernetes":  # pods get its text (a ConfigMap); empty: the defaults
        policy_text = _policy_text(Path(policy)) if policy else ""
    if kw.get("profile"):
        forwarded += ["--profile", kw["profile"]]
    for flag in ("bitwise", "allow_gpu_mismatch"):
        if kw.get(flag):
            forwarded.append("--" + flag.replace("_", "-"))
    if kw.get("backend"):
        forwarded += ["--backend", kw["backend"]]
    if kw.get("sign_key") and engine != "kubernetes":  # pods: the signing-key Secret
        forwarded += ["--sign-key", str(Path(kw["sign_key"]).resolve())]
    if kw.get("memory") not in (None, "8g"):
        forwarded += ["--memory", kw["memory"]]
    return ExecutorArgs(spec, engine, emit, image, queue, tuple(forwarded),
                        bool(kw.get("allow_gpu_mismatch")), policy_text)


def _policy_text(path: Path) -> str:
    """The policy file's text as the pods will read it (exit 2 when it cannot be read)."""
    from auditor.core.capped import POLICY_LIMIT, read_capped

    try:
        return read_capped(path, POLICY_LIMIT, "policy").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the policy is not UTF-8 text: {exc}") from None


def run(ctx: click.Context, store: RunStore, ids: list[str], policy: Policy,
        ex: ExecutorArgs, batch_id: str | None, timeout_s: int) -> NoReturn:
    """Record the batch, submit (or emit) its jobs, show each outcome, exit with the worst."""
    from auditor.executors import prepare, submit
    from auditor.store.batches import new_batch_id
    from auditor.verify import lacking_certificate

    given = ctx.get_parameter_source("timeout") == click.core.ParameterSource.COMMANDLINE
    lacking, skipped = lacking_certificate(store, ids, policy)
    planned = prepare(store, ids, lacking, skipped, policy, batch_id=batch_id or new_batch_id(),
                      engine=ex.engine, verify_args=ex.forwarded,
                      timeout_s=timeout_s if given else None,  # else from each run's duration
                      needs_env=ex.engine != "kubernetes")
    for run_id, why in skipped:
        hint(ctx, f"{run_id}: skipped: {why}")
    if ex.engine == "kubernetes":
        _emit(ctx, planned.batch_id, planned.jobs, ex)
    if ex.engine == "slurm":
        with tempfile.TemporaryDirectory(prefix="auditor-slurm-", dir=_shared_tmp()) as folder:
            outcomes = submit(ex.spec, planned, allow_gpu_mismatch=ex.allow_gpu_mismatch,
                              say=say(ctx), folder=Path(folder))
    else:
        outcomes = submit(ex.spec, planned, allow_gpu_mismatch=ex.allow_gpu_mismatch,
                          say=say(ctx), folder=Path("."))
    _refuse_unstarted(store, planned.batch_id, outcomes)
    codes = _show(ctx, store, planned.batch_id, outcomes, planned.skipped)
    sys.exit(max(codes, default=0))


def _refuse_unstarted(store: RunStore, batch_id: str, outcomes: list[Outcome]) -> None:
    """A job that ended without a verdict while its run is still ``pending`` never
    started (no node has its GPU): could-not-verify in the batch, not left pending."""
    tables = store.batches()
    for o in outcomes:
        if o.exit_code not in (0, 1, 2):
            tables.refuse(batch_id, o.run_id, o.message or "the job never started")


def exit_code_of(outcome: Outcome, item: BatchItem | None) -> int:
    """One job's exit code, the store's record first: a retried job that found its run
    already ``failed`` in this batch exits 0 (nothing left to do) yet the run was not
    verified, so it counts 3; a signal's or a shell's code (130, 127) is 3 too."""
    code = outcome.exit_code if outcome.exit_code in (0, 1, 2) else 3
    if item is None:
        return code
    if item.state == "failed":
        return 3
    if item.state == "done" and item.exit_code in (0, 1, 2):
        return max(code if code == 3 else 0, int(item.exit_code))
    return code


def _shared_tmp() -> str | None:
    """Where submitit's job folders go: ``$AUDITOR_CACHE`` or ``~/.cache/auditor``, under
    ``slurm-jobs`` (a cluster's nodes share home folders, not /tmp; never the project)."""
    base = Path(os.environ.get("AUDITOR_CACHE") or Path.home() / ".cache" / "auditor")
    folder = base / "slurm-jobs"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder)


def _emit(ctx: click.Context, batch_id: str, jobs: list[Any], ex: ExecutorArgs) -> NoReturn:
    from auditor.executors.kubernetes import DEFAULT_IMAGE, Settings, emit

    assert ex.emit is not None
    settings = Settings(image=ex.image or DEFAULT_IMAGE, queue=ex.queue,
                        verify_args=ex.forwarded, policy=ex.policy_text)
    written = emit(ex.emit, batch_id, jobs, settings) if jobs else []
    if wants_json(ctx):
        click.echo(json.dumps({"batch": batch_id, "manifests": [str(p) for p in written],
                               "runs": [j.run_id for j in jobs]}, indent=1))
    else:
        for path in written:
            click.echo(f"wrote {path}")
        click.echo(f"batch {batch_id}: {len(jobs)} run(s) to verify")
        hint(ctx, f"next: kubectl apply -f {ex.emit}; then `audit batch show {batch_id}`")
    sys.exit(0)


def _show(ctx: click.Context, store: RunStore, batch_id: str, outcomes: list[Outcome],
          skipped: list[str]) -> list[int]:
    """Each job's outcome beside what its worker recorded in the batch (the store is the
    truth: a job whose run another worker held exits 0 and is ``skipped`` there); each
    job's exit code as ``exit_code_of`` reconciles the two."""
    items = {i.run_id: i for i in store.batches().get(batch_id).items}
    rows: list[dict[str, Any]] = []
    codes: list[int] = []
    for o in outcomes:
        item = items.get(o.run_id)
        codes.append(exit_code_of(o, item))
        rows.append({"run": o.run_id, "exit": codes[-1], "job_exit": o.exit_code,
                     "verdict": o.verdict,
                     "state": item.state if item else None,
                     "recorded_verdict": item.verdict if item else None, "node": o.node,
                     "attempts": o.attempts, "seconds": o.seconds,
                     "message": o.message or (item.message if item else "")})
    if wants_json(ctx):
        click.echo(json.dumps({"batch": batch_id, "skipped": skipped, "jobs": rows}, indent=1))
        return codes
    for row in rows:
        where = f" on {str(row['node'])[:12]}" if row["node"] else ""
        tries = f", {row['attempts']} attempts" if row["attempts"] > 1 else ""
        said = row["recorded_verdict"] or row["verdict"]
        if row["state"] == "skipped":
            said = f"skipped ({row['message']})"
        elif row["state"] == "failed":
            said = row["recorded_verdict"] or "could-not-verify"
        click.echo(f"{row['run']}: {said} (exit {row['exit']}{where}{tries})"
                   + (f": {row['message']}" if row["exit"] not in (0, 1) and row["message"]
                      else ""))
    click.echo(f"batch {batch_id}: {len(outcomes)} job(s), {len(skipped)} skipped")
    hint(ctx, f"see `audit batch show {batch_id}`")
    return codes
