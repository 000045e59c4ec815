"""Store schema v3: the certificate log in the database.

A team store (PostgreSQL + object storage) used to keep its certificate log in each
machine's local working folder, so every machine had a log of its own and `audit fsck`
on one machine took the certificates issued on another for rows "added behind the log's
back". The log now lives beside the certificates table, for every server store:

- ``cert_log``: one row per log line (``pos`` counts from 1, ``line`` the canonical-JSON
  bytes of ``certify/log.py``'s entry); the hash chain inside the lines is what proves
  the order, ``pos`` only keeps it.
- ``cert_log_head``: the head (``certs.head.json``) and signed head
  (``certs.head.dsse.json``) by those names.

SQLite stores keep the log as files in the store folder (``log/``), as before: the
folder is what everyone who shares that store shares. ``meta.schema_version`` becomes 3.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cert_log",
        sa.Column("pos", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("line", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "cert_log_head",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_table("cert_log_head")
    op.drop_table("cert_log")
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
