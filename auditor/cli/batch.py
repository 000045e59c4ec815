"""``audit batch show|list``: batches of verifications (``store/batches.py``), whatever ran
them (a CI matrix, Kubernetes, Slurm, Ray): each run's verdict, where it ran (node, GPU),
how long, and its reports. ``show --junit/--markdown`` write one file for a whole sharded
batch (the CI's aggregate job). Exit 0 when every verified run reproduced, 1 when one did
not, 3 when one could not be verified or is still pending/running; 2 for an unknown batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from auditor.cli.options import OutFile, quiet_option, store_of, wants_json
from auditor.report.records import shown


def escape(value: object) -> str:
    """Text from the store, safe for a terminal (``report.records.shown``)."""
    return shown(value).plain

if TYPE_CHECKING:
    from auditor.certify.verdict import VerifyResult
    from auditor.store import RunStore
    from auditor.store.batches import Batch


@click.group("batch")
def batch_group() -> None:
    """Batches of verifications (CI shards, executors): verdicts, nodes, GPUs, reports."""


@batch_group.command("show")
@click.argument("batch_id", metavar="BATCH")
@click.option("--junit", type=OutFile, help="Write one JUnit file for the whole batch.")
@click.option("--markdown", type=OutFile, help="Write the batch's summary (Markdown).")
@quiet_option
@click.pass_context
def show(ctx: click.Context, batch_id: str, junit: Path | None, markdown: Path | None) -> None:
    """Each run of BATCH: verdict, shard, node, GPU, seconds, reports; exit like verify."""
    from auditor.core.safefile import check_target, write_target
    from auditor.report.batch import (
        ROW_HEADER,
        batch_rows,
        counts_line,
        render_batch_junit,
        render_batch_markdown,
    )

    for target in (junit, markdown):
        if target is not None:
            check_target(target)
    store = store_of(ctx)
    batch = store.batches().get(batch_id)
    if junit or markdown:
        results = _results(store, batch)
        if junit:
            write_target(junit, render_batch_junit(batch, results).encode("utf-8"))
        if markdown:
            write_target(markdown, render_batch_markdown(batch, results).encode("utf-8"))
    if wants_json(ctx):
        click.echo(json.dumps({"batch": asdict(batch.info),
                               "items": [asdict(i) for i in batch.items]}, indent=1))
    else:
        info = batch.info
        click.echo(f"batch {escape(info.id)}  created {info.created_at[:19]}  shards "
                   f"{info.shards}  executor {escape(info.executor)}  policy "
                   f"{info.policy_sha256[:12]}…")
        click.echo(counts_line(batch))
        rows = [ROW_HEADER, *batch_rows(batch)]
        widths = [max(len(r[c]) for r in rows) for c in range(len(ROW_HEADER) - 1)]
        for row in rows:
            click.echo("  ".join(escape(c).ljust(w) for c, w in zip(row, widths, strict=False))
                       + "  " + escape(row[-1]))
    ctx.exit(_exit_code(batch))


def _results(store: RunStore, batch: Batch) -> list[VerifyResult]:
    """The stored results of the batch's verified runs (by their reruns)."""
    from auditor.certify.issue import stored_result
    from auditor.core.errors import AuditorError

    found = []
    for item in batch.items:
        if item.state == "done" and item.rerun_id:
            try:
                found.append(stored_result(store, store.get_record(item.rerun_id)))
            except AuditorError:
                continue  # reported as an error suite: the stored result is missing
    return found


def _exit_code(batch: Batch) -> int:
    codes = [i.exit_code or 0 for i in batch.items if i.state in ("done", "failed")]
    if any(i.state in ("pending", "running") for i in batch.items):
        codes.append(3)
    return max(codes, default=0)


@batch_group.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@quiet_option
@click.pass_context
def list_cmd(ctx: click.Context, limit: int) -> None:
    """The newest batches with their runs counted by state and verdict."""
    infos = store_of(ctx).batches().list(limit)
    if wants_json(ctx):
        click.echo(json.dumps([asdict(i) for i in infos], indent=1))
        return
    for info in infos:
        states = ", ".join(f"{n} {s}" for s, n in sorted(info.states.items())) or "no runs"
        click.echo(f"{escape(info.id)}  {info.created_at[:19]}  {info.shards} shard(s)  "
                   f"{escape(info.executor)}  {states}")


COMMANDS: tuple[click.Command, ...] = (batch_group,)
