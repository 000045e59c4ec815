"""``audit import mlflow``: bring runs in from another tracker.

Exit codes: 0 every run asked for is in the store (imported now or before; deleted and
unfinished runs are listed and left out; refused or withheld artifacts are each named on
one stderr line and in the run's record, the rest of the run is imported); 2 bad input (no
such experiment or run, a tracking server that does not answer, MLflow's client not
installed, an ``--artifact-root`` that is not a folder); 3 an object failed its digest.
"""

from __future__ import annotations

import json

import click

from auditor.cli.options import Ctx, pass_ctx, quiet_option


@click.group("import")
def import_group() -> None:
    """Import runs logged elsewhere (MLflow); each says what it lacks to be verified."""


@import_group.command("mlflow")
@click.option("--tracking-uri", required=True, metavar="URI",
              help="The MLflow tracking server, e.g. http://127.0.0.1:5000.")
@click.option("--experiment", "experiments", multiple=True, metavar="NAME",
              help="Only this experiment; repeatable (default: every experiment).")
@click.option("--run-id", "run_ids", multiple=True, metavar="ID",
              help="Only this MLflow run; repeatable.")
@click.option("--include-deleted", is_flag=True, help="Import deleted runs too.")
@click.option("--artifact-root", "artifact_roots", multiple=True, metavar="DIR|URI",
              help="Also read artifacts from under this folder (or URI prefix such as "
                   "s3://bucket/mlflow); repeatable. By default only the MLflow store's own "
                   "artifact root and its server are read.")
@quiet_option
@pass_ctx
def mlflow_cmd(c: Ctx, tracking_uri: str, experiments: tuple[str, ...],
               run_ids: tuple[str, ...], include_deleted: bool,
               artifact_roots: tuple[str, ...]) -> None:
    """Import MLflow runs: params, full metric histories, tags, git commit, artifacts."""
    from auditor.record.capture.secrets import redact_text
    from auditor.record.from_mlflow import import_mlflow, shown_uri

    store = c.store()
    say = (lambda _line: None) if c.quiet or c.as_json else click.echo
    try:
        report = import_mlflow(store, tracking_uri, experiments=experiments, run_ids=run_ids,
                               include_deleted=include_deleted, artifact_roots=artifact_roots,
                               progress=say)
    finally:
        store.close()
    for source, path, why in report.refused:
        what = "the artifacts" if path == "*" else f"artifact {path}"
        click.echo(redact_text(f"refused {what} of MLflow run {source}: {why}"), err=True)
    if c.as_json:
        click.echo(json.dumps({
            "imported": [{"mlflow": s, "run": r} for s, r in report.imported],
            "present": [{"mlflow": s, "run": r} for s, r in report.present],
            "skipped": [{"mlflow": s, "why": w} for s, w in report.skipped],
            "refused": [{"mlflow": s, "artifact": p, "why": redact_text(w)}
                        for s, p, w in report.refused]}, indent=1))
        return
    click.echo(f"imported {len(report.imported)} run(s) from {shown_uri(tracking_uri)}; "
               f"{len(report.present)} imported before, {len(report.skipped)} skipped "
               "(deleted or unfinished)")
