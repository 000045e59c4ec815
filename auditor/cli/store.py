"""``audit store roles``: a team store's PostgreSQL roles (registered on ``audit store``
in cli/main.py; the roles module loads only when the command runs)."""

from __future__ import annotations

import click

from auditor.cli.options import hint, quiet_option, store_of
from auditor.core.errors import InputError


@click.command("roles")
@click.option("--prefix", default="auditor", show_default=True,
              help="Role names: PREFIX_reader, PREFIX_recorder, PREFIX_verifier.")
@click.option("--print-sql", "print_sql", is_flag=True,
              help="Print the SQL (for a DBA to run as the store's owner).")
@click.option("--apply", "apply_", is_flag=True,
              help="Run it on the store as the URL's role (the owner, with CREATEROLE).")
@quiet_option
@click.pass_context
def roles_cmd(ctx: click.Context, prefix: str, print_sql: bool, apply_: bool) -> None:
    """Make the reader, recorder and verifier roles of a PostgreSQL store and grant them:
    a reader lists, shows and serves the dashboard; a recorder also records and pushes;
    only a verifier appends certificates. Idempotent: apply again after an upgrade."""
    from auditor.store import roles

    if print_sql == apply_:
        raise InputError("give exactly one of --print-sql or --apply")
    store = store_of(ctx)
    if print_sql:
        click.echo(roles.store_sql(store, prefix), nl=False)
        return
    made = roles.apply(store, prefix)
    hint(ctx, f"granted {made.reader}, {made.recorder} and {made.verifier} on {store.url}")
    hint(ctx, f"next: CREATE ROLE alice LOGIN PASSWORD '…' IN ROLE {made.reader};")
