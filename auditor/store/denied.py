"""A database role's missing privilege, said in one line naming the role that has it
(store/roles.py makes the roles). Imported by the store's SQL code on every database
error, so it imports no SQLAlchemy and nothing of the store."""

from __future__ import annotations

import re
from typing import Any

from auditor.core.errors import StoreError

PREFIX = "auditor"
# only the verifier writes these; alembic_version is the owner's (migrations)
CERT_TABLES = ("certificates", "cert_log", "cert_log_head")
OWNER_TABLES = ("alembic_version",)
INSUFFICIENT_PRIVILEGE = "42501"
_DENIED_TABLE = re.compile(r"permission denied for (?:table|relation) (\w+)")


def denial(exc: Any, shown_url: str) -> StoreError | None:
    """PostgreSQL's ``permission denied`` as one line naming the role that may do it;
    None for any other error."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
        return None
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else "permission denied"
    found = _DENIED_TABLE.search(text)
    table = found.group(1) if found else None
    needed = (f"{PREFIX}_verifier" if table in CERT_TABLES else
              "the store's owner" if table in OWNER_TABLES or table is None else
              f"{PREFIX}_recorder")
    what = ("append certificates" if table in CERT_TABLES else
            f"write to table {table}" if table else "do this")
    return StoreError(f"store {shown_url}: this database role may not {what} ({text})",
                      hint=f"it needs {needed}: see `audit store roles`")
