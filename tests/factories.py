"""Builders the tests share: a minimal valid RunRecord and the Evidence a comparer reads.

Plain functions (not fixtures) so module-level constants, hypothesis strategies and
subprocess workers can call them too; `tests/conftest.py` re-exports them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.compare import Evidence
from auditor.core.schema import (
    ArtifactKind,
    ArtifactRef,
    Command,
    Identity,
    RunRecord,
    new_run_id,
)
from auditor.store import MetricPoint

_IDENTITY = frozenset(Identity.model_fields)
_COMMAND = frozenset(Command.model_fields)
_RECORD = frozenset(RunRecord.model_fields)


def make_record(**changes: Any) -> RunRecord:
    """A minimal valid record: a fresh run id, name "t", user "u", host "h", started now,
    `python train.py` in ".", every other part at its schema default.

    Keyword arguments are routed by name (the three models share no field name):
    Identity fields (`id`, `name`, `status`, `started_at`, `tags`, ...) and Command fields
    (`argv`, `cwd`, ...) change only that field; RunRecord fields (`identity`, `command`,
    `environment`, `artifacts`, `metrics`, ...) replace the whole part. Anything else is a
    TypeError, so a misspelt field cannot silently vanish.
    """
    unknown = set(changes) - _IDENTITY - _COMMAND - _RECORD
    if unknown:
        raise TypeError(f"make_record: unknown field(s) {sorted(unknown)}")
    ident = {k: v for k, v in changes.items() if k in _IDENTITY}
    command = {k: v for k, v in changes.items() if k in _COMMAND}
    parts = {k: v for k, v in changes.items() if k in _RECORD}
    if "identity" in parts:
        parts["identity"] = parts["identity"].model_copy(update=ident)
    else:
        parts["identity"] = Identity(**{"id": new_run_id(), "name": "t", "user": "u",
                                        "host": "h", "started_at": datetime.now(UTC),
                                        **ident})
    if "command" in parts:
        parts["command"] = parts["command"].model_copy(update=command)
    else:
        parts["command"] = Command(**{"argv": ("python", "train.py"), "cwd": ".", **command})
    return RunRecord(**parts)


def metric_points(key: str, values: Iterable[float]) -> list[MetricPoint]:
    """One metric series as stored points: step i holds values[i], at wall time i."""
    return [MetricPoint(key, i, v, float(i)) for i, v in enumerate(values)]


Series = Mapping[str, Sequence[tuple[Any, Any]]]


def make_evidence(record: RunRecord | None = None, *, files: Mapping[str, Path] | None = None,
                  series: Series | None = None) -> Evidence:
    """What a comparer reads of one run: its record, artifact files (name -> path) and
    metric series (key -> [(step, value)]); empty where not given."""
    table = dict(series or {})

    def points(key: str) -> Iterator[tuple[int, float]]:
        return iter(table[key])

    return Evidence(record=record or make_record(), files=dict(files or {}),
                    metric_keys=tuple(sorted(table)), series=points)



def file_evidence(root: Path, contents: Mapping[str, bytes],
                  logs: tuple[str, ...] = ()) -> Evidence:
    """An Evidence whose artifacts are real files under root (logs: names of kind log)."""
    refs, paths = [], {}
    for name, data in contents.items():
        digest = hashlib.sha256(data).hexdigest()
        path = root / digest
        path.write_bytes(data)
        kind: ArtifactKind = "log" if name in logs else "output"
        refs.append(ArtifactRef(name=name, sha256=digest, size=len(data), kind=kind))
        paths[name] = path
    return make_evidence(make_record(artifacts=tuple(refs)), files=paths)


EvidencePair = Callable[..., tuple[Evidence, Evidence]]
"""The `pair` fixture: (left, right) Evidence from name -> bytes tables."""
