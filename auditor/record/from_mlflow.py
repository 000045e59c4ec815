"""``audit import mlflow``: runs logged to an MLflow tracking server, brought into the store.

Read through MLflow's own client (``mlflow.MlflowClient``, installed as a test/extra
dependency only): runs are paged (``search_runs`` page tokens, 1,000 a page), metric
histories are read whole (the client pages ``get-history`` itself), artifacts are
downloaded one file at a time into a private temp folder and stored through the
create-only blob path. An artifact path that is absolute, holds ``..`` or a backslash,
or whose downloaded file resolves outside the temp folder is refused (named in the
run's ``not_captured``) and never read.

Each imported run keeps: params (MLflow's strings), the full metric series (bit-exact
as MLflow returns them; a value of ±1.7976931348623157e308, which is how MLflow's SQL
store clamps ±inf, is flagged in ``metrics.warnings``), tags (``identity.tags`` as
``key=value``), the git commit (``mlflow.source.git.commit``), start and end times, and
its status. What it lacks to be verifiable (no lockfile, no seeds, no determinism
settings, no captured source tree) is said in ``not_captured["verifiable"]``; ``audit
verify`` refuses such a run in one line (exit 3). Re-importing is idempotent: the
store's ``imports`` table is keyed on (``mlflow``, source run id). Deleted runs are
skipped unless ``include_deleted``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from auditor.core.errors import InputError, StoreError
from auditor.core.schema import (
    ArtifactRef,
    Code,
    Command,
    Identity,
    MetricsSummary,
    RunRecord,
    new_run_id,
)
from auditor.store.base import MetricPoint, RunStore, series_digest
from auditor.store.sync import import_run, imported_run_id

SOURCE = "mlflow"
PAGE = 1000
CLAMPED = 1.7976931348623157e308
LACKS = "no lockfile, no seed, no determinism settings, dirty tree not captured"
_USERINFO = re.compile(r"://[^/@\s]*@")  # user:password@ in any URL a message repeats
STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}


@dataclass
class ImportReport:
    """What an import did."""

    imported: list[tuple[str, str]] = field(default_factory=list)  # (source id, run id)
    present: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source id, why)


def shown_uri(uri: str) -> str:
    """The tracking URI without any user or password."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return uri


def safe_artifact_path(path: str) -> bool:
    """True for a relative, forward-slash path that stays inside its folder."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "\\" not in path and "\0" not in path \
        and not any(p in ("", ".", "..") for p in parts) and ":" not in parts[0]


def _client(uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise InputError("audit import mlflow needs MLflow's client",
                         hint="pip install mlflow") from None
    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _mlflow_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except (InputError, StoreError):
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, requests errors: one line
        text = str(exc).strip().splitlines()
        first = _USERINFO.sub("://", (text[0] if text else type(exc).__name__).replace(
            uri, shown_uri(uri)))[:300]
        raise StoreError(f"MLflow at {shown_uri(uri)}: {type(exc).__name__}: {first}",
                         hint="check --tracking-uri and that the server answers") from None


def import_mlflow(
    store: RunStore,
    uri: str,
    *,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    include_deleted: bool = False,
    progress: Callable[[str], None] = lambda _line: None,
) -> ImportReport:
    """Import the runs of ``experiments`` (names; all when empty) and/or ``run_ids``."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = _client(uri)
    report = ImportReport()
    with _mlflow_errors(uri):
        for run in _runs(client, experiments, run_ids, include_deleted):
            source_id = run.info.run_id
            if run.info.lifecycle_stage == "deleted" and not include_deleted:
                report.skipped.append((source_id, "deleted"))
                continue
            if run.info.status not in STATUS:
                report.skipped.append((source_id, f"still {run.info.status.lower()}"))
                continue
            known = imported_run_id(store, SOURCE, source_id)
            if known is not None:
                report.present.append((source_id, known))
                progress(f"present  mlflow {source_id} -> {known}")
                continue
            run_id = _import_one(store, client, uri, run)
            if run_id is None:
                known = imported_run_id(store, SOURCE, source_id) or "?"
                report.present.append((source_id, known))
            else:
                report.imported.append((source_id, run_id))
                progress(f"imported mlflow {source_id} -> {run_id}")
    return report


def _runs(client: Any, experiments: Sequence[str], run_ids: Sequence[str],
          include_deleted: bool) -> Iterator[Any]:
    from mlflow.entities import ViewType

    for run_id in run_ids:
        yield client.get_run(run_id)
    if run_ids and not experiments:
        return
    ids = []
    if experiments:
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise InputError(f"no MLflow experiment named {name!r}")
            ids.append(exp.experiment_id)
    else:
        token = None
        while True:
            page = client.search_experiments(view_type=ViewType.ALL, max_results=PAGE,
                                             page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                break
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    for exp_id in ids:
        token = None
        while True:
            page = client.search_runs([exp_id], run_view_type=view, max_results=PAGE,
                                      page_token=token, order_by=["attributes.start_time ASC"])
            yield from page
            token = page.token
            if not token:
                break


def _time(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms is not None else None


def _import_one(store: RunStore, client: Any, uri: str, run: Any) -> str | None:
    info, data = run.info, run.data
    started = _time(info.start_time) or datetime.now(UTC)
    run_id = new_run_id(int(started.timestamp() * 1000))
    points: list[MetricPoint] = []
    warnings: list[str] = []
    final: dict[str, float] = {}
    for key in sorted(data.metrics):
        history = sorted(client.get_metric_history(info.run_id, key),
                         key=lambda m: (m.step, m.timestamp))
        for m in history:
            value = float(m.value)
            points.append(MetricPoint(key, int(m.step), value, m.timestamp / 1000))
            if abs(value) == CLAMPED:
                warnings.append(f"{key} step {m.step}: {value:+.16g} looks like an infinity "
                                "MLflow clamped to the largest double")
        if history:
            final[key] = float(history[-1].value)
    tags = dict(data.tags)
    notes = {"verifiable": LACKS,
             "import": f"imported from MLflow run {info.run_id} at {shown_uri(uri)}"}
    artifacts, refused = _artifacts(store, client, info.run_id)
    if refused:
        notes["artifacts"] = "refused (path escapes the run): " + ", ".join(
            repr(p[:80]) for p in refused[:10])
    commit = tags.get("mlflow.source.git.commit")
    code = Code(vcs="git", root="", commit=commit, branch=tags.get("mlflow.source.git.branch"),
                remote=_no_userinfo(tags.get("mlflow.source.git.repoURL")), tree_sha256="",
                ) if commit else None
    ended = _time(info.end_time)
    record = RunRecord(
        identity=Identity(
            id=run_id, name=info.run_name or tags.get("mlflow.runName") or info.run_id,
            user=info.user_id or tags.get("mlflow.user") or "", host="mlflow",
            started_at=started, ended_at=ended,
            duration_s=(ended - started).total_seconds() if ended else None,
            status=STATUS[info.status],  # type: ignore[arg-type]
            tags=("imported:mlflow", *(f"{k}={v}" for k, v in sorted(tags.items()))),
        ),
        command=Command(argv=(tags.get("mlflow.source.name", ""),), cwd=".", mode="api"),
        code=code,
        params=dict(data.params),
        metrics=MetricsSummary(final=final, points=len(points),
                               series_sha256=series_digest(points), warnings=tuple(warnings)),
        artifacts=tuple(artifacts),
        not_captured=notes,
    )
    done = import_run(store, record, points, source=SOURCE, source_run_id=info.run_id,
                      origin=f"mlflow:{info.run_id}")
    return run_id if done else None


def _no_userinfo(url: str | None) -> str | None:
    return shown_uri(url) if url else None


def _artifacts(store: RunStore, client: Any, source_id: str
               ) -> tuple[list[ArtifactRef], list[str]]:
    refs: list[ArtifactRef] = []
    refused: list[str] = []
    with tempfile.TemporaryDirectory(prefix="auditor-mlflow-") as tmp:
        root = Path(tmp).resolve()
        pending: list[str | None] = [None]
        while pending:
            folder = pending.pop()
            for item in client.list_artifacts(source_id, folder):
                path = item.path
                if not safe_artifact_path(path):
                    refused.append(path)
                    continue
                if item.is_dir:
                    pending.append(path)
                    continue
                local = Path(client.download_artifacts(source_id, path, str(root))).resolve()
                if not local.is_relative_to(root) or not local.is_file() or local.is_symlink():
                    refused.append(path)
                    continue
                sha, size = store.blobs.put_file(local)
                refs.append(ArtifactRef(name=f"mlflow/{path}", sha256=sha, size=size,
                                        kind="output"))
                local.unlink()
    return refs, refused
