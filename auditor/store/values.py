"""The ``run_values`` index: one row per value a filter or sort of the runs table can name.

Written with the run's row (``put_record``, push/pull, imports; the migration that made
the table filled it from every stored record), derived from the same digest-checked
summary a query row is built from (``store/summaries.py``), so SQL filters and sorts
(``store/sqlquery.py``) see exactly the values ``query.Row.value`` returns:

* kind ``f``: the run's own fields (id, name, status, commit, started);
* kind ``p``: scalar params (a ``None`` param is a row of NULLs: present but empty);
* kind ``m``: final metrics;
* kind ``t``: tags (key = the tag).

Per value: ``num`` (the number a numeric clause compares: NULL for text, booleans and
NaN), ``text`` (what a text clause compares: booleans as ``true``/``false``),
``folded`` (``text`` lower-cased, for ``~``) and ``stext`` (what a sort orders text by:
``str(value)``). Kept free of SQLAlchemy and pydantic (the migration imports it).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from auditor.store.base import RunSummary
from auditor.store.summaries import _summary_of

FIELDS = ("id", "name", "status", "commit", "started")


def value_columns(value: Any) -> tuple[float | None, str | None, str | None, str | None]:
    """(num, text, folded, stext) of one value (all None for None)."""
    if value is None:
        return None, None, None, None
    text = str(value).lower() if isinstance(value, bool) else str(value)
    num: float | None = None
    if not isinstance(value, bool):
        if isinstance(value, int | float):
            num = float(value)
        elif isinstance(value, str):
            try:
                num = float(value)
            except ValueError:
                num = None
    if num is not None and math.isnan(num):
        num = None
    return num, text, text.lower(), str(value)


def summary_rows(s: RunSummary) -> list[dict[str, Any]]:
    """The ``run_values`` rows of one run."""
    out: list[dict[str, Any]] = []

    def add(kind: str, key: str, value: Any) -> None:
        num, text, folded, stext = value_columns(value)
        out.append({"run_id": s.id, "kind": kind, "key": key, "num": num, "text": text,
                    "folded": folded, "stext": stext})

    add("f", "id", s.id)
    add("f", "name", s.name)
    add("f", "status", s.status)
    if s.commit is not None:
        add("f", "commit", s.commit)
    add("f", "started", s.started_at.isoformat())
    for key, value in (s.params or {}).items():
        add("p", key, value)
    for key, number in s.final_metrics.items():
        add("m", key, number)
    for tag in dict.fromkeys(s.tags):
        add("t", tag, tag)
    return out


def record_text_rows(text: str, sha256: str | None = None) -> list[dict[str, Any]]:
    """The ``run_values`` rows of a record's canonical JSON text ([] when unreadable, or
    when it does not hash to ``sha256``)."""
    if sha256 is not None and hashlib.sha256(text.encode()).hexdigest() != sha256:
        return []
    try:
        data = json.loads(text)
        return summary_rows(_summary_of(data)) if isinstance(data, dict) else []
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
