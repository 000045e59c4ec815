"""``audit compare``: experiments side by side, or a rerun against its original.

* ``audit compare RUN… | --where FILTER``: a params + metrics table of what differs
  (``dvc exp show`` style; ``--json``), then, over six runs or more (or with
  ``--metric``), the parameter importance over the comparable runs; exit 0: runs that
  differ in their settings are experiments, not failed reproductions;
* two runs where one reproduces the other (a rerun of it), or ``--as-rerun``: the
  reproduction verdict with its causes (exit 0 reproduced, 1 not).

Kept light at import time: ``audit list`` reads ``list_columns`` from here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from auditor.cli.options import (
    OutFile,
    hint,
    policy_from,
    policy_options,
    quiet_option,
    store_of,
    wants_json,
)
from auditor.core.errors import InputError

if TYPE_CHECKING:
    from auditor.core.policy import Policy
    from auditor.core.schema import RunRecord
    from auditor.store import RunStore

_COLUMN = re.compile(r"(params|metrics)\.[^,\s]{1,200}")


def list_columns(text: str) -> list[str]:
    """``params.lr,metrics.loss`` → the columns (InputError naming a bad one)."""
    out = [c.strip() for c in text.split(",") if c.strip()]
    for c in out:
        if not _COLUMN.fullmatch(c):
            raise InputError(f"--columns: {c!r} is not params.NAME or metrics.NAME")
    return out


@click.command("compare")
@click.argument("runs", nargs=-1)
@click.option("--where", "where", multiple=True, metavar="FILTER",
              help="Compare every original run this filter selects (as `audit list "
              "--where`); repeatable.")
@click.option("--as-rerun", is_flag=True, help="Treat the second of two runs as a rerun "
              "of the first: give the reproduction verdict and its causes.")
@policy_options(gpu=False)
@click.option("--html", "html_path", type=OutFile,
              help="Also write a self-contained comparison page (any number of runs; "
              "opens offline).")
@click.option("--metric", help="The metric for the importance (and, with --html, the "
              "parallel axes).")
@quiet_option
@click.pass_context
def compare_cmd(ctx: click.Context, /, runs: tuple[str, ...], where: tuple[str, ...],
                as_rerun: bool, html_path: Path | None, metric: str | None,
                **kw: Any) -> None:
    """Compare runs: a params + metrics table of what differs (any number, or --where); a
    rerun and its original (or --as-rerun) get a reproduction verdict."""
    policy = policy_from(kw)  # the repo's auditor.toml, as verify and rerun read it
    store = store_of(ctx)
    ids = _selected(store, runs, where)
    if html_path is not None:
        from auditor.ui.export import export_comparison

        export_comparison(store, ids, html_path, metric)
        hint(ctx, f"wrote {html_path} ({len(ids)} runs)")
    pair = _reproduction_pair(store, ids, as_rerun)
    if pair is not None:
        _verdict(ctx, store, *pair, policy)
    if html_path is None or wants_json(ctx) or len(ids) > 1:
        _experiments(ctx, store, ids, metric, bool(where))


def _selected(store: RunStore, runs: tuple[str, ...], where: tuple[str, ...]) -> list[str]:
    ids: list[str] = []
    for r in runs:
        full = store.resolve(r)
        if full not in ids:
            ids.append(full)
    if where:
        from auditor.store.query import query_runs

        found = query_runs(store, where, size=10**9, originals=True).rows
        ids += [r.id for r in found if r.id not in ids]
        if not found:
            raise InputError("no runs match " + " and ".join(repr(w) for w in where))
    if not ids:
        raise InputError("compare needs runs: RUN … or --where FILTER")
    return ids


def _reproduction_pair(store: RunStore, ids: list[str], as_rerun: bool
                       ) -> tuple[RunRecord, RunRecord] | None:
    """(original, rerun) when the two runs are one and its rerun, or --as-rerun."""
    if as_rerun and len(ids) != 2:
        raise InputError(f"--as-rerun compares two runs ({len(ids)} given)")
    if len(ids) != 2:
        return None
    a, b = (store.get_record(i) for i in ids)
    if b.identity.reproduces == a.identity.id or as_rerun:
        return a, b
    if a.identity.reproduces == b.identity.id:
        return b, a
    return None


def _verdict(ctx: click.Context, store: RunStore, a: RunRecord, b: RunRecord,
             policy: Policy) -> None:
    from auditor.certify.decide import decide
    from auditor.compare import compare_runs, evidence_from_store

    diffs = compare_runs(evidence_from_store(store, a), evidence_from_store(store, b),
                         policy.compare)
    verdict = decide(diffs, a, b, policy)
    if wants_json(ctx):
        click.echo(verdict.model_dump_json(indent=1))
    else:
        _print_verdict(verdict, a.identity.id, b.identity.id)
    sys.exit(verdict.exit_code)


def _experiments(ctx: click.Context, store: RunStore, ids: list[str], metric: str | None,
                 filtered: bool) -> None:
    import json

    from auditor.report.experiments import experiment_table, print_experiments
    from auditor.store.query import rows_of

    rows = rows_of(store, ids)
    table = experiment_table(rows)
    statements: list[str] = []
    imp: dict[str, Any] | None = None
    if metric or filtered or len(rows) >= 6:
        from auditor.ui.pages import jsonable
        from auditor.ui.views import choose_metric, importance_view

        chosen = choose_metric(rows, metric)
        imp = dict(jsonable(importance_view(rows, chosen)))
        statements = ([f"importance for {chosen}:"] + [f"  {s}" for s in imp["statements"]]
                      if chosen else ["importance: no metric"])
    if wants_json(ctx):
        click.echo(json.dumps({**table, "importance": imp}, indent=1))
    else:
        print_experiments(table, statements)


def _print_verdict(verdict: Any, left: str, right: str) -> None:
    from rich.text import Text

    from auditor.report.grouping import cause_line
    from auditor.report.records import console

    out = console()
    from auditor.certify.loosen import log_notes, shown_loosenings

    for line in shown_loosenings(verdict):  # first: what the policy let through
        out.print(Text(f"policy loosened: {line}", style="yellow"))
    for line in log_notes(verdict):  # the default policy at work, not a loosening
        out.print(Text(f"logs: {line}"))
    out.print(f"[bold]{verdict.level}[/]  {left} vs {right} (rerun)")
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
