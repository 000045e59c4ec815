"""Scheduled CI checks: ``audit ci init`` writes a workflow that runs as generated.

Contract:

- ``render_workflow(provider, settings)`` renders ``templates/ci/<provider>.yml.j2``
  (jinja2 without HTML escaping, ``StrictUndefined``). Every value is either a constant
  of this module or passes the ``yaml`` filter (a JSON string, which YAML reads as the
  same double-quoted scalar), so a value cannot add keys or lines to the workflow; each
  setting is validated first (cron, shard count, glob, branch names, one-line pip spec).
- The workflow installs a pinned auditor with the team extras (``AUDITOR_PIP_SPEC``,
  default ``auditor[team]==<this version>``; ``--auditor SPEC`` names another
  requirement, e.g. ``auditor[team] @ https://…/auditor-….whl``), reads the store URL,
  the artifact location, its credentials and the signing key from the CI's secrets
  (GitHub ``secrets.*``, GitLab masked/File CI/CD variables; never inline), and:
  on a schedule verifies over a matrix of ``shards`` jobs (``audit verify --all --batch
  ID --shard I/N``: only runs lacking a current certificate under the policy), then one
  job aggregates the batch (``audit batch show ID --junit --markdown``: one JUnit file,
  one step summary); on release tags, pushes to protected branches and pull/merge
  requests that change the models, a gate job runs ``audit gate`` on the model files.
- ``STEPS[provider]`` holds each shell snippet once; ``shell_steps(text)`` gives a
  workflow's steps back (job, step name, shell text, env), so a test runs exactly what
  the file holds.
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
from dataclasses import dataclass
from pathlib import Path

import click
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auditor.core.errors import InputError
from auditor.core.safefile import write_target
from auditor.core.version import __version__

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "ci"  # shipped in the wheel
PROVIDERS: dict[str, Path] = {"github": Path(".github/workflows/audit.yml"),
                              "gitlab": Path(".gitlab-ci.yml")}
DEFAULT_SCHEDULE = "17 3 * * *"  # nightly, off the hour to avoid the top-of-hour rush
DEFAULT_PIP_SPEC = f"auditor[team]=={__version__}"
DEFAULT_MODELS = "models/*.safetensors"
DEFAULT_SHARDS = 4
MAX_SHARDS = 256
PYTHON = "3.11"
REPORT_DIR = "audit-reports"
SUMMARY = f"{REPORT_DIR}/summary.md"
JUNIT = f"{REPORT_DIR}/junit.xml"
SHELL_KEYS = frozenset({"run", "script", "before_script", "after_script"})
_CRON_FIELD = re.compile(r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+"
                         r"(-[0-9A-Za-z]+)?)(/[0-9]+)?)*")
_REF = re.compile(r"[A-Za-z0-9._/*-]{1,100}")
_GLOB = re.compile(r"[A-Za-z0-9._/*?\[\]{},@+-]{1,200}")
_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")

# The shell of each step, once (the templates place them; tests run them).
_AUDIT_ALL = ("audit verify --all --batch \"$AUDITOR_BATCH\" --shard \"{shard}\" "
              "--sign-key \"{key}\" --report-dir " + REPORT_DIR
              + " --junit \"" + REPORT_DIR + "/junit-shard-{index}.xml\"")
_AGGREGATE = (f"mkdir -p {REPORT_DIR}\naudit batch show \"$AUDITOR_BATCH\" --junit {JUNIT} "
              f"--markdown {SUMMARY}\n")
STEPS: dict[str, dict[str, str]] = {
    "github": {
        "install": 'python -m pip install "$AUDITOR_PIP_SPEC"\naudit --version\n',
        "sign_key": ('umask 077\nprintf \'%s\\n\' "$AUDITOR_SIGNING_KEY" > '
                     '"$RUNNER_TEMP/auditor.key"\n'),
        "verify": _AUDIT_ALL.format(shard="$AUDITOR_SHARD/$AUDITOR_SHARDS",
                                    key="$RUNNER_TEMP/auditor.key",
                                    index="$AUDITOR_SHARD") + "\n",
        "aggregate": _AGGREGATE,
        "summary_step": (f"if [ -f {SUMMARY} ]; then cat {SUMMARY} >> "
                         '"$GITHUB_STEP_SUMMARY"; fi\n'),
        "gate": ('printf \'%s\\n\' "$AUDITOR_PUBLIC_KEY" > "$RUNNER_TEMP/auditor.pub"\n'
                 "set -- $AUDIT_MODELS\n"
                 'audit gate "$@" --key "$RUNNER_TEMP/auditor.pub"\n'),
    },
    "gitlab": {
        "install": ('test -d .audit-venv || python3 -m venv .audit-venv; '
                    '. .audit-venv/bin/activate && '
                    'python -m pip install "$AUDITOR_PIP_SPEC" && audit --version'),
        "verify": _AUDIT_ALL.format(shard="${CI_NODE_INDEX:-1}/${CI_NODE_TOTAL:-1}",
                                    key="$AUDITOR_SIGNING_KEY",
                                    index="${CI_NODE_INDEX:-1}"),
        "aggregate": _AGGREGATE.strip().replace("\n", " && "),
        "gate": 'set -- $AUDIT_MODELS && audit gate "$@" --key "$AUDITOR_PUBLIC_KEY"',
    },
}


@dataclass(frozen=True)
class CiSettings:
    """What ``audit ci init`` takes; ``checked()`` validates every field."""

    schedule: str = DEFAULT_SCHEDULE
    pip_spec: str = DEFAULT_PIP_SPEC
    shards: int = DEFAULT_SHARDS
    models: str = DEFAULT_MODELS
    branches: tuple[str, ...] = ("main",)
    tags: str = "v*"
    runner_tag: str = "docker"

    def checked(self) -> CiSettings:
        """These settings, each validated (``InputError``, exit 2, naming the first bad one)."""
        validate_cron(self.schedule)
        if not self.pip_spec.strip() or "\n" in self.pip_spec or "\r" in self.pip_spec:
            raise InputError("--auditor must be one pip requirement on one line",
                             hint=f"e.g. {DEFAULT_PIP_SPEC!r}")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise InputError(f"--shards must be between 1 and {MAX_SHARDS}, not {self.shards}")
        if not _GLOB.fullmatch(self.models):
            raise InputError(f"invalid --models glob {self.models[:80]!r}",
                             hint="one path pattern such as models/*.safetensors")
        for ref in (*self.branches, self.tags):
            if not _REF.fullmatch(ref):
                raise InputError(f"invalid branch or tag pattern {ref[:80]!r}")
        if not _TAG.fullmatch(self.runner_tag):
            raise InputError(f"invalid runner tag {self.runner_tag[:80]!r}")
        return self


def validate_cron(schedule: str) -> str:
    """``schedule`` when it is a five-field cron expression; ``InputError`` otherwise."""
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise InputError(f"invalid cron schedule {schedule!r}",
                         hint='five fields, e.g. "17 3 * * *" for 03:17 UTC daily')
    return " ".join(fields)


def render_workflow(provider: str, settings: CiSettings | None = None) -> str:
    """The workflow file text for ``provider`` ("github" or "gitlab")."""
    if provider not in PROVIDERS:
        raise InputError(f"unknown CI provider {provider!r}; available: {', '.join(PROVIDERS)}")
    given = (settings or CiSettings()).checked()
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=False,
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["yaml"] = yaml_scalar
    template = env.get_template(f"{provider}.yml.j2")
    return template.render(
        schedule=validate_cron(given.schedule), pip_spec=given.pip_spec.strip(),
        shards=given.shards, shard_list=json.dumps(list(range(1, given.shards + 1))),
        models=given.models, branches=list(given.branches), tags=given.tags,
        runner_tag=given.runner_tag, python=PYTHON, version=__version__,
        report_dir=REPORT_DIR, summary=SUMMARY, junit=JUNIT, **STEPS[provider])


def yaml_scalar(value: object) -> str:
    """``value`` as a double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value))


def write_workflow(provider: str, settings: CiSettings | None = None, *,
                   output: Path | None = None, force: bool = False) -> Path:
    """Render and write the workflow; return where it was written."""
    text = render_workflow(provider, settings)
    yaml.safe_load(text)  # our own template must stay valid YAML
    path = output or PROVIDERS[provider]
    if path.exists() and not force:
        raise InputError(f"{path} already exists", hint="pass --output PATH or --force")
    write_target(path, text.encode("utf-8"))
    return path


@dataclass(frozen=True)
class ShellStep:
    """One step's shell as the workflow holds it: its job, name, text and environment
    (the workflow's, the job's and the step's, unevaluated)."""

    job: str
    name: str
    shell: str
    env: dict[str, str]


def shell_steps(provider: str, text: str) -> list[ShellStep]:
    """Every shell step of a workflow in file order (GitHub ``run``; GitLab: one step per
    job, its ``script`` lines joined as the one shell session GitLab runs them in)."""
    data = yaml.safe_load(text)
    found: list[ShellStep] = []
    if provider == "github":
        top = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
        for job_name, job in data["jobs"].items():
            job_env = {**top, **{str(k): str(v) for k, v in (job.get("env") or {}).items()}}
            for index, step in enumerate(job["steps"]):
                if "run" in step:
                    env = {**job_env, **{str(k): str(v) for k, v in
                                         (step.get("env") or {}).items()}}
                    found.append(ShellStep(job_name, step.get("name", f"step {index}"),
                                           step["run"], env))
        return found
    top = {str(k): str(v) for k, v in (data.get("variables") or {}).items()}
    for job_name, job in data.items():
        if isinstance(job, dict) and "script" in job:
            lines = [*job.get("before_script", []), *job["script"]]
            found.append(ShellStep(job_name, job_name, "\n".join(lines) + "\n", dict(top)))
    return found


# -- checking the commands a workflow runs -------------------------------------------------
def audit_commands(workflow_text: str) -> list[list[str]]:
    """The ``audit ...`` command lines in every string of a workflow, split like a shell."""
    return [words for text in _shell_strings(yaml.safe_load(workflow_text))
            for line in _joined_lines(text) for words in _commands(line)
            if words[:1] == ["audit"]]


def _commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, split at ``&&``, ``||``, ``;`` and ``|``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    words: list[str] = []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            if words:
                yield words
            words = []
        else:
            words.append(token)
    if words:
        yield words


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
    try:
        _parse(root, "audit", list(argv[1:]), None)
    except click.exceptions.Exit as done:  # an eager option (--version, --help) ended it
        if done.exit_code != 0:
            raise click.UsageError(f"exits {done.exit_code}: {shlex.join(argv)}") from None


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
