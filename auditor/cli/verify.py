"""``audit lock|build|base-image|rerun|verify``: the pipeline stages, each alone and
composed (``audit compare`` lives in ``cli/experiments.py``). Every command parses,
calls one function of its stage, renders and returns; errors travel up to the single
handler in ``cli/main.py``. Shared options (``-q``, ``--json``, build options,
``--policy``, report targets) come from ``cli/options.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from auditor.cli.executors import executor_options
from auditor.cli.executors import run as run_on_executor
from auditor.cli.executors import take as take_executor
from auditor.cli.options import (
    OutFile,
    OutFolder,
    PathArg,
    build_options,
    hint,
    policy_from,
    policy_options,
    quiet_option,
    report_options,
    report_targets,
    say,
    store_of,
    wants_json,
)
from auditor.core.errors import AuditorError, InputError

if TYPE_CHECKING:
    from auditor.certify.verdict import VerifyResult
    from auditor.core.policy import Policy
    from auditor.store import RunStore
    from auditor.store.batches import Shard
    from auditor.verify import VerifyOptions


def _verify_options(kw: dict[str, Any]) -> VerifyOptions:
    from auditor.verify import VerifyOptions

    return VerifyOptions(
        backend=kw.get("backend"),
        base_image=kw.get("base_image"),
        wheelhouse=kw.get("wheelhouse"),
        ca_bundle=kw.get("ca_bundle"),
        wheel_cache=kw.get("wheel_cache"),
        no_cache=kw.get("no_cache", False),
        strict=kw.get("strict", False),
        sign_key=kw.get("sign_key"),
        certificate=kw.get("certificate"),
        skip_replay=frozenset(kw.get("skip_replay") or ()),
        allow_unhashed=kw.get("allow_unhashed", False),
    )


@click.command("lock")
@click.option("--from", "source", type=PathArg, help="requirements.in or pyproject.toml to lock.")
@click.option("-o", "--output", type=OutFile, default=Path("requirements.lock"), show_default=True)
@click.option(
    "--find-links",
    multiple=True,
    type=PathArg,
    envvar="AUDITOR_WHEELHOUSE",
    help="Wheel folders for pip-compile (e.g. the torch CPU wheel).",
)
@click.option("--check", "check_run", metavar="RUN", help="Report lock drift of a recorded run.")
@click.option("--lint", "lint_file", type=PathArg, help="Validate a lockfile and exit.")
@click.option("--allow-unhashed", is_flag=True, help="Accept a lock without --hash lines.")
@quiet_option
@click.pass_context
def lock(
    ctx: click.Context,
    source: Path | None,
    output: Path,
    find_links: tuple[Path, ...],
    check_run: str | None,
    lint_file: Path | None,
    allow_unhashed: bool,
) -> None:
    """Make a fully pinned, hashed lockfile (pip-tools), or check one."""
    from auditor.core.lockfile import lint_lockfile
    from auditor.env.lock import compile_lock, lock_source, recorded_lock

    if check_run:
        store = store_of(ctx)
        ref = recorded_lock(store, store.get_record(store.resolve(check_run)))
        click.echo(f"{ref.artifact} ({ref.origin}, sha256 {ref.sha256[:12]}…)")
        for line in ref.drift:
            click.echo(f"  drift: {line}")
        click.echo("no drift" if not ref.drift else f"{len(ref.drift)} package(s) drifted")
        sys.exit(1 if ref.drift else 0)
    if lint_file:
        parsed = lint_lockfile(lint_file, allow_unhashed=allow_unhashed)
        click.echo(f"{lint_file}: {len(parsed.packages)} packages, sha256 {parsed.sha256[:12]}…")
        return
    made = compile_lock(source or lock_source(), output, find_links=list(find_links))
    click.echo(f"wrote {output}: {len(made.packages)} packages, sha256 {made.sha256[:12]}…")


@click.command("build")
@click.argument("run")
@build_options
@click.option("--print", "print_only", is_flag=True, help="Show the Dockerfile and exit.")
@quiet_option
@click.pass_context
def build_cmd(ctx: click.Context, /, run: str, print_only: bool, **kw: Any) -> None:
    """Build the pinned environment (image or venv) of a recorded run."""
    from auditor.env.build import render_dockerfile
    from auditor.env.inputs import BuildSettings, build_for, inputs_for  # not verify
    from auditor.rerun.backends import choose  # the sandbox only when a rerun executes

    _check_build_inputs(kw)
    store = store_of(ctx)
    rec = store.get_record(store.resolve(run))
    opts = BuildSettings(
        backend=kw.get("backend"), base_image=kw.get("base_image"),
        wheelhouse=kw.get("wheelhouse"), ca_bundle=kw.get("ca_bundle"),
        wheel_cache=kw.get("wheel_cache"), no_cache=kw.get("no_cache", False),
        strict=kw.get("strict", False), allow_unhashed=kw.get("allow_unhashed", False))
    if print_only:
        named = choose(opts.backend) if opts.backend else None  # --print detects nothing
        click.echo(render_dockerfile(inputs_for(store, rec, opts, named)), nl=False)
        return
    result = build_for(store, rec, opts, choose(opts.backend, say(ctx)), say(ctx))
    if wants_json(ctx):
        click.echo(result.model_dump_json(indent=1, exclude={"log"}))
        return
    state = "cache hit" if result.cached else f"built in {result.seconds:.1f} s"
    click.echo(f"{result.backend} {result.tag} ({result.image_id[:19]}): {state}")
    for line in result.differences:
        click.echo(f"  known environment difference: {line}")


@click.group("base-image")
def base_image() -> None:
    """Base images for air-gapped machines (no registry needed)."""


@base_image.command("build")
@click.option("--release", default="bookworm", show_default=True, help="Debian release.")
@click.option("--tag", default=None, help="Image tag (default: auditor-base:<release>).")
@quiet_option
@click.pass_context
def base_image_build(ctx: click.Context, release: str, tag: str | None) -> None:
    """Create a Debian base image with python3 + venv locally with debootstrap."""
    from auditor.env.baseimage import build_base_image

    made_tag, image_id = build_base_image(release, tag, progress=say(ctx))
    click.echo(f"{made_tag} {image_id}")
    hint(ctx, f"use it with: audit verify RUN --base-image {made_tag}")


@click.command("rerun")
@click.argument("run")
@build_options
@policy_options(bitwise=False)
@quiet_option
@click.pass_context
def rerun_cmd(ctx: click.Context, /, run: str, **kw: Any) -> None:
    """Rebuild and rerun a run hermetically; the rerun is recorded as a new run."""
    from auditor.store.roles import require
    from auditor.verify import rerun_only

    policy = policy_from(kw)  # the repo's auditor.toml, as verify and compare read it
    _check_build_inputs(kw)
    store = store_of(ctx)
    require(store, "record")  # a reader's role fails now, not after the rerun
    rec = store.get_record(store.resolve(run))
    rerun = rerun_only(store, rec, policy.rerun, _verify_options(kw), say(ctx))
    click.echo(
        json.dumps({"rerun": rerun.identity.id, "status": rerun.identity.status})
        if wants_json(ctx)
        else f"rerun {rerun.identity.id} of {rec.identity.id}: "
        f"{rerun.identity.status} (exit {rerun.identity.exit_code})"
    )


@click.command("verify")
@click.argument("run", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Verify every matching run.")
@click.option("--since", metavar="AGE", help="With --all: runs started within AGE (7d, 12h).")
@click.option("--tag", "tags", multiple=True, help="With --all: runs with this tag.")
@click.option("--name", "name_glob", metavar="PATTERN", help="With --all: run names (glob).")
@click.option("--shard", metavar="I/N", help="With --all: only shard I of N (by run id; "
              "implies a batch: runs with a current certificate are skipped).")
@click.option("--batch", "batch_id", metavar="ID", help="Record in batch ID (shared by all "
              "shards; claims in the store keep a run from being verified twice).")
@policy_options()
@click.option("--sign-key", type=PathArg, help="Ed25519 private key to sign the certificate.")
@click.option("--certificate", type=OutFile, help="Also write the certificate here.")
@click.option("--report-dir", type=OutFolder, help="Write each run's HTML report here.")
@report_options
@click.option("--segments", "segments", type=int, metavar="Q",
              help="Spot-check: replay Q segments between the run's checkpoints, chosen by "
                   "the verifier (a lower level than a full rerun).")
@click.option("--segment-seed", metavar="SEED",
              help="With --segments: replay the choice a certificate records.")
@click.option("--resume-at", "resume_at", type=int, metavar="STEP",
              help="Resume equivalence: resume from the checkpoint at STEP, train to the "
                   "end and compare with the uninterrupted run.")
@click.option("--profile", metavar="NAME",
              help="Tolerance profile: strict, standard, relaxed (or the project's own).")
@click.option("--timeout", default=3600, show_default=True, help="Rerun wall-clock limit (s).")
@click.option("--memory", default="8g", show_default=True, help="Rerun memory limit.")
@click.option(
    "--skip-replay",
    multiple=True,
    hidden=True,
    help="TEST ONLY: do not replay a setting (pythonhashseed, threads, env).",
)
@build_options
@executor_options
@quiet_option
@click.pass_context
def verify_cmd(ctx: click.Context, /, run: str | None, all_runs: bool, **kw: Any) -> None:
    """Rebuild, rerun, compare and certify: exit 0 reproduced, 1 not, 3 could not verify.

    With --segments Q, a spot-check replays Q segments between the run's checkpoints; with
    --resume-at STEP, the run resumes from its checkpoint at STEP and must match the
    uninterrupted run."""
    from auditor.store.roles import require

    if bool(run) == all_runs:
        raise InputError("give exactly one of RUN or --all")
    if kw.get("shard") and not all_runs:
        raise InputError("--shard splits --all", hint="use --all --shard I/N")
    partial = _partial(kw, all_runs)
    if partial is not None and (kw.get("batch_id") or kw.get("shard")):
        raise InputError("--segments and --resume-at are not part of a batch",
                         hint="leave out --batch/--shard")
    executor = take_executor(kw)  # before policy_from: jobs repeat the policy switches
    if partial is not None and executor is not None:
        raise InputError("--segments and --resume-at run here, not on an executor",
                         hint="leave out --executor")
    targets = report_targets(kw)
    if all_runs and "html" in targets:
        raise InputError("--html writes one run's report", hint="with --all use --report-dir")
    _check_inputs(targets, kw)  # before the store, any build or rerun: bad input is exit 2 now
    profile = kw.pop("profile", None)
    policy = policy_from(kw) if profile is None else _profiled(kw, profile)
    opts = _verify_options(kw)
    opts = replace(
        opts, limits=replace(opts.limits, timeout_s=kw["timeout"], mem_limit=kw["memory"])
    )
    batch = _batch_args(kw)
    store = store_of(ctx)
    require(store, "verify")  # only a verifier's role appends certificates: fail now
    if all_runs:
        from auditor.store.query import verifiable_runs

        ids = verifiable_runs(store, since=kw.get("since"), tags=kw.get("tags") or (),
                              name=kw.get("name_glob"))
    else:
        ids = [store.resolve(run or "")]
    if executor is not None:
        run_on_executor(ctx, store, ids, policy, executor, batch[0] if batch else None,
                        kw["timeout"])
    failures: list[tuple[str, int, str]] = []
    if partial is not None:
        results = [_verify_partial(ctx, store, ids[0], policy, opts, partial)]
    elif batch is not None:
        results, failures = _verify_batch(ctx, store, ids, policy, opts, batch, kw,
                                          single=not all_runs)
    else:
        results, failures = _verify_many(ctx, store, ids, policy, opts)
    _write_reports(results, targets, kw.get("report_dir"))
    _render(ctx, results, failures, single=not all_runs)
    codes = [r.verdict.exit_code for r in results] + [code for _, code, _ in failures]
    sys.exit(max(codes) if codes else 0)


def _batch_args(kw: dict[str, Any]) -> tuple[str, Shard] | None:
    """``--batch ID`` and ``--shard I/N``, checked before the store opens (exit 2)."""
    if not kw.get("batch_id") and not kw.get("shard"):
        return None
    from auditor.store.batches import ALL, new_batch_id, parse_shard, validate_batch_id

    shard = parse_shard(kw["shard"]) if kw.get("shard") else ALL
    return validate_batch_id(kw["batch_id"]) if kw.get("batch_id") else new_batch_id(), shard


def _verify_batch(ctx: click.Context, store: RunStore, ids: list[str], policy: Policy,
                  opts: VerifyOptions, batch: tuple[str, Shard], kw: dict[str, Any], *,
                  single: bool) -> tuple[list[VerifyResult], list[tuple[str, int, str]]]:
    from auditor.verify import verify_batch

    selection = {k: kw.get(k) for k in ("since", "tags", "name_glob") if kw.get(k)}
    done = verify_batch(store, ids, policy, opts, batch_id=batch[0], shard=batch[1],
                        selection=selection, report_dir=kw.get("report_dir"),
                        progress=say(ctx))
    if single and done.failures:  # one RUN: its own error, as without --batch
        error = AuditorError(done.failures[0][2])
        error.exit_code = done.failures[0][1]
        raise error
    if not wants_json(ctx):
        click.echo(f"batch {done.batch_id} shard {batch[1]}: {len(done.results)} verified, "
                   f"{len(done.failures)} could not be verified, {len(done.skipped)} skipped",
                   err=True)
        for run_id, why in done.skipped:
            click.echo(f"{run_id}: skipped: {why}", err=True)
    return done.results, done.failures


def _partial(kw: dict[str, Any], all_runs: bool) -> tuple[str, int, str | None] | None:
    """``("segments", Q, seed)`` or ``("resume", STEP, None)`` from the options; None for
    a full verification. Combinations that mean nothing are exit 2."""
    q, seed, step = kw.pop("segments", None), kw.pop("segment_seed", None), \
        kw.pop("resume_at", None)
    if seed is not None and q is None:
        raise InputError("--segment-seed needs --segments Q")
    if q is not None and step is not None:
        raise InputError("give one of --segments and --resume-at")
    if (q is not None or step is not None) and all_runs:
        raise InputError("--segments and --resume-at verify one run", hint="give RUN, not --all")
    if q is not None:
        if q < 1:
            raise InputError(f"--segments {q}: replay at least one segment")
        return ("segments", q, seed)
    if step is not None:
        if step < 0:
            raise InputError(f"--resume-at {step}: a step is a count of updates, 0 or more")
        return ("resume", step, None)
    return None


def _profiled(kw: dict[str, Any], profile: str) -> Policy:
    """``policy_from`` with a tolerance profile chosen on the command line."""
    from auditor.core.policy import load_policy, policy_path

    policy = load_policy(policy_path(kw.pop("policy_path", None)),
                         bitwise=bool(kw.pop("bitwise", False)), profile=profile)
    return policy.with_gpu_mismatch() if kw.pop("allow_gpu_mismatch", False) else policy


def _verify_partial(ctx: click.Context, store: RunStore, run_id: str, policy: Policy,
                    opts: VerifyOptions, partial: tuple[str, int, str | None]
                    ) -> VerifyResult:
    from auditor.spotcheck import resume_check, spot_check
    from auditor.verify import preflight

    record = store.get_record(run_id)
    kind, number, seed = partial
    notes = preflight(store, record, policy, opts)
    if kind == "segments":
        return spot_check(store, record, policy, opts, number, seed, notes=notes,
                          progress=say(ctx))
    return resume_check(store, record, policy, opts, number, notes=notes, progress=say(ctx))


def _check_inputs(targets: dict[str, Path], kw: dict[str, Any]) -> None:
    """Every input a verify reads or writes at its end, checked before any work is done:
    each report target and the certificate (``core.safefile``: no link, FIFO, device or
    folder; its folder takes a new file), the report folder, and the signing key (a
    readable Ed25519 private key). The policy is parsed next, by ``policy_from``."""
    from auditor.core.keys import load_private_key
    from auditor.core.safefile import check_folder, check_target

    for target in targets.values():
        check_target(Path(target))
    if kw.get("certificate"):
        check_target(Path(kw["certificate"]))
    if kw.get("report_dir"):
        check_folder(Path(kw["report_dir"]))
    if kw.get("sign_key"):
        load_private_key(Path(kw["sign_key"]))
    _check_build_inputs(kw)


CA_BUNDLE_LIMIT = 64 << 20


def _check_build_inputs(kw: dict[str, Any]) -> None:
    """``--ca-bundle`` a readable regular file (a FIFO would block the build's hashing),
    ``--wheelhouse`` a folder: checked before the store opens or a build starts."""
    from auditor.core.capped import read_capped

    if kw.get("ca_bundle"):
        read_capped(Path(kw["ca_bundle"]), CA_BUNDLE_LIMIT, "CA bundle")
    if kw.get("wheelhouse") and not Path(kw["wheelhouse"]).is_dir():
        raise InputError(f"wheelhouse {kw['wheelhouse']} is not a folder",
                         hint="pass --wheelhouse DIR")
    if kw.get("wheel_cache"):  # written: a real folder, or one that can be made
        from auditor.core.safefile import check_folder

        check_folder(Path(kw["wheel_cache"]))


def _verify_many(
    ctx: click.Context, store: RunStore, ids: list[str], policy: Policy, opts: VerifyOptions
) -> tuple[list[VerifyResult], list[tuple[str, int, str]]]:
    from auditor.verify import verify

    results, failures = [], []
    for run_id in ids:
        try:
            results.append(verify(store, store.get_record(run_id), policy, opts, say(ctx)))
        except AuditorError as exc:
            if len(ids) == 1:
                raise
            failures.append((run_id, exc.exit_code, str(exc)))  # --all continues
    return results, failures


def _write_reports(results: list[VerifyResult], targets: dict[str, Path],
                   report_dir: Path | None) -> None:
    from auditor.report.formats import write_reports

    if report_dir:
        from auditor.core.safefile import check_folder

        check_folder(Path(report_dir))  # again: a folder swapped for a link is refused
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        for r in results:
            write_reports([r], {"html": Path(report_dir) / f"{r.original_run}.html"})
    if targets:  # --all: also when nothing matched (an empty summary says so)
        write_reports(results, targets)


def _render(ctx: click.Context, results: list[VerifyResult],
            failures: list[tuple[str, int, str]], single: bool) -> None:
    if wants_json(ctx):
        click.echo(
            json.dumps(
                {
                    "results": [json.loads(r.model_dump_json()) for r in results],
                    "errors": [{"run": i, "exit": c, "error": m} for i, c, m in failures],
                },
                indent=1,
            )
        )
        return
    from auditor.report.terminal import print_result, print_summary

    if single and results:
        print_result(results[0])
    else:
        print_summary(results)
        for run_id, code, message in failures:
            click.echo(f"{run_id}: could not verify (exit {code}): {message}", err=True)


COMMANDS: tuple[click.Command, ...] = (
    lock,
    build_cmd,
    base_image,
    rerun_cmd,
    verify_cmd,
)
