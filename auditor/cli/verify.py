"""``audit lock|build|base-image|rerun|compare|verify``: the pipeline stages, each alone
and composed. Every command parses, calls one function, renders and returns; errors
travel up to the single handler in ``cli.py``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from auditor.cli.release import store_of, wants_json
from auditor.core.errors import AuditorError, InputError
from auditor.store import RunStore

PathArg = click.Path(path_type=Path)


def _say(quiet: bool) -> Callable[[str], None]:
    from auditor.report.records import console

    err = console(err=True)
    return (lambda _line: None) if quiet else (lambda line: err.print(f"[dim]·[/] {line}"))


def build_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by build, rerun and verify."""
    for option in reversed(
        [
            click.option(
                "--backend",
                metavar="NAME",
                help="Build/run backend: docker or venv (default: docker when an engine "
                "answers, else venv; auditor.rerun.backends lists them).",
            ),
            click.option(
                "--base-image",
                metavar="REF",
                envvar="AUDITOR_BASE_IMAGE",
                help="Base image (default: python:<recorded>-slim pinned by digest; "
                "offline: build one with `audit base-image build`).",
            ),
            click.option(
                "--wheelhouse",
                type=PathArg,
                envvar="AUDITOR_WHEELHOUSE",
                help="Folder of wheels the index lacks (find-links), e.g. torch's CPU wheel.",
            ),
            click.option(
                "--ca-bundle",
                type=PathArg,
                envvar="AUDITOR_CA_BUNDLE",
                help="TLS CA bundle for a proxied package index (build input only).",
            ),
            click.option("--no-cache", is_flag=True, help="Rebuild even when an image exists."),
            click.option(
                "--strict", is_flag=True, help="Refuse a base image not pinned by digest."
            ),
            click.option(
                "--allow-unhashed", is_flag=True, help="Accept a lockfile without hashes."
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _verify_options(kw: dict[str, Any]) -> Any:
    from auditor.verify import VerifyOptions

    return VerifyOptions(
        backend=kw.get("backend"),
        base_image=kw.get("base_image"),
        wheelhouse=kw.get("wheelhouse"),
        ca_bundle=kw.get("ca_bundle"),
        no_cache=kw.get("no_cache", False),
        strict=kw.get("strict", False),
        sign_key=kw.get("sign_key"),
        certificate=kw.get("certificate"),
        skip_replay=frozenset(kw.get("skip_replay") or ()),
        allow_unhashed=kw.get("allow_unhashed", False),
    )


@click.command("lock")
@click.option("--from", "source", type=PathArg, help="requirements.in or pyproject.toml to lock.")
@click.option("-o", "--output", type=PathArg, default=Path("requirements.lock"), show_default=True)
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
    from auditor.core import lockfile as lockmod
    from auditor.env.lock import compile_lock

    if check_run:
        store = store_of(ctx)
        rec = store.get_record(store.resolve(check_run))
        ref = rec.environment.python.lock if rec.environment.python else None
        if ref is None:
            raise InputError(f"run {rec.identity.id} has no lockfile")
        click.echo(f"{ref.artifact} ({ref.origin}, sha256 {ref.sha256[:12]}…)")
        lockmod.parse_recorded_lock(
            store.blobs.read_bytes(ref.sha256, ref.artifact), ref.artifact, ref.kind
        )
        for line in ref.drift:
            click.echo(f"  drift: {line}")
        click.echo("no drift" if not ref.drift else f"{len(ref.drift)} package(s) drifted")
        sys.exit(1 if ref.drift else 0)
    if lint_file:
        parsed = lockmod.lint_lockfile(lint_file, allow_unhashed=allow_unhashed)
        click.echo(f"{lint_file}: {len(parsed.packages)} packages, sha256 {parsed.sha256[:12]}…")
        return
    if source is None:
        source = next(
            (p for p in (Path("requirements.in"), Path("pyproject.toml")) if p.exists()), None
        )
        if source is None:
            raise InputError(
                "nothing to lock: no requirements.in or pyproject.toml here",
                hint="pass --from FILE",
            )
    made = compile_lock(source, output, find_links=list(find_links))
    click.echo(f"wrote {output}: {len(made.packages)} packages, sha256 {made.sha256[:12]}…")


@click.command("build")
@click.argument("run")
@build_options
@click.option("--print", "print_only", is_flag=True, help="Show the Dockerfile and exit.")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def build_cmd(ctx: click.Context, /, run: str, print_only: bool, quiet: bool, **kw: Any) -> None:
    """Build the pinned environment (image or venv) of a recorded run."""
    from auditor.env.build import render_dockerfile
    from auditor.env.inputs import BuildSettings, build_for, inputs_for  # not verify
    from auditor.rerun.backends import choose  # the sandbox only when a rerun executes

    store = store_of(ctx)
    rec = store.get_record(store.resolve(run))
    opts = BuildSettings(
        backend=kw.get("backend"), base_image=kw.get("base_image"),
        wheelhouse=kw.get("wheelhouse"), ca_bundle=kw.get("ca_bundle"),
        no_cache=kw.get("no_cache", False), strict=kw.get("strict", False),
        allow_unhashed=kw.get("allow_unhashed", False))
    if print_only:
        named = choose(opts.backend) if opts.backend else None  # --print detects nothing
        click.echo(render_dockerfile(inputs_for(store, rec, opts, named)), nl=False)
        return
    result = build_for(store, rec, opts, choose(opts.backend, _say(quiet)), _say(quiet))
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
@click.option("-q", "--quiet", is_flag=True)
def base_image_build(release: str, tag: str | None, quiet: bool) -> None:
    """Create a Debian base image with python3 + venv locally with debootstrap."""
    from auditor.env.baseimage import build_base_image

    made_tag, image_id = build_base_image(release, tag, progress=_say(quiet))
    click.echo(f"{made_tag} {image_id}")
    click.echo(f"use it with: audit verify RUN --base-image {made_tag}")


@click.command("rerun")
@click.argument("run")
@build_options
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def rerun_cmd(ctx: click.Context, /, run: str, quiet: bool, **kw: Any) -> None:
    """Rebuild and rerun a run hermetically; the rerun is recorded as a new run."""
    from auditor.core.policy import load_policy
    from auditor.verify import rerun_only

    store = store_of(ctx)
    rec = store.get_record(store.resolve(run))
    policy = load_policy(_policy_path(None))  # the repo's auditor.toml, as verify reads it
    rerun = rerun_only(store, rec, policy.rerun, _verify_options(kw), _say(quiet))
    click.echo(
        json.dumps({"rerun": rerun.identity.id, "status": rerun.identity.status})
        if wants_json(ctx)
        else f"rerun {rerun.identity.id} of {rec.identity.id}: "
        f"{rerun.identity.status} (exit {rerun.identity.exit_code})"
    )


@click.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--policy", "policy_path", type=PathArg, help="Policy file (auditor.toml).")
@click.option("--bitwise", is_flag=True, help="Demand bit-identity.")
@click.option("--html", "html_path", type=PathArg,
              help="Also write a self-contained comparison page (any number of runs; "
              "opens offline).")
@click.option("--metric", help="With --html: the metric for importance and parallel axes.")
@click.pass_context
def compare_cmd(
    ctx: click.Context, runs: tuple[str, ...], policy_path: Path | None, bitwise: bool,
    html_path: Path | None, metric: str | None,
) -> None:
    """Compare two runs (metrics, weights, files, params, environment; exit 0 when they
    agree), or write N runs' comparison page with --html FILE."""
    from auditor.certify.decide import decide
    from auditor.compare import compare_runs, evidence_from_store
    from auditor.core.policy import load_policy

    store = store_of(ctx)
    if html_path is not None:
        from auditor.ui.export import export_comparison

        export_comparison(store, list(runs), html_path, metric)
        click.echo(f"wrote {html_path} ({len(runs)} runs)", err=True)
        if len(runs) != 2:
            return
    elif len(runs) != 2:
        from auditor.core.errors import InputError

        raise InputError(f"compare takes two runs ({len(runs)} given)",
                         hint="pass --html FILE to compare more")
    left, right = runs
    a, b = (store.get_record(store.resolve(r)) for r in (left, right))
    policy = load_policy(_policy_path(policy_path), bitwise=bitwise)
    diffs = compare_runs(evidence_from_store(store, a), evidence_from_store(store, b),
                         policy.compare)
    verdict = decide(diffs, a, b, policy)
    if wants_json(ctx):
        click.echo(verdict.model_dump_json(indent=1))
    else:
        _print_verdict(verdict, a.identity.id, b.identity.id)
    sys.exit(verdict.exit_code)


def _print_verdict(verdict: Any, left: str, right: str) -> None:
    from rich.text import Text

    from auditor.report.grouping import cause_line
    from auditor.report.records import console

    out = console()
    for line in verdict.loosenings:  # first: what the policy let through
        out.print(Text(f"policy loosened: {line}", style="yellow"))
    out.print(f"[bold]{verdict.level}[/]  {left} vs {right}")
    if verdict.first_divergence:
        out.print(f"  diverges first at {verdict.first_divergence}")
    for kind, diffs in verdict.differences.items():
        for d in diffs[:8]:
            mark = "~" if d.within_tolerance else "✗"
            out.print(
                f"  {mark} {d.where}: {d.left} → {d.right}"
                if d.left or d.right
                else f"  {mark} {d.where} ({d.kind})"
            )
        if len(diffs) > 8:
            out.print(f"  … {len(diffs) - 8} more {kind} differences")
    for cause in verdict.causes[:3]:
        line = cause_line(cause)
        sided = (cause.left, cause.right) != (None, None)
        out.print(Text(f"  likely cause: {line}: {cause.explanation}" if sided
                       else f"  likely cause: {line}"))


def _policy_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    default = Path("auditor.toml")
    return default if default.is_file() else None


@click.command("verify")
@click.argument("run", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Verify every matching run.")
@click.option("--since", metavar="AGE", help="With --all: runs started within AGE (7d, 12h).")
@click.option("--tag", "tags", multiple=True, help="With --all: runs with this tag.")
@click.option("--name", "name_glob", metavar="PATTERN", help="With --all: run names (glob).")
@click.option("--policy", "policy_path", type=PathArg, help="Policy file (default auditor.toml).")
@click.option("--bitwise", is_flag=True, help="Demand bit-identity.")
@click.option("--allow-gpu-mismatch", is_flag=True, help="Rerun on other GPUs (stated).")
@click.option("--sign-key", type=PathArg, help="Ed25519 private key to sign the certificate.")
@click.option("--certificate", type=PathArg, help="Also write the certificate here.")
@click.option("--report-dir", type=PathArg, help="Write each run's HTML report here.")
@click.option("--html", "html_path", type=PathArg, help="HTML report (single run).")
@click.option("--markdown", "markdown_path", type=PathArg, help="Markdown summary.")
@click.option("--junit", "junit_path", type=PathArg, help="JUnit XML.")
@click.option("--timeout", default=3600, show_default=True, help="Rerun wall-clock limit (s).")
@click.option("--memory", default="8g", show_default=True, help="Rerun memory limit.")
@click.option(
    "--skip-replay",
    multiple=True,
    hidden=True,
    help="TEST ONLY: do not replay a setting (pythonhashseed, threads, env).",
)
@build_options
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def verify_cmd(
    ctx: click.Context, /, run: str | None, all_runs: bool, quiet: bool, **kw: Any
) -> None:
    """Rebuild, rerun, compare and certify: exit 0 reproduced, 1 not, 3 could not verify."""
    from auditor.core.policy import load_policy

    if bool(run) == all_runs:
        raise InputError("give exactly one of RUN or --all")
    _check_targets(kw)
    policy = load_policy(_policy_path(kw["policy_path"]), bitwise=kw["bitwise"])
    if kw["allow_gpu_mismatch"]:
        policy = policy.with_gpu_mismatch()
    opts = _verify_options(kw)
    opts = replace(
        opts, limits=replace(opts.limits, timeout_s=kw["timeout"], mem_limit=kw["memory"])
    )
    store = store_of(ctx)
    ids = _select(store, kw) if all_runs else [store.resolve(run or "")]
    results, failures = _verify_many(store, ids, policy, opts, quiet)
    _write_reports(results, kw)
    _render(ctx, results, failures, single=not all_runs)
    codes = [r.verdict.exit_code for r in results] + [code for _, code, _ in failures]
    sys.exit(max(codes) if codes else 0)


def _check_targets(kw: dict[str, Any]) -> None:
    """Refuse special files as output targets before any work is done."""
    from auditor.certify.certificate import check_target

    for name in ("certificate", "html_path", "markdown_path", "junit_path"):
        if kw.get(name) is not None:
            check_target(Path(kw[name]))


def _verify_many(
    store: RunStore, ids: list[str], policy: Any, opts: Any, quiet: bool
) -> tuple[list[Any], list[tuple[str, int, str]]]:
    from auditor.verify import verify

    results, failures = [], []
    for run_id in ids:
        try:
            results.append(verify(store, store.get_record(run_id), policy, opts, _say(quiet)))
        except AuditorError as exc:
            if len(ids) == 1:
                raise
            failures.append((run_id, exc.exit_code, str(exc)))  # --all continues
    return results, failures


def _select(store: RunStore, kw: dict[str, Any]) -> list[str]:
    since = _age(kw["since"]) if kw.get("since") else None
    chosen = []
    for r in store.list_runs():
        if r.reproduces or r.status != "finished":
            continue
        if since and r.started_at < datetime.now(UTC) - since:
            continue
        if kw.get("tags") and not set(kw["tags"]) & set(r.tags):
            continue
        if kw.get("name_glob") and not fnmatch.fnmatchcase(r.name, kw["name_glob"]):
            continue
        chosen.append(r.id)
    return chosen


def _age(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not m:
        raise InputError(f"--since {text!r}: expected a number and a unit (30m, 12h, 7d, 2w)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def _write_reports(results: list[Any], kw: dict[str, Any]) -> None:
    from auditor.cli.release import render_report_command

    if kw.get("report_dir"):
        Path(kw["report_dir"]).mkdir(parents=True, exist_ok=True)
        for r in results:
            render_report_command(r, html=Path(kw["report_dir"]) / f"{r.original_run}.html")
    if len(results) == 1 and kw.get("html_path"):
        render_report_command(results[0], html=kw["html_path"])
    from auditor.certify.certificate import write_target
    from auditor.report.junit import render_junit
    from auditor.report.markdown import render_markdown

    if kw.get("markdown_path"):
        write_target(kw["markdown_path"], render_markdown(results).encode())
    if kw.get("junit_path"):
        write_target(kw["junit_path"], render_junit(results).encode())


def _render(
    ctx: click.Context, results: list[Any], failures: list[tuple[str, int, str]], single: bool
) -> None:
    from auditor.report.terminal import print_result, print_summary

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
    compare_cmd,
    verify_cmd,
)
