"""The ``audit`` command: parse, call one function, render, return an exit code.

Shared options (``--store``, ``--json``, ``-q``, ``--debug``) are defined once on the
group; ``--json`` and ``-q`` may also follow a command name (``cli/options.py`` defines
them, with the other options several commands share). The single ``except AuditorError``
lives in ``AuditGroup.main``: it prints ``error: <one line>`` on stderr and exits with the
error's code (0 reproduced, 1 not reproduced, 2 bad input, 3 could not verify); tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from auditor.cli.options import QUIET_HELP, Ctx, OutFolder, json_option, pass_ctx, quiet_option
from auditor.cli.store import roles_cmd
from auditor.core.errors import AuditorError, IntegrityError
from auditor.core.version import __version__

__all__ = ["Ctx", "main", "pass_ctx"]  # Ctx and pass_ctx live in cli.options

# At exit, the interpreter's last collections would walk every object the command left
# (pydantic, SQLAlchemy, numpy, docker: 0.15-0.2 s of every `audit verify`); frozen, they
# are freed by their reference counts alone. atexit handlers (temporary folders, logging)
# still run first: they are called, not collected.
atexit.register(gc.freeze)


LAZY_COMMANDS: dict[str, str] = {
    "lock": "auditor.cli.verify:lock",
    "build": "auditor.cli.verify:build_cmd",
    "base-image": "auditor.cli.verify:base_image",
    "rerun": "auditor.cli.verify:rerun_cmd",
    "compare": "auditor.cli.experiments:compare_cmd",
    "verify": "auditor.cli.verify:verify_cmd",
    "report": "auditor.cli.release:report",
    "gate": "auditor.cli.release:gate",
    "keys": "auditor.cli.release:keys",
    "certificate": "auditor.cli.release:certificate",
    "ci": "auditor.cli.release:ci",
    "ui": "auditor.cli.ui:ui_cmd",
    "push": "auditor.cli.sync:push", "pull": "auditor.cli.sync:pull",
    "import": "auditor.cli.imports:import_group",
    "init": "auditor.cli.init:init_cmd",
    "preflight": "auditor.cli.init:preflight_cmd",
    "batch": "auditor.cli.batch:batch_group",
}


# The one-line help `audit --help` shows for each lazy command, so listing them imports
# none (tests/unit/test_cli_startup.py checks each against the command's own help).
LAZY_HELP: dict[str, str] = {
    "lock": "Make a fully pinned, hashed lockfile (pip-tools), or check one.",
    "build": "Build the pinned environment (image or venv) of a recorded run.",
    "base-image": "Base images for air-gapped machines (no registry needed).",
    "rerun": "Rebuild and rerun a run hermetically; the rerun is recorded as a new run.",
    "compare": "Compare runs: a params + metrics table of what differs (any number, or "
    "--where); a rerun and its original (or --as-rerun) get a reproduction verdict.",
    "verify": "Rebuild, rerun, compare and certify: exit 0 reproduced, 1 not, 3 could not "
    "verify.",
    "report": "Write the reports of a past verification (RUN id or CERT file): HTML, "
    "Markdown, JUnit.",
    "gate": "Pass (exit 0) only when every ARTIFACT has a trusted, recent, good-enough "
    "certificate.",
    "keys": "Signing keys for certificates (Ed25519, or ECDSA for OpenSSF model signing).",
    "certificate": "Inspect and check certificates.",
    "ci": "Scheduled reproducibility checks in CI.",
    "ui": "Serve the dashboard: runs table, comparison, importance, run pages (read-only).",
    "push": "Copy runs (record, metrics, artifacts, certificates) to another store, verified.",
    "pull": "Copy runs (record, metrics, artifacts, certificates) from another store, "
    "verified.",
    "import": "Import runs logged elsewhere (MLflow); each says what it lacks to be verified.",
    "init": "Set this git project up (auditor.toml, lockfile, CI, .gitignore), then preflight.",
    "preflight": "Is this run re-runnable? Static checks before any GPU hour (exit 0 yes, 1 no).",
    "batch": "Batches of verifications (CI shards, executors): verdicts, nodes, GPUs, reports.",
}


class AuditGroup(click.Group):
    """A click group whose errors are one line on stderr with our exit codes, and whose
    heavier subcommands are imported only when used (``audit list`` starts fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but a lazy command's line comes from ``LAZY_HELP`` (no import)."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            if name in LAZY_HELP and name in LAZY_COMMANDS:
                rows.append((name, lazy_short_help(name, limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        debug = "--debug" in sys.argv
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[call-overload]
        except AuditorError as exc:
            _fail(str(exc), exc.exit_code, debug)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            _fail("aborted", 130, debug)
        except click.ClickException as exc:
            _fail(exc.format_message(), 2, debug)
        except KeyboardInterrupt:
            _fail("interrupted", 130, debug)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)",
                3,
                debug,
            )
        sys.exit(code if isinstance(code, int) else 0)


def lazy_short_help(name: str, limit: int) -> str:
    """The help line of a lazy command, shortened the way click shortens it."""
    return click.Command(name, help=LAZY_HELP[name]).get_short_help_str(limit)


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_location",
    envvar="AUDITOR_STORE",
    metavar="PATH|URL",
    help="Store directory or SQLAlchemy URL (default: .auditor at the repo root).",
)
@click.option(
    "--blobs",
    "blobs_location",
    envvar="AUDITOR_BLOBS",
    metavar="PATH|URL",
    help="Artifact folder, file:// or s3:// URL (default: beside the store).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="audit")
@click.pass_context
def main(
    ctx: click.Context,
    store_location: str | None,
    blobs_location: str | None,
    as_json: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """auditor: record training runs completely, then prove they reproduce.

    \b
    Exit codes: 0 reproduced / ok, 1 not reproduced (or gate failed),
                2 bad input, 3 could not verify (environment, integrity).
    """
    ctx.obj = Ctx(store_location, as_json, quiet, debug, blobs_location)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", help="Run name (default: the script's name).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Data input to fingerprint (file or folder); repeatable.",
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Output to store (file or folder); repeatable. Default: files the run "
    "created or changed in the working directory.",
)
@click.option(
    "--metrics-regex",
    help="Regex with named groups (step + metric names) "
    "applied to stdout lines, besides JSON lines.",
)
@click.option(
    "--max-output-size",
    default=1 << 30,
    show_default=True,
    type=int,
    help="Largest output file stored, in bytes.",
)
@click.option("--tag", "tags", multiple=True, help="Tag the run; repeatable.")
@click.option(
    "--env-allow",
    multiple=True,
    metavar="GLOB",
    help="Also keep values of these environment variables; repeatable.",
)
@click.option(
    "--code-dir",
    type=click.Path(path_type=Path),
    help="Code directory to snapshot when not in a git repository.",
)
@click.option(
    "--lenient-metrics",
    is_flag=True,
    help="Warn, instead of failing with exit 2, when a metrics line is not JSON.",
)
@click.option(
    "--allow-outside-tree",
    is_flag=True,
    help="Accept --input/--output paths outside the project tree (refused by default; "
    "the record lists them).",
)
@click.option(
    "--in-image",
    "image",
    metavar="IMAGE",
    help="Run COMMAND in a container of this local docker image (tag or id, stored as its "
    "id; e.g. the run's pinned image from `audit build`) and record the image's Python and "
    "packages: the tree is mounted at its own path, the environment passed by name (host "
    "PATH/HOME are not), uid:gid yours, no network, no stdin, no GPUs. Exit 2 for an "
    "unknown image, 3 without a docker CLI or engine.",
)
@click.option(
    "--network",
    default="none",
    show_default=True,
    metavar="NAME",
    help="With --in-image: the container's docker network (e.g. bridge, host).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@quiet_option
@pass_ctx
def record(c: Ctx, /, command: tuple[str, ...], **opts: Any) -> None:
    """Run COMMAND and record it completely: audit record [OPTIONS] -- python train.py ..."""
    from auditor.record.wrap import WrapOptions, record_command

    argv = list(command[1:] if command[:1] == ("--",) else command)
    store = c.store()
    result = record_command(
        store,
        WrapOptions(
            argv=tuple(argv),
            name=opts["name"],
            inputs=tuple(opts["inputs"]),
            outputs=tuple(opts["outputs"]),
            metrics_regex=opts["metrics_regex"],
            max_output_bytes=opts["max_output_size"],
            tags=tuple(opts["tags"]),
            env_allow=tuple(opts["env_allow"]),
            code_dir=opts["code_dir"],
            allow_outside_tree=opts["allow_outside_tree"],
            image=opts["image"],
            network=opts["network"],
        ),
    )
    ident = result.record.identity
    if result.failures:
        from auditor.core.errors import StoreError

        raise StoreError(
            f"run {ident.id} was stored without {len(result.failures)} artifact(s): "
            f"{result.failures[0]}"
            + (f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else "")
            + f"; the command exited {ident.exit_code}"
            + (f"; its logs are kept in {result.rescued}" if result.rescued else ""),
            hint="make the store writable; `audit show` lists what is missing",
        )
    if result.malformed_metrics and not opts["lenient_metrics"] and result.exit_code == 0:
        from auditor.core.errors import InputError

        count = len(result.malformed_metrics)
        raise InputError(
            f"{result.malformed_metrics[0]}"
            + (f" (and {count - 1} more)" if count > 1 else "")
            + f"; run {ident.id} was stored with the rest",
            hint="print metrics with json.dumps, or pass --lenient-metrics",
        )
    for line in result.malformed_metrics:
        click.echo(f"warning: {line}", err=True)
    if c.as_json:
        click.echo(
            json.dumps({"id": ident.id, "status": ident.status, "exit_code": ident.exit_code})
        )
    elif not c.quiet:
        from auditor.report.records import console

        console(err=True).print(
            f"[bold]recorded[/] run {ident.id} ({ident.status}, exit "
            f"{ident.exit_code}) in {store.url}"
        )
    sys.exit(result.exit_code)


@main.command("list")
@json_option
@click.option("--limit", default=100, show_default=True, help="Newest N runs (0: all).")
@click.option("--where", "where", multiple=True, metavar="FILTER",
              help="Filter, e.g. 'params.lr < 0.1 and metrics.acc >= 0.9', 'tag = x', "
              "'verified = never', 'name ~ mlp'; repeatable (all must hold).")
@click.option("--sort", metavar="KEYS", help="Sort keys, '-' for descending, e.g. "
              "'-metrics.acc,name' (default: newest first).")
@click.option("--columns", metavar="KEYS", default="", help="Columns instead of the metrics "
              "summary, e.g. 'params.lr,metrics.loss'.")
@click.option("--include-reruns", is_flag=True, help="Also list reruns, each under its "
              "original (default: originals only).")
@quiet_option
@pass_ctx
def list_(c: Ctx, limit: int, where: tuple[str, ...], sort: str | None, columns: str,
          include_reruns: bool) -> None:
    """List runs, newest first (or filtered and sorted: see --where, --sort); reruns are
    left out unless --include-reruns."""
    from auditor.cli.experiments import list_columns

    shown_columns = list_columns(columns)
    from auditor.store import local_database, server_location
    from auditor.store.fastlist import list_local, list_server
    from auditor.store.signatures import KEY_ENV, signed_run_ids

    fast = None
    if not (where or sort):  # read without SQLAlchemy where it can be (start-up speed)
        db = local_database(c.store_location, c.blobs_location)
        server = None if db is not None else server_location(c.store_location,
                                                             c.blobs_location)
        if db is not None:
            fast = list_local(db, limit or None)
        elif server is not None:
            fast = list_server(*server, limit or None)
    if fast is not None:
        runs: list[Any] = fast.runs
        signed = fast.signed
    else:
        store = c.store(create=False)
        store.mark_stale_runs()
        if where or sort:
            from auditor.store.query import query_runs

            runs = query_runs(store, where, sort, size=limit or 10**9,
                              originals=not include_reruns).rows
        else:
            runs = store.list_runs(limit=limit or None)
        signed = signed_run_ids(store)
    hidden = 0 if include_reruns else sum(1 for r in runs if r.reproduces)
    runs = runs if include_reruns else [r for r in runs if not r.reproduces]
    if c.as_json:
        click.echo(json.dumps([{**_summary_json(r), "signed": r.id in signed} for r in runs],
                              indent=1))
    else:
        from auditor.report.records import print_runs

        print_runs(runs, shown_columns)
        if hidden and not c.quiet:
            click.echo(f"{hidden} rerun(s) not listed: --include-reruns lists each under "
                       "its original")
        unsigned = [r.id for r in runs if r.id not in signed]
        if unsigned and not c.quiet:  # a hint
            shown = ", ".join(i[:10] for i in unsigned[:5]) + (" …" if len(unsigned) > 5 else "")
            click.echo(f"{len(unsigned)} of {len(runs)} records unsigned ({shown}): set "
                       f"{KEY_ENV} to sign records when they are written")


def _summary_json(r: Any) -> dict[str, Any]:
    extra = {"params": r.params, "verified": r.verified} if hasattr(r, "verified") else {}
    return {**extra,
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "started_at": r.started_at.isoformat(),
        "commit": r.commit,
        "dirty": r.dirty,
        "reproduces": r.reproduces,
        "tags": list(r.tags),
        "final_metrics": {k: _jsonable_float(v) for k, v in r.final_metrics.items()},
    }


def _jsonable_float(v: float) -> float | str:
    return v if v == v and abs(v) != float("inf") else repr(v)


@main.command()
@json_option
@click.argument("run")
@quiet_option
@pass_ctx
def show(c: Ctx, run: str) -> None:
    """Show one run (any unique id prefix of at least 6 characters)."""
    store = c.store(create=False)
    store.mark_stale_runs()
    record_ = store.get_record(store.resolve(run))
    if c.as_json:
        click.echo(record_.model_dump_json(indent=1))
    else:
        from auditor.env.lock_cache import cached_lock_ref
        from auditor.report.records import print_record

        print_record(record_)
        from auditor.store.signatures import signature_of, state

        click.echo(f"record signature: {state(record_, signature_of(store, record_.identity.id))}")
        compiled = cached_lock_ref(store, record_)
        if compiled is not None:  # the lock rebuilds of this derived run really install
            click.echo(f"compiled lock            {compiled.packages} packages, sha256 "
                       f"{compiled.sha256[:12]}… (pip-compile of the derived lock, "
                       f"{compiled.compiled_at}; reused by build and verify)")


@main.command()
@click.argument("run")
@click.argument("dest", type=OutFolder)
@quiet_option
@pass_ctx
def checkout(c: Ctx, run: str, dest: Path) -> None:
    """Re-create a run's exact source tree in DEST (commit + diff + untracked files); a
    DEST that cannot be filled is left as it was."""
    from auditor.core.errors import InputError
    from auditor.core.safefile import check_folder
    from auditor.record.checkout import checkout_tree

    check_folder(dest)  # a file, link, FIFO or device there: refused before the store opens
    store = c.store(create=False)
    rec = store.get_record(store.resolve(run))
    if rec.code is None:
        raise IntegrityError(f"run {rec.identity.id} has no captured code")
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"{dest} exists and is not empty")
    checkout_tree(rec.code, {a.name: a for a in rec.artifacts}, store.blobs, dest)
    click.echo(f"rebuilt tree {rec.code.tree_sha256[:12]}… of run {rec.identity.id} in {dest}")


@main.command()
@click.option("--repair", is_flag=True,
              help="Remove leftovers of interrupted writes; rebuild curve previews.")
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Trusted public key: also check the certificate log's signed head.")
@quiet_option
@pass_ctx
def fsck(c: Ctx, repair: bool, keys: tuple[Path, ...]) -> None:
    """Check the store: database, records, objects, curve previews, the certificate log and
    what it certifies."""
    from auditor.core.keys import load_public_key
    from auditor.release.fsck import check_store

    public = [load_public_key(k) for k in keys]
    report = check_store(c.store(create=False), repair=repair, keys=public)
    for line in report.lines:
        click.echo(line)
    if report.problems:
        raise IntegrityError(f"{len(report.problems)} problem(s) found: {report.problems[0]}")


@main.group()
def store() -> None:
    """Store maintenance: schema upgrade, a team store's PostgreSQL roles."""


store.add_command(roles_cmd)  # audit store roles (cli/store.py)


@store.command()
@quiet_option
@pass_ctx
def upgrade(c: Ctx) -> None:
    """Upgrade an old store's schema (once, under the store's migration lock)."""
    opened = c.store(create=False)
    done = opened.upgrade
    if done.migrated:
        click.echo(f"store {opened.url} upgraded from revision {done.before} to {done.after}")
    else:
        click.echo(f"store {opened.url} is at the current revision {done.after}")


if __name__ == "__main__":  # pragma: no cover
    main()
