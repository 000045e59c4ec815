"""The store's schema revisions, importable without SQLAlchemy or Alembic."""

BASELINE = "0001"
HEAD = "0005"  # the newest revision in migrations/versions (a test keeps them equal)
