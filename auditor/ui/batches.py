"""The dashboard's batch pages (read-only): ``/batches`` lists the newest batches with
their runs counted by state and verdict; ``/batches/{id}`` shows each run of one batch
with the same verdict badges as the runs table, where it ran (node, GPU), how long, its
rerun, certificate and report links (``report/batch.py``'s rows, as ``audit batch show``).
``/api/batches`` and ``/api/batches/{id}`` give the same as JSON. Every value from the
store is escaped by the templates (autoescape); a report link is a link only when it is
an http(s) URL, otherwise text."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from auditor.report.batch import badge, counts_line
from auditor.store import RunStore
from auditor.ui import pages

MAX_BATCHES = 200
MAX_ITEMS = 2000


def _link(text: str) -> str | None:
    return text if text.startswith(("https://", "http://")) else None


def batch_routes(app: FastAPI, store: RunStore) -> None:
    """Add the batch pages to the dashboard."""

    @app.get("/batches", response_class=HTMLResponse)
    def batches_page() -> str:
        return pages._page("batches.html.j2", batches=store.batches().list(MAX_BATCHES))

    @app.get("/batches/{batch_id}", response_class=HTMLResponse)
    def batch_page(batch_id: str) -> str:
        batch = store.batches().get(batch_id)
        items = [{"item": i, "badge": badge(i), "css": i.verdict or i.state,
                  "reports": [(r, _link(r)) for r in i.reports]}
                 for i in batch.items[:MAX_ITEMS]]
        return pages._page("batch.html.j2", info=batch.info, items=items,
                           counts=counts_line(batch),
                           more=max(0, len(batch.items) - MAX_ITEMS))

    @app.get("/api/batches")
    def api_batches() -> list[dict[str, Any]]:
        return [asdict(i) for i in store.batches().list(MAX_BATCHES)]

    @app.get("/api/batches/{batch_id}")
    def api_batch(batch_id: str) -> dict[str, Any]:
        batch = store.batches().get(batch_id)
        return {"batch": asdict(batch.info),
                "items": [asdict(i) | {"badge": badge(i)} for i in batch.items[:MAX_ITEMS]],
                "more": max(0, len(batch.items) - MAX_ITEMS)}
