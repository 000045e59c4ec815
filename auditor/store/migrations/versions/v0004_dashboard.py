"""Store schema v4: what the dashboard reads without scanning every run and point.

- ``run_values``: one row per value a runs-table filter or sort names (fields, scalar
  params, final metrics, tags; ``store/values.py``), so the table is filtered, sorted
  and paged in SQL. Filled here from every stored record.
- ``metric_previews``: a downsampled, shape-keeping copy of each metric series
  (``store/preview.py``): derived, display-only data. Not filled here (a migration
  stays quick); a run gets its previews with its next metrics, its final record or
  push/pull, and until then the dashboard reads the full series as before.

``meta.schema_version`` stays 3: auditor 0.1.0 already refuses the store.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from auditor.store.values import record_text_rows

    values = op.create_table(
        "run_values",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("kind", sa.String(1), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("num", sa.Float),
        sa.Column("text", sa.Text),
        sa.Column("folded", sa.Text),
        sa.Column("stext", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "kind", "key"),
    )
    op.create_index("ix_values_num", "run_values", ["kind", "key", "num"])
    op.create_index("ix_values_text", "run_values", ["kind", "key", "text"])
    op.create_table(
        "metric_previews",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("upto_seq", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("steps", sa.LargeBinary, nullable=False),
        sa.Column("vals", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id"), sa.column("record"), sa.column("record_sha256"))
    batch: list[dict[str, object]] = []
    for row in conn.execute(sa.select(runs.c.record, runs.c.record_sha256)):
        batch.extend(record_text_rows(row.record, row.record_sha256))  # digest-checked
        if len(batch) >= 5000:
            op.bulk_insert(values, batch)
            batch = []
    if batch:
        op.bulk_insert(values, batch)


def downgrade() -> None:
    op.drop_table("metric_previews")
    op.drop_index("ix_values_text", "run_values")
    op.drop_index("ix_values_num", "run_values")
    op.drop_table("run_values")
