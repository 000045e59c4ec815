"""``audit push`` and ``audit pull``: move runs between this store and another one.

Exit codes: 0 every run named is at the other side (copied now or already there; runs
still recording are listed and left out); 2 bad input (an unknown run, a malformed URL,
an unreachable database or artifact store, wrong credentials, a missing bucket) or a
conflict (the other store holds the run id with another record: ``RunConflict`` names
it, and every other run is still moved); 3 an object or a record failed its digest on
either side (nothing is written under a wrong digest), or the source failed its checks.

Before anything is copied (before the receiving store is even opened) the source is
checked (``release.tamper.transfer_problems``): its certificate log (chain, head, the
signed head against the lines it covers, and with ``--trust KEY.pub`` its signature),
its certificates table against the log, every record to be moved against its digest and
its record signature, and every certificate of a moved run against the records and
objects it signed. Any discrepancy: exit 3, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from auditor.cli.options import Ctx, pass_ctx, quiet_option

if TYPE_CHECKING:
    from auditor.core.keys import PrivateKey
    from auditor.store import RunStore
    from auditor.store.base import CertificateReader, RecordReader
    from auditor.store.sync import SyncReport


class _TargetLog:
    """The certificate log of the receiving store (its database, or ``log/`` beside its
    artifacts for SQLite)."""

    def __init__(self, store: CertificateReader, key: PrivateKey | None) -> None:
        from auditor.certify import log as certlog

        self.log = certlog.log_of(store)
        self.key = key
        self.blobs = store.blobs

    def has(self, cert_sha256: str) -> bool:
        from auditor.certify import log as certlog

        if not self.log.exists(certlog.LOG_NAME):
            return False
        return any(e.cert_sha256 == cert_sha256 for e in certlog.read_entries(self.log))

    def append(self, cert_sha256: str, run_id: str) -> None:
        from auditor.certify import log as certlog

        # unsigned (no --key): the last signed head stays and covers the lines before these
        certlog.append(self.log, cert_sha256, run_id, self.key,
                       read_certificate=lambda sha: self.blobs.read_bytes(sha, "certificate"))


trust_option = click.option(
    "--trust", type=click.Path(path_type=Path, dir_okay=False), multiple=True,
    metavar="KEY.pub", help="Public key the source's signed certificate log head and record "
    "signatures must verify with (repeatable); without one they are checked for consistency "
    "only.")


def _run_ids(store: RecordReader, runs: tuple[str, ...], every: bool) -> list[str]:
    from auditor.core.errors import InputError

    if every and runs:
        raise InputError("give run ids or --all, not both")
    if every:
        return sorted(store.run_versions())
    if not runs:
        raise InputError("name the runs to move (see `audit list`) or pass --all")
    return [store.resolve(ref) for ref in runs]


def _checked_ids(source: RunStore, runs: tuple[str, ...], every: bool,
                 trust: tuple[Path, ...]) -> list[str]:
    """The ids of the runs to move, once the source holds no discrepancy for them; the
    source is closed when it does (or the runs are bad input)."""
    try:
        ids = _run_ids(source, runs, every)
        _check_source(source, ids, trust)
    except BaseException:
        source.close()
        raise
    return ids


def _check_source(source: RunStore, ids: list[str], trust: tuple[Path, ...]) -> None:
    """``IntegrityError`` (exit 3) naming the first discrepancy at the source, if any."""
    from auditor.core.errors import IntegrityError
    from auditor.core.keys import load_public_key
    from auditor.release.tamper import transfer_problems

    keys = [load_public_key(p) for p in trust]
    problems = transfer_problems(source, ids, keys or None)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(
            f"{source.url}: {problems[0]}{more}: nothing copied",
            hint="the source store was changed behind auditor's back; run `audit fsck` on it")


def _move(c: Ctx, source: RunStore, target: RunStore, ids: list[str], key: Path | None,
          verb: str) -> None:
    from auditor.core.keys import load_private_key
    from auditor.store.sync import sync

    log = _TargetLog(target, load_private_key(key) if key else None)
    say = (lambda _line: None) if c.quiet or c.as_json else click.echo
    try:
        report = sync(source, target, ids, log=log, progress=say)
    finally:
        source.close()
        target.close()
    _summary(c, report, verb, target.url)


def _summary(c: Ctx, report: SyncReport, verb: str, where: str) -> None:
    if c.as_json:
        click.echo(json.dumps({
            "copied": report.copied, "present": report.present,
            "skipped": [{"run": r, "why": w} for r, w in report.skipped],
            "objects": report.objects, "bytes": report.object_bytes,
            "certificates": report.certificates, "restored": report.restored,
        }, indent=1))
        return
    left = f", {len(report.skipped)} still recording (left out)" if report.skipped else ""
    if report.restored:
        left += f"; {report.restored} missing object(s) of runs already there copied again"
    click.echo(f"{verb} {len(report.copied)} run(s) to {where} ({report.objects} object(s), "
               f"{report.object_bytes} bytes, {report.certificates} certificate(s)); "
               f"{len(report.present)} already there{left}")


@click.command("push")
@click.argument("runs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Push every run of this store.")
@click.option("--to", "to", required=True, metavar="PATH|URL",
              help="The team store's metadata: a directory or a SQLAlchemy URL.")
@click.option("--to-blobs", metavar="PATH|URL",
              help="Its artifacts (only the first time: a database store remembers them).")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False),
              help="Private key to sign the team store's certificate log head.")
@trust_option
@quiet_option
@pass_ctx
def push(c: Ctx, runs: tuple[str, ...], every: bool, to: str, to_blobs: str | None,
         key: Path | None, trust: tuple[Path, ...]) -> None:
    """Copy runs (record, metrics, artifacts, certificates) to another store, verified."""
    from auditor.store import open_store_at

    source = c.store(create=False)
    ids = _checked_ids(source, runs, every, trust)
    _move(c, source, open_store_at(to, blobs=to_blobs), ids, key, "pushed")


@click.command("pull")
@click.argument("runs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Pull every run of the other store.")
@click.option("--from", "from_", required=True, metavar="PATH|URL",
              help="The team store's metadata: a directory or a SQLAlchemy URL.")
@click.option("--from-blobs", metavar="PATH|URL",
              help="Its artifacts, when its database does not remember them.")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False),
              help="Private key to sign this store's certificate log head.")
@trust_option
@quiet_option
@pass_ctx
def pull(c: Ctx, runs: tuple[str, ...], every: bool, from_: str, from_blobs: str | None,
         key: Path | None, trust: tuple[Path, ...]) -> None:
    """Copy runs (record, metrics, artifacts, certificates) from another store, verified."""
    from auditor.store import open_store_at

    source = open_store_at(from_, blobs=from_blobs, create=False)
    ids = _checked_ids(source, runs, every, trust)
    _move(c, source, c.store(), ids, key, "pulled")
