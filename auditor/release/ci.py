"""Scheduled CI checks: ``audit ci init`` writes a workflow that re-verifies recorded runs.

Contract:

- ``render_workflow(provider, schedule=, install=)`` renders ``templates/ci/<provider>.yml.j2``
  (jinja2 without HTML escaping, ``StrictUndefined``). Every value is either a constant
  of this module or passes the ``yaml`` filter (a JSON string, which YAML reads as the
  same double-quoted scalar), so a value cannot add keys or lines to the workflow.
  The cron schedule is validated first (five fields of ``0-9 * / , -`` or names).
- The workflow installs the project, runs ``VERIFY_ARGV`` (``audit verify --all`` over the
  last 7 days, writing HTML, Markdown and JUnit under ``REPORT_DIR``), and always keeps
  the reports: GitHub uploads them and appends the Markdown to ``$GITHUB_STEP_SUMMARY``;
  GitLab keeps them as artifacts and publishes ``artifacts:reports:junit``.
- ``write_workflow`` writes atomically and never overwrites without ``force``.
- ``audit_commands(text)`` lists the ``audit`` command lines of a workflow and
  ``check_command(root, argv)`` parses one with the real click tree (unknown commands or
  options, bad values and missing arguments raise ``click.UsageError``), so tests can
  prove the workflow only calls commands that exist.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auditor.core.errors import InputError
from auditor.core.safefile import write_target

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "ci"  # shipped in the wheel
PROVIDERS: dict[str, Path] = {"github": Path(".github/workflows/audit.yml"),
                              "gitlab": Path(".gitlab-ci.yml")}
DEFAULT_SCHEDULE = "17 3 * * *"  # nightly, off the hour to avoid the top-of-hour rush
DEFAULT_INSTALL = "python -m pip install ."
PYTHON = "3.11"
REPORT_DIR = "audit-reports"
SUMMARY = f"{REPORT_DIR}/summary.md"
JUNIT = f"{REPORT_DIR}/junit.xml"
VERIFY_ARGV = ("audit", "verify", "--all", "--since", "7d", "--report-dir", REPORT_DIR,
               "--markdown", SUMMARY, "--junit", JUNIT)
SHELL_KEYS = frozenset({"run", "script", "before_script", "after_script"})
_CRON_FIELD = re.compile(r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+"
                         r"(-[0-9A-Za-z]+)?)(/[0-9]+)?)*")


def validate_cron(schedule: str) -> str:
    """``schedule`` when it is a five-field cron expression; ``InputError`` otherwise."""
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise InputError(f"invalid cron schedule {schedule!r}",
                         hint='five fields, e.g. "17 3 * * *" for 03:17 UTC daily')
    return " ".join(fields)


def render_workflow(provider: str, *, schedule: str = DEFAULT_SCHEDULE,
                    install: str = DEFAULT_INSTALL) -> str:
    """The workflow file text for ``provider`` ("github" or "gitlab")."""
    if provider not in PROVIDERS:
        raise InputError(f"unknown CI provider {provider!r}; available: {', '.join(PROVIDERS)}")
    if not install.strip() or "\n" in install:
        raise InputError("--install must be one non-empty command line")
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=False,
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["yaml"] = yaml_scalar
    template = env.get_template(f"{provider}.yml.j2")
    return template.render(schedule=validate_cron(schedule), install=install.strip(),
                           python=PYTHON, verify=shlex.join(VERIFY_ARGV),
                           report_dir=REPORT_DIR, summary=SUMMARY, junit=JUNIT)


def yaml_scalar(value: object) -> str:
    """``value`` as a double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value))


def write_workflow(provider: str, *, output: Path | None = None, force: bool = False,
                   schedule: str = DEFAULT_SCHEDULE, install: str = DEFAULT_INSTALL) -> Path:
    """Render and write the workflow; return where it was written."""
    text = render_workflow(provider, schedule=schedule, install=install)
    yaml.safe_load(text)  # our own template must stay valid YAML
    path = output or PROVIDERS[provider]
    if path.exists() and not force:
        raise InputError(f"{path} already exists", hint="pass --output PATH or --force")
    write_target(path, text.encode("utf-8"))
    return path


# -- checking the commands a workflow runs -------------------------------------------------
def audit_commands(workflow_text: str) -> list[list[str]]:
    """The ``audit ...`` command lines in every string of a workflow, split like a shell."""
    return [shlex.split(line) for text in _shell_strings(yaml.safe_load(workflow_text))
            for line in _joined_lines(text) if line.split()[:1] == ["audit"]]


def _shell_strings(node: object, shell: bool = False) -> Iterator[str]:
    """Strings under the keys that hold shell commands (GitHub ``run``, GitLab scripts)."""
    if isinstance(node, str) and shell:
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _shell_strings(value, shell or key in SHELL_KEYS)
    elif isinstance(node, list):
        for item in node:
            yield from _shell_strings(item, shell)


def _joined_lines(text: str) -> Iterator[str]:
    """Lines of a shell snippet with backslash continuations joined."""
    yield from (line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip())


def check_command(root: click.Command, argv: Sequence[str]) -> None:
    """Parse ``argv`` (``["audit", ...]``) with the click tree under ``root``."""
    if not argv or argv[0] != "audit":
        raise click.UsageError(f"not an audit command: {shlex.join(argv)}")
    _parse(root, "audit", list(argv[1:]), None)


def _parse(command: click.Command, name: str, args: list[str],
           parent: click.Context | None) -> None:
    with command.make_context(name, args, parent=parent) as ctx:
        if not isinstance(command, click.Group):
            return
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.UsageError(f"{ctx.command_path}: missing command", ctx)
        sub_name, sub, sub_args = command.resolve_command(ctx, rest)
        if sub is None or sub_name is None:
            raise click.UsageError(f"{ctx.command_path}: no such command {rest[0]!r}", ctx)
        _parse(sub, sub_name, sub_args, ctx)
