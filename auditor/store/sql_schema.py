"""The SQL store's schema: every table of every family on one ``MetaData``.

The tables stay in one module because the schema is one thing: ``store/migrations``
brings a store up to it, and a test compares it with what the migrations build. The code
that reads and writes them lives by family (``sql_records``, ``sql_metrics``,
``sql_certs``, ``sql_meta``; the certificate log's and the batches' tables come from
``store/certlog.py`` and ``store/batches.py``).
"""

from __future__ import annotations

import sqlalchemy as sa

from auditor.store.batches import BATCH_TABLES
from auditor.store.certlog import CERT_LOG_TABLES

meta = sa.MetaData()

t_meta = sa.Table(
    "meta",
    meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
t_runs = sa.Table(
    "runs",
    meta,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("commit", sa.String(64)),
    sa.Column("dirty", sa.Boolean, nullable=False, default=False),
    sa.Column("reproduces", sa.String(26)),
    sa.Column("host", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("summary", sa.Text, nullable=False),  # small JSON: final metrics, tags
    sa.Column("record", sa.Text, nullable=False),  # canonical JSON of RunRecord
    sa.Column("record_sha256", sa.String(64), nullable=False),
    sa.Column("origin", sa.Text),  # "mlflow:<run id>" for an import; NULL when recorded here
)
sa.Index("ix_runs_started", t_runs.c.started_at)
t_metrics = sa.Table(
    "metrics",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float),  # NULL for NaN (SQL has none); for queries only
    sa.Column("bits", sa.BigInteger, nullable=False),  # IEEE-754 bits: the exact value
    sa.Column("time", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("run_id", "seq"),
)
sa.Index("ix_metrics_key", t_metrics.c.run_id, t_metrics.c.key, t_metrics.c.step)
t_artifacts = sa.Table(
    "artifacts",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.PrimaryKeyConstraint("run_id", "name"),
)
sa.Index("ix_artifacts_sha", t_artifacts.c.sha256)
t_certs = sa.Table(
    "certificates",
    meta,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("rerun_id", sa.String(26)),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("issued_at", sa.String(40), nullable=False),
    sa.Column("subjects", sa.Text, nullable=False),  # JSON list of sha256
)
sa.Index("ix_certs_run", t_certs.c.run_id)
t_builds = sa.Table(
    "builds",
    meta,
    sa.Column("inputs_digest", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # BuildResult JSON (log in a blob)
    sa.Column("created_at", sa.String(40), nullable=False),
)
t_imports = sa.Table(
    "imports",
    meta,
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("source_run_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("imported_at", sa.String(40), nullable=False),
    sa.PrimaryKeyConstraint("source", "source_run_id"),
)

for _table in CERT_LOG_TABLES:  # the certificate log's tables (store/certlog.py), revision 0003
    _table.to_metadata(meta)
for _table in BATCH_TABLES:  # batches, their items and claims (store/batches.py), revision 0005
    _table.to_metadata(meta)
t_values = sa.Table(  # store/values.py: what the runs table filters and sorts on, in SQL
    "run_values",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("kind", sa.String(1), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("num", sa.Float),
    sa.Column("text", sa.Text),
    sa.Column("folded", sa.Text),
    sa.Column("stext", sa.Text),
    sa.PrimaryKeyConstraint("run_id", "kind", "key"),
)
sa.Index("ix_values_num", t_values.c.kind, t_values.c.key, t_values.c.num)
sa.Index("ix_values_text", t_values.c.kind, t_values.c.key, t_values.c.text)
t_previews = sa.Table(  # store/preview.py: derived, display-only
    "metric_previews",
    meta,
    sa.Column("run_id", sa.String(26), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("upto_seq", sa.Integer, nullable=False),  # the run's mark it was made at
    sa.Column("total", sa.Integer, nullable=False),  # points of the key up to upto_seq
    sa.Column("steps", sa.LargeBinary, nullable=False),  # <i8
    sa.Column("vals", sa.LargeBinary, nullable=False),  # <f8
    sa.PrimaryKeyConstraint("run_id", "key"),
)
