"""``audit ui``: serve the read-only dashboard over the store (uvicorn)."""

from __future__ import annotations

import ipaddress

import click

from auditor.cli.options import hint, quiet_option, store_of
from auditor.core.errors import InputError
from auditor.store import open_store


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("ui")
@click.option("--store", "store_location", metavar="PATH|URL",
              help="Store directory or SQLAlchemy URL (default: the global --store).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any non-loopback address needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="AUDITOR_UI_TOKEN", metavar="SECRET",
              help="Require this token on every request (env AUDITOR_UI_TOKEN); "
              "open the page with ?token=SECRET once.")
@quiet_option
@click.pass_context
def ui_cmd(ctx: click.Context, store_location: str | None, host: str, port: int,
           token: str | None) -> None:
    """Serve the dashboard: runs table, comparison, importance, run pages (read-only)."""
    if not is_loopback(host) and not token:
        raise InputError(f"refusing to serve on {host} without a token",
                         hint="pass --token or set AUDITOR_UI_TOKEN, or bind 127.0.0.1")
    if token is not None and len(token) < 16:
        raise InputError("the token is too short: use at least 16 characters")
    import uvicorn

    from auditor.ui.app import create_app

    store = open_store(store_location, create=False) if store_location else store_of(ctx)
    app = create_app(store, token=token)
    shown = f"http://{host}:{port}/" + ("?token=…" if token else "")
    hint(ctx, f"auditor dashboard on {shown} (store {store.url}); Ctrl-C stops it")
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
