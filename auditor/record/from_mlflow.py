"""``audit import mlflow``: runs logged to an MLflow tracking server, brought into the store.

Read through MLflow's own client (``mlflow.MlflowClient``, installed as a test/extra
dependency only): runs are paged (``search_runs`` page tokens, 1,000 a page), metric
histories are read whole (the client pages ``get-history`` itself).

Artifacts are host data the MLflow database only points at, so the database is not
trusted to say where they are (``locate``): a run's ``artifact_uri`` is read only

* from a local folder inside the store's own artifact root (a file store's folder;
  ``mlruns``/``mlartifacts`` beside a SQLite database) or a folder given with
  ``--artifact-root``, walked by file descriptors from that root: no symbolic link is
  followed (one inside the root is refused by name), only regular files are read;
* through the tracking server itself (``mlflow-artifacts:`` of that server), or under a
  URI prefix given with ``--artifact-root`` (``s3://bucket/mlflow``), one file at a time
  into a private temp folder.

Anything else (an absolute path elsewhere, ``file://`` to another folder, ``..``, another
host) is refused whole and never listed. Each file read goes through the output scan
(``secrets.scan_stream``): one holding a secret is withheld. A refused or withheld
artifact is named in the run's ``not_captured`` and in ``ImportReport.refused`` (the CLI
prints one line for each). Params and tags go through ``redact_params`` (secret names and
shapes), metric names through ``redact_text``, and the whole record through
``scrub_strings``, as a recorded run's do.

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
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

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
from auditor.record.capture.secrets import (
    redact_params,
    redact_text,
    scan_stream,
    scrub_strings,
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
    # (source id, artifact path or "*" for the whole location, why): refused or withheld
    refused: list[tuple[str, str, str]] = field(default_factory=list)


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
    artifact_roots: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _line: None,
) -> ImportReport:
    """Import the runs of ``experiments`` (names; all when empty) and/or ``run_ids``;
    artifacts only from the store's own roots and ``artifact_roots`` (``ArtifactRoots``)."""
    roots = ArtifactRoots.for_tracking(uri, artifact_roots)
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
            run_id = _import_one(store, client, uri, run, roots, report)
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


def _metric_names(metrics: Any, warnings: list[str]) -> dict[str, str]:
    """Each source metric name and the name it is stored under (the record scan applied;
    a name that holds a secret and then clashes with another is left out, and said)."""
    names: dict[str, str] = {}
    for key in sorted(metrics):
        clean = redact_text(key)
        if clean in names.values():
            warnings.append(f"a metric whose name holds a secret was not imported ({clean})")
            continue
        names[key] = clean
    return names


def _import_one(store: RunStore, client: Any, uri: str, run: Any, roots: ArtifactRoots,
                report: ImportReport) -> str | None:
    info, data = run.info, run.data
    started = _time(info.start_time) or datetime.now(UTC)
    run_id = new_run_id(int(started.timestamp() * 1000))
    points: list[MetricPoint] = []
    warnings: list[str] = []
    final: dict[str, float] = {}
    params = redact_params(dict(data.params))  # first: what they learn, the scans find
    tags = redact_params(dict(data.tags))
    names = _metric_names(data.metrics, warnings)
    for source_key, key in names.items():
        history = sorted(client.get_metric_history(info.run_id, source_key),
                         key=lambda m: (m.step, m.timestamp))
        for m in history:
            value = float(m.value)
            points.append(MetricPoint(key, int(m.step), value, m.timestamp / 1000))
            if abs(value) == CLAMPED:
                warnings.append(f"{key} step {m.step}: {value:+.16g} looks like an infinity "
                                "MLflow clamped to the largest double")
        if history:
            final[key] = float(history[-1].value)
    notes = {"verifiable": LACKS,
             "import": f"imported from MLflow run {info.run_id} at {shown_uri(uri)}"}
    artifacts, refused = _artifacts(store, client, info.run_id, info.artifact_uri, roots)
    for path, why in refused:
        notes["artifacts" if path == "*" else f"mlflow/{path}"] = why
        report.refused.append((info.run_id, path, why))
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
        params=params,
        metrics=MetricsSummary(final=final, points=len(points),
                               series_sha256=series_digest(points), warnings=tuple(warnings)),
        artifacts=tuple(artifacts),
        not_captured=notes,
    )
    clean = scrub_strings(record.model_dump())  # the last net, as for a recorded run
    record = RunRecord.model_validate(clean)
    done = import_run(store, record, points, source=SOURCE, source_run_id=info.run_id,
                      origin=f"mlflow:{info.run_id}")
    return run_id if done else None


def _no_userinfo(url: str | None) -> str | None:
    return shown_uri(url) if url else None


# ---------------------------------------------------------------------------- artifacts

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Refused(Exception):
    """An artifact location or file that is not read (the message says why)."""


@dataclass(frozen=True)
class ArtifactRoots:
    """Where artifacts may be read from: local folders (read by us, links never followed)
    and URI prefixes (read through MLflow's client); ``mlflow-artifacts:`` locations of the
    tracking server itself are read through that server."""

    local: tuple[Path, ...] = ()
    remote: tuple[str, ...] = ()
    tracking_netloc: str = ""

    @classmethod
    def for_tracking(cls, uri: str, given: Sequence[str] = ()) -> ArtifactRoots:
        """The roots for tracking ``uri``: its own store's folders plus the ``given`` ones
        (a folder, or a URI prefix such as ``s3://bucket/mlflow``)."""
        local = [Path(os.path.realpath(p)) for p in default_roots(uri)]
        remote: list[str] = []
        for root in given:
            if "://" in root and not root.startswith("file://"):
                remote.append(root.rstrip("/"))
                continue
            path = Path(unquote(urlsplit(root).path) if root.startswith("file://") else root)
            if not path.is_dir():
                raise InputError(f"--artifact-root {root}: not a folder")
            local.append(Path(os.path.realpath(path)))
        return cls(tuple(local), tuple(remote), urlsplit(uri).netloc.rpartition("@")[2])


def default_roots(uri: str) -> list[Path]:
    """The artifact folders of a local MLflow store: a file store's own folder; beside a
    SQLite database, ``mlruns`` and ``mlartifacts`` (MLflow's defaults). A server's
    artifacts come through the server (``mlflow-artifacts:``), never from our disk."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        db = uri.split(":///", 1)[1] if ":///" in uri else ""
        folder = Path(db).parent if db else None
        return [folder / "mlruns", folder / "mlartifacts"] if folder else []
    if parts.scheme == "file" or (not parts.scheme and uri):
        return [Path(unquote(parts.path) if parts.scheme else uri)]
    return []


def _no_dotdot(path: str) -> bool:
    return ".." not in path.replace("\\", "/").split("/")


def locate(artifact_uri: str, roots: ArtifactRoots) -> tuple[Path, list[str]] | None:
    """Where a run's artifacts may be read: (root, parts below it) for a local folder,
    None for a location read through MLflow's client; ``_Refused`` for anything else."""
    parts = urlsplit(artifact_uri)
    shown = redact_text(artifact_uri)[:200]
    if parts.scheme in ("", "file"):
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise _Refused(f"{shown} is a file URI on another host; not read")
        path = unquote(parts.path) if parts.scheme else artifact_uri
        if not path.startswith("/") or not _no_dotdot(path) or "\0" in path:
            raise _Refused(f"{shown} is not an absolute path without '..'; not read")
        real = Path(os.path.realpath(path))
        for root in roots.local:
            if real.is_relative_to(root):
                return root, list(real.relative_to(root).parts)
        raise _Refused(f"{shown} lies outside the MLflow store's artifact root(s); not read "
                       "(pass --artifact-root DIR to allow a folder)")
    if not _no_dotdot(unquote(parts.path)):
        raise _Refused(f"{shown} holds '..'; not read")
    if parts.scheme == "mlflow-artifacts" and parts.netloc in ("", roots.tracking_netloc):
        return None
    for prefix in roots.remote:
        if artifact_uri == prefix or artifact_uri.startswith(prefix + "/"):
            return None
    raise _Refused(f"{shown} is neither on the tracking server nor under an --artifact-root; "
                   "not read")


def _artifacts(store: RunStore, client: Any, source_id: str, artifact_uri: str,
               roots: ArtifactRoots) -> tuple[list[ArtifactRef], list[tuple[str, str]]]:
    """The run's artifacts stored, and (artifact, why) for each one refused or withheld."""
    refs: list[ArtifactRef] = []
    refused: list[tuple[str, str]] = []
    try:
        where = locate(artifact_uri, roots)
    except _Refused as exc:
        return refs, [("*", str(exc))]
    if where is None:
        _through_client(store, client, source_id, refs, refused)
    else:
        _from_folder(store, *where, refs, refused)
    return refs, refused


def _keep(store: RunStore, fh: BinaryIO, path: str, refs: list[ArtifactRef],
          refused: list[tuple[str, str]]) -> None:
    """Store one artifact unless the output scan finds a secret in it."""
    if (why := scan_stream(fh)) is not None:
        refused.append((path, f"not stored, it holds {why}"))
        return
    fh.seek(0)
    sha, size = store.blobs.put_stream(fh)
    refs.append(ArtifactRef(name=f"mlflow/{path}", sha256=sha, size=size, kind="output"))


def _from_folder(store: RunStore, root: Path, below: list[str], refs: list[ArtifactRef],
                 refused: list[tuple[str, str]]) -> None:
    """Walk a local artifact folder from ``root`` by file descriptors: no link is followed,
    only regular files are read."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in below:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        refused.append(("*", f"the artifact folder cannot be opened without following a link "
                             f"({exc.strerror}); not read"))
        return
    try:
        _walk(store, fd, "", refs, refused)
    finally:
        os.close(fd)


def _walk(store: RunStore, fd: int, prefix: str, refs: list[ArtifactRef],
          refused: list[tuple[str, str]]) -> None:
    for name in sorted(os.listdir(fd)):
        path = prefix + name
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not safe_artifact_path(path):
            refused.append((path, "an unsafe name"))
        elif stat.S_ISLNK(st.st_mode):
            refused.append((path, "a symbolic link; links are never followed"))
        elif stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _walk(store, sub, path + "/", refs, refused)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            try:
                file_fd = os.open(name, _FILE_FLAGS, dir_fd=fd)
            except OSError as exc:
                refused.append((path, exc.strerror or "cannot be opened"))
                continue
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                os.close(file_fd)
                refused.append((path, "not a regular file"))
                continue
            os.set_blocking(file_fd, True)
            with os.fdopen(file_fd, "rb") as fh:
                _keep(store, fh, path, refs, refused)
        else:
            refused.append((path, "not a regular file"))


def _through_client(store: RunStore, client: Any, source_id: str, refs: list[ArtifactRef],
                    refused: list[tuple[str, str]]) -> None:
    """Artifacts served by the tracking server, downloaded one at a time into a private
    temp folder."""
    with tempfile.TemporaryDirectory(prefix="auditor-mlflow-") as tmp:
        root = Path(tmp).resolve()
        pending: list[str | None] = [None]
        while pending:
            folder = pending.pop()
            for item in client.list_artifacts(source_id, folder):
                path = item.path
                if not safe_artifact_path(path):
                    refused.append((path, "a path that escapes the run"))
                    continue
                if item.is_dir:
                    pending.append(path)
                    continue
                local = Path(client.download_artifacts(source_id, path, str(root)))
                if (local.is_symlink() or not local.resolve().is_relative_to(root)
                        or not local.is_file()):
                    refused.append((path, "not a regular file inside the download folder"))
                    continue
                with local.open("rb") as fh:
                    _keep(store, fh, path, refs, refused)
                local.unlink()
