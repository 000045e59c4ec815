"""Run summaries (what ``audit list`` shows) derived from a stored record's text.

Kept free of SQLAlchemy and pydantic: the fast SQLite list path (``store/fastlist.py``)
and ``SqlStore`` both use it. A summary comes from the record text only when that text
still hashes to the row's ``record_sha256`` (the summary column no digest covers is
never trusted); otherwise the run is listed as ``corrupt``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from auditor.store.base import RunSummary


def _scalar_params(params: dict[str, object]) -> dict[str, object]:
    """The params a query can filter and sort on (scalars, long strings cut), for the
    small summary column; the record keeps them all."""
    out: dict[str, object] = {}
    for key, value in list(params.items())[:500]:
        if isinstance(value, float):
            out[key[:200]] = _json_float(value)
        elif value is None or isinstance(value, bool | int):
            out[key[:200]] = value
        elif isinstance(value, str):
            out[key[:200]] = value[:200]
    return out


def _json_float(v: float) -> float | str:
    return v if v == v and v not in (float("inf"), float("-inf")) else repr(v)


def _summary_of_record(run_id: str, started: str, text: str, sha: str) -> RunSummary:
    """What ``audit list`` shows, from the digested record text (cheap: no model parse)."""
    try:
        data = json.loads(text) if hashlib.sha256(text.encode()).hexdigest() == sha else None
        return _summary_of(data) if isinstance(data, dict) else _corrupt(run_id, started)
    except (ValueError, KeyError, TypeError, AttributeError):
        return _corrupt(run_id, started)


def _summary_of(data: dict[str, Any]) -> RunSummary:
    ident, code = data["identity"], data.get("code") or {}
    final = (data.get("metrics") or {}).get("final", {})
    return RunSummary(
        id=ident["id"], name=ident["name"], status=ident["status"],
        started_at=datetime.fromisoformat(ident["started_at"]),
        commit=code.get("commit"), dirty=bool(code.get("dirty")),
        reproduces=ident.get("reproduces"),
        final_metrics={k: float(v) for k, v in final.items()},
        tags=tuple(ident.get("tags", ())), params=_scalar_params(data.get("params") or {}),
        lacks=(data.get("not_captured") or {}).get("verifiable"),
        entry=entry_point((data.get("command") or {}).get("argv") or ()),
    )


def entry_point(argv: Sequence[object]) -> str | None:
    """What a command runs, for telling comparable runs apart: ``-m module``, else the
    first ``.py`` argument, else the program's file name (``python train.py --lr 1`` →
    ``train.py``; ``torchrun -m pkg.train`` → ``-m pkg.train``)."""
    words = [str(a) for a in argv]
    for i, word in enumerate(words):
        if word == "-m" and i + 1 < len(words):
            return f"-m {words[i + 1]}"
        if word.endswith(".py"):
            return word
    return os.path.basename(words[0]) if words else None


def _corrupt(run_id: str, started: str) -> RunSummary:
    return RunSummary(id=run_id, name="(record fails its digest: run `audit fsck`)",
                      status="corrupt", started_at=datetime.fromisoformat(started), commit=None,
                      dirty=False, reproduces=None, final_metrics={}, tags=(), params=None)


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
