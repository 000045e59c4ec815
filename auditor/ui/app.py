"""``audit ui``: a read-only web app over the run store (FastAPI + jinja2, no CDN).

Security, in one place:
* it binds 127.0.0.1 unless told otherwise, and refuses any other address without a token
  (``--token`` or ``AUDITOR_UI_TOKEN``); with a token every request must carry it
  (``Authorization: Bearer …``, or ``?token=…`` once, which sets an HttpOnly cookie);
* on loopback without a token the Host header must name loopback (DNS rebinding);
* only GET/HEAD routes exist: no endpoint writes to the store;
* every response carries a strict Content-Security-Policy (scripts only from this origin,
  no inline script, no eval), nosniff, no referrer, no framing;
* templates autoescape with StrictUndefined; data for scripts goes through ``tojson``
  (``<``, ``>``, ``&`` and quotes escaped) inside ``type="application/json"`` tags;
* artifacts are downloaded by run id and sha256 (never by path) and re-hashed before
  they are sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware

from auditor.core.errors import AuditorError, InputError, IntegrityError, RunNotFound
from auditor.store.base import RunStore
from auditor.store.query import (
    Row,
    RowCache,
    latest_verdicts,
    page_runs,
    parse_query,
    reruns_of,
    sort_rows,
)
from auditor.ui import pages
from auditor.ui.views import MAX_COMPARE, compare_view, curves, importance_view

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
STATIC = ("app.js", "app.css", "vendor/echarts-6.1.0.min.js")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "testserver")
MAX_INLINE_DOWNLOAD = 256 << 20
_LOCK = threading.Lock()


def static_bytes(name: str) -> bytes:
    """A file shipped in ``auditor/ui/static`` (only the listed ones)."""
    if name not in STATIC:
        raise RunNotFound(name)
    return (resources.files("auditor.ui") / "static" / name).read_bytes()


class Guard(BaseHTTPMiddleware):
    """Token, Host and security headers for every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.query_params.get("token")
        if self.token is None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0]
            if host not in LOOPBACK:
                return _headers(Response("bad Host header\n", 400, media_type="text/plain"))
        elif not self._allowed(request, given):
            return _headers(Response("token required\n", 401, media_type="text/plain"))
        response = await call_next(request)
        if self.token is not None and given:
            response.set_cookie("auditor_ui", self.token, httponly=True, samesite="strict")
        return _headers(response)

    def _allowed(self, request: Request, given: str | None) -> bool:
        assert self.token is not None
        header = request.headers.get("authorization", "")
        candidates = [given or "", request.cookies.get("auditor_ui", ""),
                      header.removeprefix("Bearer ")]
        return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates
                   if c)


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def create_app(store: RunStore, *, token: str | None = None) -> FastAPI:
    """The dashboard over ``store`` (read-only)."""
    app = FastAPI(title="auditor dashboard", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(Guard, token=token)

    @app.exception_handler(AuditorError)
    async def _auditor_error(request: Request, exc: AuditorError) -> Response:
        code = 404 if isinstance(exc, RunNotFound) else 400 if isinstance(exc, InputError) \
            else 409
        message = " ".join(str(exc).split())
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=code)
        return HTMLResponse(pages.error_page(message, code), status_code=code)

    _routes(app, store)
    from auditor.ui.batches import batch_routes  # the batch pages (ui/batches.py)

    batch_routes(app, store)
    return app


def _rows(cache: RowCache) -> list[Row]:
    with _LOCK:  # requests run in a thread pool; one refresh at a time
        return cache.refresh()


def _run_ids(store: RunStore, runs: str | None, run: list[str] | None) -> list[str]:
    wanted = [r for r in (runs or "").split(",") if r.strip()] + list(run or [])
    if not wanted:
        raise InputError("no runs to compare: pass ?runs=ID,ID or ?where=FILTER")
    if len(wanted) > MAX_COMPARE:
        raise InputError(f"at most {MAX_COMPARE} runs can be compared at once")
    ids: list[str] = []
    for r in wanted:
        full = store.resolve(r.strip())
        if full not in ids:
            ids.append(full)
    return ids


Where = Annotated[str | None, Query(max_length=4000)]
Sort = Annotated[str | None, Query(max_length=400)]
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]
Size = Annotated[int, Query(ge=1, le=500)]
RunsParam = Annotated[str | None, Query(max_length=2000)]
RunList = Annotated[list[str] | None, Query(max_length=MAX_COMPARE)]
Metric = Annotated[str | None, Query(max_length=300)]
Cols = Annotated[list[str] | None, Query(max_length=100)]
Flag = Annotated[int, Query(ge=0, le=1)]


def _selection(store: RunStore, cache: RowCache, runs: str | None, run: list[str] | None,
               where: str | None, sort: str | None) -> tuple[list[str], list[Row] | None]:
    """The runs a compare page shows, and (for ``where``) every run the filter matched:
    the first MAX_COMPARE originals are drawn, all of them weighed."""
    if where is None or runs or run:
        return _run_ids(store, runs, run), None
    query = parse_query([where] if where.strip() else [], sort)
    matched = [r for r in _rows(cache) if query.matches(r)]
    if query.sort:
        matched = sort_rows(matched, query.sort)
    drawn = [r.id for r in matched if not r.reproduces][:MAX_COMPARE]
    if not drawn:
        raise InputError(f"no runs match {where!r}")
    return drawn, matched  # reruns are weighed only to be named as left out


def _routes(app: FastAPI, store: RunStore) -> None:
    cache = RowCache(store)

    @app.get("/", response_class=HTMLResponse)
    def runs_page(where: Where = None, sort: Sort = None, page: PageNo = 1, size: Size = 50,
                  col: Cols = None, metric: Metric = None, reruns: Flag = 0) -> str:
        query = parse_query([where] if where else [], sort, originals=True)
        result = page_runs(store, query, page=page, size=size)
        matched: list[Row] = []
        if metric or any(k.startswith("metrics.") for k, _ in query.sort):
            # the best-run panel weighs every matched run (seed noise): the cached rows
            matched = [r for r in _rows(cache) if query.matches(r)]
        nested = reruns_of(store, result.rows) if reruns and result.reruns else {}
        return pages.runs_page(result, where or "", sort or "", col, metric, matched,
                               nested=nested, show_reruns=bool(reruns))

    @app.get("/api/runs")
    def api_runs(where: Where = None, sort: Sort = None, page: PageNo = 1,
                 size: Size = 50, reruns: Flag = 0) -> dict[str, Any]:
        result = page_runs(store, parse_query([where] if where else [], sort, originals=True),
                           page=page, size=size)
        nested = reruns_of(store, result.rows) if reruns and result.reruns else {}
        return {"total": result.total, "matched": result.matched, "page": result.page,
                "pages": result.pages, "size": result.size, "reruns": result.reruns,
                "runs": [{**pages.row_json(r), **({"reruns": [pages.row_json(x) for x in
                                                              nested.get(r.id, [])]}
                                                  if reruns else {})}
                         for r in result.rows]}

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(runs: RunsParam = None, run: RunList = None, metric: Metric = None,
                     where: Where = None, sort: Sort = None) -> str:
        ids, matched = _selection(store, cache, runs, run, where, sort)
        return pages.compare_page(compare_view(store, ids, metric, latest_verdicts(store),
                                               matched), where=where)

    @app.get("/api/compare", response_class=JSONResponse,
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
    def api_compare(runs: RunsParam = None, run: RunList = None, metric: Metric = None,
                    where: Where = None, sort: Sort = None) -> Response:
        ids, matched = _selection(store, cache, runs, run, where, sort)
        # already plain JSON values: sent as they are, not walked again by FastAPI's encoder
        return _json(pages.jsonable(compare_view(store, ids, metric, latest_verdicts(store),
                                                 matched)))

    @app.get("/api/importance")
    def api_importance(where: Where = None, metric: Metric = None) -> dict[str, Any]:
        query = parse_query([where] if where else [], None)  # reruns: named as left out
        rows = [r for r in _rows(cache) if query.matches(r)]
        from auditor.ui.views import choose_metric

        return dict(pages.jsonable(importance_view(rows, choose_metric(rows, metric))))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str) -> str:
        rec = store.get_record(store.resolve(run_id))
        certs = [c for c in getattr(store, "certificates", lambda **_: [])(run_id=rec.identity.id)]
        return pages.run_page(rec, certs, curves(store, [rec.identity.id]))

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str) -> dict[str, Any]:
        rec = store.get_record(store.resolve(run_id))
        return {"id": rec.identity.id, "status": rec.identity.status,
                "record": json.loads(rec.model_dump_json()),
                "curves": pages.jsonable(curves(store, [rec.identity.id]))}

    @app.get("/api/runs/{run_id}/curves", response_class=JSONResponse,
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
    def api_curves(run_id: str) -> Response:
        full = store.resolve(run_id)
        rec = store.get_record(full)
        return _json({"id": full, "status": rec.identity.status,
                      "curves": pages.jsonable(curves(store, [full]))})

    @app.get("/api/runs/{run_id}/artifacts/{sha256}")
    def artifact(run_id: str, sha256: str) -> Response:
        rec = store.get_record(store.resolve(run_id))
        found = next((a for a in rec.artifacts if a.sha256 == sha256), None)
        if found is None:
            raise RunNotFound(f"{run_id}: artifact {sha256[:16]}")
        return _download(store, found.sha256, found.name, found.size)

    @app.get("/static/{name:path}")
    def static(name: str) -> Response:
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(static_bytes(name), media_type=media)


def _json(data: Any) -> Response:
    return Response(json.dumps(data, allow_nan=False, separators=(",", ":")),
                    media_type="application/json")


def _download(store: RunStore, sha256: str, name: str, size: int) -> Response:
    path: Path = store.blobs.verified_path(sha256, name)
    if size > MAX_INLINE_DOWNLOAD:
        from fastapi.responses import FileResponse

        return FileResponse(path, filename=Path(name).name)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:  # the bytes we send, hashed again
        raise IntegrityError(f"artifact {name!r} changed while it was read")
    filename = Path(name).name.encode("ascii", "replace").decode().replace('"', "_")
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
