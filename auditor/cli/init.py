"""``audit preflight [-- COMMAND]`` and ``audit init``: will a run be re-runnable, asked
before it starts; and a project set up for recording, then asked that question.

Both parse, call one function of ``auditor.preflight`` and render. Exit codes: preflight
0 re-runnable, 1 not (the findings listed), 2 bad input (a script that does not exist);
init the same as the pre-flight check it ends with (0 with ``--no-preflight``), 2 outside a
git repository (nothing written).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from auditor.cli.options import PathArg, is_quiet, json_option, quiet_option, wants_json
from auditor.preflight import CHECKS

if TYPE_CHECKING:
    from auditor.preflight import PreflightReport

CHECK_NAMES = tuple(CHECKS)
SYMBOL = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}

_preflight_options = [
    click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
                 help="Data the command reads, as you will declare it to audit record; "
                 "repeatable."),
    click.option("--base-image", metavar="REF", envvar="AUDITOR_BASE_IMAGE",
                 help="The base image the rebuild will start from (default: the pinned "
                 "python slim image of the interpreter's version)."),
    click.option("--skip", multiple=True, type=click.Choice(CHECK_NAMES),
                 help="Leave a check out (e.g. engine on a laptop); repeatable."),
]


def _with_preflight_options(fn: Any) -> Any:
    for option in reversed(_preflight_options):
        fn = option(fn)
    return fn


@click.command("preflight", context_settings={"ignore_unknown_options": True,
                                              "allow_interspersed_args": False})
@_with_preflight_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@json_option
@quiet_option
@click.pass_context
def preflight_cmd(ctx: click.Context, /, command: tuple[str, ...], inputs: tuple[Path, ...],
                  base_image: str | None, skip: tuple[str, ...]) -> None:
    """Is this run re-runnable? Static checks before any GPU hour (exit 0 yes, 1 no).

    audit preflight [--input PATH]... -- python train.py ...: reads the command's code and
    the local source it imports (never runs it), checks the lockfile against the training
    interpreter's packages and the docker engine; each finding with a one-line fix."""
    from auditor.preflight import run_preflight

    report = run_preflight(_argv(command), declared=inputs, base_image=base_image, skip=skip)
    _render(report, json_out=wants_json(ctx), quiet=is_quiet(ctx))
    sys.exit(0 if report.rerunnable else 1)


@click.command("init", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.option("--ci", "ci_provider", type=click.Choice(["github", "gitlab", "none"]),
              default="github", show_default=True, help="The scheduled workflow to write.")
@click.option("--no-lock", is_flag=True, help="Do not run pip-compile (offline); say how to.")
@click.option("--find-links", multiple=True, type=PathArg, envvar="AUDITOR_WHEELHOUSE",
              help="Wheel folders for pip-compile (e.g. the torch CPU wheel).")
@click.option("--no-preflight", is_flag=True, help="Set up only; do not run the check.")
@_with_preflight_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@json_option
@quiet_option
@click.pass_context
def init_cmd(ctx: click.Context, /, command: tuple[str, ...], ci_provider: str, no_lock: bool,
             find_links: tuple[Path, ...], no_preflight: bool, inputs: tuple[Path, ...],
             base_image: str | None, skip: tuple[str, ...]) -> None:
    """Set this git project up (auditor.toml, lockfile, CI, .gitignore), then preflight.

    At the repository root: auditor.toml with the documented defaults, a hashed lockfile
    through audit lock when there is none, the nightly CI workflow of audit ci init, the
    store (.auditor/) in .gitignore; then audit preflight [-- COMMAND]. A file already there
    is never overwritten; running it again changes nothing and says so."""
    from auditor.preflight import run_preflight
    from auditor.preflight.code_checks import checked_entry
    from auditor.preflight.setup import InitOptions, init_project, project_root

    root = project_root(Path.cwd())
    if not no_preflight:  # a command that cannot run is refused before anything is written
        checked_entry(tuple(_argv(command)), Path.cwd(), dict(os.environ))
    steps = init_project(root, InitOptions(ci=None if ci_provider == "none" else ci_provider,
                                           lock=not no_lock, find_links=find_links))
    changed = any(s.action == "wrote" for s in steps)
    report = None if no_preflight else run_preflight(_argv(command), declared=inputs,
                                                     base_image=base_image, skip=skip)
    json_out = wants_json(ctx)
    if json_out:
        click.echo(json.dumps({"root": str(root), "changed": changed,
                               "steps": [s.model_dump() for s in steps],
                               "preflight": report.model_dump(mode="json") if report else None},
                              indent=1))
    else:
        from auditor.report.records import shown

        for step in steps:
            click.echo(f"{step.action:>9}  {shown(step.path)}: {step.detail}")
        click.echo(f"audit init: {'set up' if changed else 'nothing changed'} in {root}")
        if report is not None:
            click.echo()
            _render(report, json_out=False, quiet=is_quiet(ctx))
    sys.exit(0 if report is None or report.rerunnable else 1)


def _argv(command: tuple[str, ...]) -> list[str]:
    return list(command[1:] if command[:1] == ("--",) else command)


def _render(report: PreflightReport, *, json_out: bool, quiet: bool) -> None:
    if json_out:
        click.echo(report.model_dump_json(indent=1))
        return
    from auditor.report.records import shown

    what = " ".join(report.command) or "the project"
    click.echo(f"preflight of {shown(what)}: {len(report.source_files)} local source file(s) "
               f"read, {report.seconds:.1f} s")
    for check in report.checks:
        if check.status != "failed":
            why = f" ({shown(check.why)})" if check.why else ""
            click.echo(f"  {SYMBOL[check.status]} {check.check}{why}")
            continue
        for finding in (f for f in report.findings if f.check == check.check):
            click.echo(f"  FAIL {check.check}: {shown(finding.problem)}")
            click.echo(f"       fix: {shown(finding.fix)}")
    if not quiet:
        for note in report.notes:
            click.echo(f"note: {shown(note)}", err=True)
    count = len(report.findings)
    click.echo("re-runnable: every check passed" if report.rerunnable else
               f"not re-runnable: {count} finding(s) to fix before a long run")
