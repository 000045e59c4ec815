"""Store schema v5: batches of verifications and their claims (``store/batches.py``).

- ``batches``: one scheduled check (a CI pipeline, a Kubernetes job, a Slurm array):
  its id, the policy digest it verifies under, its shard count, executor and selection.
- ``batch_items``: one run of a batch: its shard, state, verdict, exit code, where it ran
  (node, GPU), how long, the rerun, the certificate and links to reports.
- ``verify_claims``: who verifies a run under one policy and lockfile. The primary key
  ``(run_id, policy_sha256, lock_sha256)`` makes a claim an insert only one worker wins,
  so two shards or two batches racing never verify (and certify) the same run twice.

Nothing is filled here: a batch exists only once one is started. ``meta.schema_version``
stays 3.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("shards", sa.Integer, nullable=False),
        sa.Column("executor", sa.String(64), nullable=False),
        sa.Column("selection", sa.Text, nullable=False),
    )
    op.create_index("ix_batches_created", "batches", ["created_at"])
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(40)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("node", sa.Text),
        sa.Column("gpu", sa.Text),
        sa.Column("worker", sa.Text),
        sa.Column("started_at", sa.String(40)),
        sa.Column("seconds", sa.Float),
        sa.Column("rerun_id", sa.String(26)),
        sa.Column("certificate_sha256", sa.String(64)),
        sa.Column("reports", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "run_id"),
    )
    op.create_table(
        "verify_claims",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("lock_sha256", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("certificate_sha256", sa.String(64)),
        sa.PrimaryKeyConstraint("run_id", "policy_sha256", "lock_sha256"),
    )


def downgrade() -> None:
    op.drop_table("verify_claims")
    op.drop_table("batch_items")
    op.drop_index("ix_batches_created", "batches")
    op.drop_table("batches")
