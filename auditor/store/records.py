"""Record parsing: a run's stored JSON text back into a checked ``RunRecord``, and the
check of a run id or prefix a user typed.

The public home of what every reader of stored records needs (the SQL store's
``get_record``, ``audit fsck``): free of SQLAlchemy, and pydantic's schema
loads only when a record is parsed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from auditor.core.errors import CorruptRecord

if TYPE_CHECKING:
    from auditor.core.schema import RunRecord


def validate_run_ref(text: str) -> None:
    """Refuse anything that is not a run id or prefix of our alphabet (paths, NUL, …)."""
    from auditor.core.errors import InvalidRunId
    from auditor.core.schema import MIN_PREFIX, is_run_id_prefix

    if not is_run_id_prefix(text):
        shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
        raise InvalidRunId(
            f"invalid run id {shown}: expected {MIN_PREFIX}-26 characters "
            "of 0-9 and a-z (see `audit list`)"
        )


def parse_record(run_id: str, text: str, stored_sha: str) -> RunRecord:
    """The record of ``run_id`` from its stored JSON ``text``, checked: valid JSON, this
    auditor's record schema, and ``stored_sha`` its digest. ``CorruptRecord`` (naming
    ``runs/<id>/record.json`` and what is wrong) otherwise."""
    from pydantic import ValidationError

    from auditor.core.schema import SCHEMA_VERSION, RunRecord, record_sha256

    where = f"runs/{run_id}/record.json"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptRecord(f"{where}: invalid JSON at byte {exc.pos}") from None
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version")
        newer = isinstance(found, int) and not isinstance(found, bool) and found > SCHEMA_VERSION
        # `audit store upgrade` migrates the store's tables, never a record: no record
        # schema but 1 exists, so another version is a newer auditor's or a damaged record
        raise CorruptRecord(
            f"{where}: record schema_version {found!r} is not {SCHEMA_VERSION}",
            hint="a newer auditor wrote it: upgrade auditor to read it" if newer
            else "run `audit fsck`",
        )
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise CorruptRecord(f"{where}: field {loc!r}: {first['msg']}") from None
    if record_sha256(record) != stored_sha:
        raise CorruptRecord(
            f"{where}: record does not match its sha256 (edited after it was written)",
            hint="run `audit fsck`",
        )
    return record
