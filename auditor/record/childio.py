"""What a recorded command leaves behind, read the same way by ``audit record``
(``record/wrap.py``) and by the rerun (``rerun/``): its stdout and stderr pumped line by
line, its logs scrubbed and stored, and what the Python API wrote from inside it (params,
seeds, metric series, logged artifacts) merged into the run.

Loads no SQLAlchemy: ``audit record`` stays light (``tests/unit/test_import_rule.py``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from auditor.core.errors import StoreError
from auditor.core.schema import ArtifactRef
from auditor.record import outputs
from auditor.record.capture.secrets import redact_bytes, redact_params
from auditor.record.checkpoints import ingest_spool
from auditor.store import MetricPoint, RunStore
from auditor.store.base import bits_to_float


class Tally(Protocol):
    """What ``ingest_api`` adds the API's metric series to (``wrap.MetricSink``)."""

    points: int
    final: dict[str, float]


def pump(
    stream: IO[bytes],
    sink: IO[str] | None,
    chunks: list[str],
    on_line: Callable[[int, str], None] | None,
) -> None:
    """Read ``stream`` to its end, line by line: each line kept in ``chunks``, echoed to
    ``sink`` and given to ``on_line`` (with its 1-based number)."""
    for lineno, raw in enumerate(iter(stream.readline, b""), start=1):
        line = raw.decode("utf-8", errors="replace")
        chunks.append(line)
        if sink is not None:
            sink.write(line)
            sink.flush()
        if on_line is not None:
            on_line(lineno, line)


def rerun_logs(store: RunStore, out: str, err: str) -> list[ArtifactRef]:
    """The scrubbed logs as artifacts (StoreError when the store cannot take them)."""
    failures: list[str] = []
    refs, rescued = store_logs(store, "rerun", out, err, failures)
    if failures:
        raise StoreError(failures[0] + (f" (the logs are kept in {rescued})" if rescued else ""))
    return refs


def store_logs(
    store: RunStore, run_id: str, out: str, err: str, failures: list[str]
) -> tuple[list[ArtifactRef], Path | None]:
    """The scrubbed logs as artifacts; when the store cannot take them they are written to
    a private folder instead (returned) and the failure is named in ``failures``."""
    refs = []
    rescued: Path | None = None
    for name, text in (("logs/stdout.txt", out), ("logs/stderr.txt", err)):
        data = redact_bytes(text.encode("utf-8", "replace"))
        try:
            sha, size = store.blobs.put_bytes(data)
        except StoreError as exc:
            failures.append(f"{name}: {exc}")
            rescued = rescued or Path(tempfile.mkdtemp(prefix=f"auditor-logs-{run_id}-"))
            (rescued / Path(name).name).write_bytes(data)
            continue
        refs.append(ArtifactRef(name=name, sha256=sha, size=size, kind="log"))
    return refs, rescued


def ingest_api(
    store: RunStore,
    run_id: str,
    probe: Path,
    sink: Tally,
    path_map: Callable[[str], Path] = Path,
    *,
    failures: list[str] | None = None,
) -> dict[str, Any]:
    """Merge what the Python API wrote from inside the child (``path_map`` turns the paths
    it reported into paths on this host)."""
    found: dict[str, Any] = {"params": {}, "seed": None, "seeded": [], "artifacts": [],
                             "checkpoints": [], "warnings": []}
    for path in sorted(probe.glob("api-*.json")):
        data = json.loads(path.read_text())
        found["params"].update(redact_params(data.get("params", {})))
        found["seed"] = data.get("seed", found["seed"])
        found["seeded"] = data.get("seeded") or found["seeded"]
    for path in sorted(probe.glob("metrics-*.jsonl")):
        points = [
            MetricPoint(k, int(s), bits_to_float(int(b)), float(t)) for k, s, b, t in jsonl(path)
        ]
        sink.points += store.add_metrics(run_id, points)
        for p in points:
            sink.final[p.key] = p.value
    artifact_lines = (
        jsonl(probe / "artifacts.jsonl") if (probe / "artifacts.jsonl").exists() else []
    )
    for item in artifact_lines:
        path = path_map(item["path"])
        name = f"outputs/{item.get('name') or path.name}"
        try:
            found["artifacts"].append(outputs.store_artifact(store.blobs, path, name))
        except StoreError as exc:
            if failures is None:
                raise
            failures.append(f"{name}: {exc}")
    spool = ingest_spool(store.blobs, probe / "checkpoints")  # run.checkpoint's folders
    found["artifacts"] += spool.artifacts
    found["checkpoints"] = spool.checkpoints
    found["warnings"] = spool.warnings
    return found


def jsonl(path: Path) -> list[Any]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: everything before it is kept
    return rows
