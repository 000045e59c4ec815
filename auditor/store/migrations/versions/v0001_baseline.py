"""Store schema v1: the tables of auditor 0.1.0 (commit 0ad5eae), frozen here.

A store made before migrations existed has these tables and ``meta.schema_version = 1``
but no ``alembic_version``; ``store/migrate.py`` stamps it at this revision first.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("commit", sa.String(64)),
        sa.Column("dirty", sa.Boolean, nullable=False),
        sa.Column("reproduces", sa.String(26)),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_runs_started", "runs", ["started_at"])
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("bits", sa.BigInteger, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )
    op.create_index("ix_metrics_key", "metrics", ["run_id", "key", "step"])
    op.create_table(
        "artifacts",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "name"),
    )
    op.create_index("ix_artifacts_sha", "artifacts", ["sha256"])
    op.create_table(
        "certificates",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("rerun_id", sa.String(26)),
        sa.Column("verdict", sa.String(40), nullable=False),
        sa.Column("issued_at", sa.String(40), nullable=False),
        sa.Column("subjects", sa.Text, nullable=False),
    )
    op.create_index("ix_certs_run", "certificates", ["run_id"])
    op.create_table(
        "builds",
        sa.Column("inputs_digest", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.bulk_insert(
        sa.table("meta", sa.column("key"), sa.column("value")),
        [{"key": "schema_version", "value": "1"}],
    )


def downgrade() -> None:
    for table in ("builds", "certificates", "artifacts", "metrics", "runs", "meta"):
        op.drop_table(table)
