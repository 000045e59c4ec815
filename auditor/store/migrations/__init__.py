"""Alembic migrations of the store schema (``versions/``), run by ``store/migrate.py``."""
