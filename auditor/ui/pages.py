"""HTML pages of the dashboard: ``templates/ui/*.html.j2`` rendered with autoescape on and
StrictUndefined; data for the page scripts goes through jinja's ``tojson`` into
``<script type="application/json">`` tags. The static export inlines the same scripts and
styles, each allowed by its sha256 in a CSP meta tag, so one file opens offline.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from auditor.core.schema import RunRecord
from auditor.store.query import Page, Row
from auditor.ui.importance import best_run
from auditor.ui.views import SECTIONS, flatten

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "ui"  # shipped in the wheel
DEFAULT_COLUMNS = ("name", "status", "verified", "started", "tags")
PLAIN_COLUMNS = ("id", "name", "status", "verified", "started", "tags", "commit")
# a page's size bound: rows of one section of a run page, curves embedded in it, keys
# offered as columns on the runs page (the record keeps them all: `audit show --json`)
MAX_ROWS = 200
MAX_CURVES = 50
MAX_COLUMN_KEYS = 200


@functools.cache
def _env() -> Environment:
    """One environment per process: jinja compiles each template once and keeps it."""
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else repr(v)
    return str(v)


def jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats become None, datetimes ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def row_json(r: Row) -> dict[str, Any]:
    """A table row for the JSON API."""
    return dict(jsonable({"id": r.id, "name": r.name, "status": r.status, "verified": r.verified,
                     "started": r.started_at, "commit": r.commit, "dirty": r.dirty,
                     "reproduces": r.reproduces, "tags": list(r.tags), "params": r.params,
                     "metrics": r.metrics}))


def _page(template: str, inline: bool = False, **context: Any) -> str:
    scripts = {}
    if inline:
        root = resources.files("auditor.ui") / "static"
        scripts = {"echarts": (root / "vendor" / "echarts-6.1.0.min.js").read_text("utf-8"),
                   "app": (root / "app.js").read_text("utf-8"),
                   "css": (root / "app.css").read_text("utf-8")}
        for name in ("echarts", "app"):
            if "</script" in scripts[name].lower():
                raise ValueError(f"{name} script cannot be inlined")
    csp = ""
    if inline:
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(scripts[n].encode()).digest()).decode()
            + "'" for n in ("echarts", "app"))
        csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
               "img-src data:; base-uri 'none'; form-action 'none'")
    return _env().get_template(template).render(inline=inline, scripts=scripts, csp=csp,
                                                 **context)


def error_page(message: str, code: int) -> str:
    """A page saying what went wrong (escaped)."""
    return _page("error.html.j2", message=message, code=code)


def runs_page(result: Page, where: str, sort: str, cols: Sequence[str] | None,
              metric: str | None, matched: Sequence[Row], *,
              nested: dict[str, list[Row]] | None = None, show_reruns: bool = False) -> str:
    """The runs table: filter form, column chooser, one page of originals (each with its
    reruns nested under it when ``show_reruns``), pager."""
    available = [*PLAIN_COLUMNS, *(f"params.{k}" for k in result.param_keys[:MAX_COLUMN_KEYS]),
                 *(f"metrics.{k}" for k in result.metric_keys[:MAX_COLUMN_KEYS])]
    chosen = [c for c in (cols or []) if c in available] or [
        *DEFAULT_COLUMNS, *(f"params.{k}" for k in result.param_keys[:6]),
        *(f"metrics.{k}" for k in result.metric_keys[:4])]
    sort_metric = next((k[8:] for k in sort.lstrip("-").split(",") if k.startswith("metrics.")),
                       None) if sort else None
    best_metric = metric or sort_metric
    best = best_run(matched, best_metric) if best_metric else None

    def link(**change: Any) -> str:
        base = {"where": where, "sort": sort, "page": result.page, "size": result.size,
                "col": chosen if cols else [], "metric": metric or "",
                "reruns": 1 if show_reruns else ""}
        base.update(change)
        pairs = [(k, v) for k, v in base.items() if not isinstance(v, list) and v not in ("", None)]
        pairs += [(k, item) for k, v in base.items() if isinstance(v, list) for item in v]
        return "/?" + urlencode(pairs)

    rows = [{"id": r.id, "cells": [_cell(r, c) for c in chosen], "verified": r.verified,
             "reruns": [{"id": x.id, "cells": [_cell(x, c) for c in chosen],
                         "verified": x.verified} for x in (nested or {}).get(r.id, [])]}
            for r in result.rows]
    filtered = "/compare?" + urlencode([(k, v) for k, v in (("where", where), ("sort", sort),
                                                             ("metric", best_metric or ""))
                                        if v])
    sort_links = {c: link(sort=("-" + c if sort == c else c), page=1) for c in chosen
                  if c != "tags"}
    return _page("runs.html.j2", page=result, rows=rows, columns=chosen, available=available,
                 where=where, sort=sort, metric=metric or "", sort_links=sort_links,
                 prev=link(page=result.page - 1) if result.page > 1 else None,
                 next=link(page=result.page + 1) if result.page < result.pages else None,
                 best=jsonable(best), best_metric=best_metric,
                 metrics=result.metric_keys[:MAX_COLUMN_KEYS],
                 reruns=result.reruns, show_reruns=show_reruns, filtered=filtered,
                 toggle=link(reruns="" if show_reruns else 1))


def _cell(r: Row, column: str) -> str:
    if column == "tags":
        return ", ".join(r.tags)
    if column == "started":
        return r.started_at.strftime("%Y-%m-%d %H:%M:%S")
    if column == "commit":
        return (r.commit or "-")[:10] + ("*" if r.dirty else "")
    return _num(r.value(column))


def compare_page(view: dict[str, Any], *, inline: bool = False, where: str | None = None
                 ) -> str:
    """The comparison of N runs (the static export when ``inline``); ``where``: the filter
    that chose them."""
    data = jsonable(view)
    return _page("compare.html.j2", inline=inline, view=data, data=data,
                 sections=data["sections"], where=where)


def _bounded(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most ``MAX_ROWS`` rows, the last saying how many more the record holds."""
    if len(rows) <= MAX_ROWS:
        return rows
    return [*rows[:MAX_ROWS], ("…", f"and {len(rows) - MAX_ROWS} more (audit show --json)")]


def run_page(rec: RunRecord, certs: Sequence[dict[str, Any]],
             live: dict[str, Any]) -> str:
    """One run: record sections, artifacts, certificates (each explained: verdict, first
    divergence, top cause, report link; ``views.explained``), live curves (a rerun's with
    its original's overlaid and the first divergence marked: ``views.run_curves``)."""
    curves: dict[str, Any] = live["curves"]
    flat = flatten(rec)
    sections: dict[str, list[tuple[str, str]]] = {}
    for (section, key), value in sorted(
            flat.items(), key=lambda kv: (SECTIONS.index(kv[0][0]), kv[0][1])):
        sections.setdefault(section, []).append((key, value))
    ident = rec.identity
    identity = [("id", ident.id), ("name", ident.name), ("status", ident.status),
                ("user", ident.user), ("host", ident.host),
                ("started", ident.started_at.isoformat()),
                ("ended", ident.ended_at.isoformat() if ident.ended_at else "-"),
                ("duration", f"{ident.duration_s:.1f} s" if ident.duration_s else "-"),
                ("exit code", _num(ident.exit_code)), ("reproduces", ident.reproduces or "-"),
                ("tags", ", ".join(ident.tags) or "-"),
                ("command", " ".join(rec.command.argv))]
    shown_curves = dict(list(curves.items())[:MAX_CURVES])
    data = {"id": ident.id, "status": ident.status, "curves": jsonable(shown_curves),
            "more_curves": len(curves) - len(shown_curves), "original": live["original"],
            "divergence": jsonable(live["divergence"])}
    return _page("run.html.j2", ident=ident, identity=identity,
                 sections={name: _bounded(rows) for name, rows in sections.items()},
                 artifacts=rec.artifacts[:MAX_ROWS],
                 more_artifacts=max(0, len(rec.artifacts) - MAX_ROWS), certs=certs, data=data,
                 not_captured=_bounded(sorted(rec.not_captured.items())),
                 record_json=json.dumps(json.loads(rec.model_dump_json()), indent=1)[:200_000])
