"""Store schema v2: the team store.

- ``imports``: runs brought in from another tracker, keyed on the source's run id, so a
  re-import finds the run it made before instead of adding a second one.
- ``runs.origin``: where a run came from when it was not recorded here (``mlflow:<id>``
  for an import; NULL for a run recorded by auditor), for ``audit list``.
- ``meta.schema_version`` becomes 2, so auditor 0.1.0 (which reads only that row)
  refuses the store as newer than itself instead of misreading it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_run_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("imported_at", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("source", "source_run_id"),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("origin", sa.Text))
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("origin")
    op.drop_table("imports")
    op.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
