"""Alembic environment: always run on the connection ``store/migrate.py`` hands over,
inside its locked transaction (never a connection of its own)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
