"""What every ``audit`` command shares, defined once: the root context (``Ctx``: store,
``--json``, ``-q``, ``--debug``), the option decorators several commands take (``-q``,
``--json``, build options, policy options, report targets) and the one policy loader.

``-q/--quiet`` means the same everywhere, given before the command (``audit -q verify``)
or after it (``audit verify -q``): no progress lines and no hints on stderr; what a
command prints as its result (stdout, ``--json``), warnings and errors stay.

Light on purpose (click only): ``audit --help`` imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # imported when a command needs them: `audit --help` starts fast
    from auditor.core.policy import Policy
    from auditor.store import RunStore

PathArg = click.Path(path_type=Path)
FileArg = click.Path(path_type=Path, dir_okay=False)


class Target(click.Path):
    """The type of every option or argument that names a path the command writes: a file,
    or a folder it writes files into (``folder``). Each goes through ``core.safefile``
    (links, FIFOs, devices refused, exit 2); ``tests/integration/test_safe_writers.py``
    walks the command tree for this type and points each at a device, a link and a FIFO."""

    def __init__(self, *, folder: bool = False) -> None:
        super().__init__(path_type=Path)
        self.folder = folder


OutFile = Target()
OutFolder = Target(folder=True)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    """Options shared by every subcommand (the root context's ``obj``)."""

    store_location: str | None
    as_json: bool
    quiet: bool
    debug: bool
    blobs_location: str | None = None

    def store(self, *, create: bool = True) -> RunStore:
        """Open the selected store."""
        from auditor.rerun.lease import reap_dead
        from auditor.store import open_store

        store = open_store(self.store_location, blobs=self.blobs_location, create=create)
        for line in reap_dead(store):  # what a killed verify left behind (rerun/lease.py)
            if not self.quiet:
                click.echo(line, err=True)
        return store


pass_ctx = click.make_pass_decorator(Ctx)


def root(ctx: click.Context) -> Ctx:
    """The root context's ``Ctx`` (a default one when a command runs without the group)."""
    top = ctx.find_root()
    if not isinstance(top.obj, Ctx):
        top.obj = Ctx(None, False, False, False)
    return top.obj


def store_of(ctx: click.Context) -> RunStore:
    """The store named by the root command's options (existing stores only)."""
    return root(ctx).store(create=False)


def wants_json(ctx: click.Context) -> bool:
    """True when the root command was given --json (or a subcommand's --json)."""
    return root(ctx).as_json


def is_quiet(ctx: click.Context) -> bool:
    """True when -q was given, before or after the command name."""
    return root(ctx).quiet


def say(ctx: click.Context) -> Callable[[str], None]:
    """The progress reporter of a command (``auditor.report.progress``): on a terminal dim
    lines, spinners and progress bars on stderr; elsewhere one line per line and per
    finished stage with its time; nothing under -q."""
    from auditor.report.progress import reporter_for

    return reporter_for(quiet=is_quiet(ctx))


def hint(ctx: click.Context, line: str) -> None:
    """A hint or informational line on stderr (``wrote …``, ``next: …``); none under -q."""
    if not is_quiet(ctx):
        click.echo(line, err=True)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root(ctx).as_json = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root(ctx).quiet = True


json_option = click.option(
    "--json", "as_json_local", is_flag=True, expose_value=False, callback=_set_json,
    help="Machine-readable output on stdout.")
QUIET_HELP = "No progress lines or hints on stderr (results, warnings and errors stay)."
quiet_option = click.option(
    "-q", "--quiet", "quiet_local", is_flag=True, expose_value=False, callback=_set_quiet,
    help=QUIET_HELP)


def _apply(fn: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_options(fn: F) -> F:
    """Options shared by build, rerun and verify."""
    return _apply(fn, [
        click.option("--backend", metavar="NAME",
                     help="Build/run backend: docker or venv (default: docker when an engine "
                     "answers, else venv; auditor.rerun.backends lists them)."),
        click.option("--base-image", metavar="REF", envvar="AUDITOR_BASE_IMAGE",
                     help="Base image (default: python:<recorded>-slim pinned by digest; "
                     "offline: build one with `audit base-image build`)."),
        click.option("--wheelhouse", type=PathArg, envvar="AUDITOR_WHEELHOUSE",
                     help="Folder of wheels the index lacks (find-links), e.g. torch's CPU "
                     "wheel."),
        click.option("--ca-bundle", type=PathArg, envvar="AUDITOR_CA_BUNDLE",
                     help="TLS CA bundle for a proxied package index (build input only)."),
        click.option("--wheel-cache", type=PathArg, envvar="AUDITOR_WHEEL_CACHE",
                     help="Folder of verified wheels every build installs from (fetched once "
                     "per name, version and sha256; default: ~/.cache/auditor/wheels, or "
                     "$AUDITOR_CACHE/wheels). A build input, never an image layer."),
        click.option("--no-cache", is_flag=True, help="Rebuild even when an image exists."),
        click.option("--strict", is_flag=True, help="Refuse a base image not pinned by digest."),
        click.option("--allow-unhashed", is_flag=True, help="Accept a lockfile without hashes."),
    ])


def policy_options(*, bitwise: bool = True, gpu: bool = True) -> Callable[[F], F]:
    """``--policy`` (default: ./auditor.toml), and ``--bitwise`` / ``--allow-gpu-mismatch``
    where the command has a comparison / a rerun. Read them with ``policy_from``."""
    def decorate(fn: F) -> F:
        options: list[Callable[[F], F]] = [click.option(
            "--policy", "policy_path", type=PathArg,
            help="Policy file (default: auditor.toml in the current folder).")]
        if bitwise:
            options.append(click.option("--bitwise", is_flag=True, help="Demand bit-identity."))
        if gpu:
            options.append(click.option("--allow-gpu-mismatch", is_flag=True,
                                        help="Rerun on other GPUs (stated)."))
        return _apply(fn, options)
    return decorate


def policy_from(kw: dict[str, Any]) -> Policy:
    """The one policy loader of ``verify``, ``rerun`` and ``compare``: the ``[verify]``
    table of ``--policy`` or ./auditor.toml, with the command's switches on top."""
    from auditor.core.policy import load_policy, policy_path

    policy = load_policy(policy_path(kw.pop("policy_path", None)),
                         bitwise=bool(kw.pop("bitwise", False)))
    return policy.with_gpu_mismatch() if kw.pop("allow_gpu_mismatch", False) else policy


def report_options(fn: F) -> F:
    """``--html``, ``--markdown``, ``--junit``: one target per report format (``-``:
    stdout), as ``report.formats.FORMATS`` names them."""
    return _apply(fn, [
        click.option("--html", "html_path", type=OutFile, help="Write the HTML report here."),
        click.option("--markdown", "markdown_path", type=OutFile,
                     help="Write the Markdown summary here."),
        click.option("--junit", "junit_path", type=OutFile, help="Write JUnit XML here."),
    ])


def report_targets(kw: dict[str, Any]) -> dict[str, Path]:
    """The report targets given (format -> path), taken out of ``kw``."""
    given = {fmt: kw.pop(f"{fmt}_path", None) for fmt in ("html", "markdown", "junit")}
    return {fmt: Path(p) for fmt, p in given.items() if p is not None}
