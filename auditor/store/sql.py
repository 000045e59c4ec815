"""``RunStore`` over SQLAlchemy 2 Core: SQLite by default, PostgreSQL by URL.

``SqlStore`` is the parts of one database put together, each part one family of tables
over the one engine of ``sql_base.SqlBase`` (which opens, migrates and guards it):

- ``sql_records``: runs, their artifact index and derived values;
- ``sql_metrics``: metric series and their curve previews;
- ``sql_certs``: certificates and, in a server store, the certificate log;
- ``sql_meta``: the key/value ``meta`` table and remembered builds;
- ``store/batches.py``: batches of verifications and their claims.

The tables themselves are in ``sql_schema``. Rows never leave these modules: callers get
schema models and the dataclasses of ``store/base.py``, and type their store with the
narrow protocol of ``store/base.py`` they need.
"""

from __future__ import annotations

from auditor.store.base import float_to_bits as float_to_bits  # importable here (sync, tests)
from auditor.store.batches import BatchTables
from auditor.store.records import parse_record, validate_run_ref
from auditor.store.sql_base import shown_url
from auditor.store.sql_certs import CertificateTables
from auditor.store.sql_meta import MetaTables
from auditor.store.sql_metrics import MetricTables, write_previews
from auditor.store.sql_records import RecordTables, record_row, write_values
from auditor.store.sql_schema import (
    meta,
    t_artifacts,
    t_builds,
    t_certs,
    t_imports,
    t_meta,
    t_metrics,
    t_previews,
    t_runs,
    t_values,
)

_parse_record = parse_record  # the old names, for tests and bench/ written against them
_record_row = record_row

__all__ = [
    "SqlStore",
    "float_to_bits",
    "meta",
    "parse_record",
    "record_row",
    "shown_url",
    "t_artifacts",
    "t_builds",
    "t_certs",
    "t_imports",
    "t_meta",
    "t_metrics",
    "t_previews",
    "t_runs",
    "t_values",
    "validate_run_ref",
    "write_previews",
    "write_values",
]


class SqlStore(RecordTables, MetricTables, CertificateTables, MetaTables):
    """A run store in one SQL database plus a blob directory."""

    def batches(self) -> BatchTables:
        """Batches of verifications and their claims in this database (revision 0005)."""
        return BatchTables(self.engine, self.unavailable)
