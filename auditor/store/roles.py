"""PostgreSQL roles for a team store: who may read, record, and certify.

Anyone holding a server store's URL with the owner's credentials can write anything. A
team gives each person (or CI job) a login role that is a member of one of three group
roles, made by ``audit store roles --apply`` (or ``--print-sql`` for a DBA to run):

* ``<prefix>_reader``: SELECT on every table. The dashboard (``audit ui``), ``audit
  list``, ``show``, ``compare``, ``report`` and ``gate`` work; ``record``, ``push`` and
  ``verify`` fail with one line naming the role they need (exit 2).
* ``<prefix>_recorder``: the reader's rights, plus writing runs, metric series, artifacts
  indexes, record signatures, the derived filter index and curve previews, build
  results and imports: ``audit record``, the Python API, ``audit push`` of runs without
  certificates, ``audit import``.
* ``<prefix>_verifier``: the recorder's rights (a verify stores its rerun as a run) and
  the only role that may append certificates: INSERT on ``certificates`` and
  ``cert_log``, the signed head of ``cert_log_head``. ``cert_log`` is append-only for it
  (no UPDATE or DELETE).

No group role may create tables or change the schema: migrations stay with the owner
(the role that created the store), who applies these grants again after an upgrade
that adds tables (``--apply`` is idempotent). SQLite stores have no roles: file
permissions guard them. Artifacts live outside the database (a folder or ``s3://``):
their access is the folder's or the bucket's policy, not these roles.

``store/denied.py`` turns PostgreSQL's ``insufficient_privilege`` into that one line;
``require`` checks a role's rights before a long operation (a verify's rerun) starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auditor.core.errors import StoreError
from auditor.store.denied import CERT_TABLES, OWNER_TABLES, PREFIX

if TYPE_CHECKING:
    from auditor.store.sql import SqlStore

SCHEMA = "public"
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
# what each action writes, checked by ``require`` before it starts
NEEDS = {"record": ("runs", "metrics", "run_values"),
         "verify": ("certificates", "cert_log", "runs", "metrics", "run_values")}


@dataclass(frozen=True)
class Roles:
    """The three group roles' names."""

    reader: str
    recorder: str
    verifier: str

    @classmethod
    def named(cls, prefix: str = PREFIX) -> Roles:
        """``<prefix>_reader`` and so on; the prefix is checked (it goes into SQL)."""
        if not NAME.match(prefix):
            raise StoreError(f"role prefix {prefix!r} is not a plain lowercase SQL name",
                             hint="use letters, digits and _, e.g. --prefix auditor")
        return cls(f"{prefix}_reader", f"{prefix}_recorder", f"{prefix}_verifier")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def recorder_tables() -> list[str]:
    """The tables a recorder writes: every table of the store's schema but the
    certificates' and the migrations'."""
    from auditor.store.sql_schema import meta

    return sorted(t for t in meta.tables if t not in CERT_TABLES + OWNER_TABLES)


def grant_sql(database: str, roles: Roles, schema: str = SCHEMA) -> str:
    """The SQL that makes the three roles (if absent) and grants them their rights; run
    by the store's owner, idempotent."""
    r, rec, ver = (_quote(x) for x in (roles.reader, roles.recorder, roles.verifier))
    db, sc = _quote(database), _quote(schema)
    lines = ["-- auditor team store roles: run as the store's owner (the role that created",
             "-- the tables); run again after an upgrade that adds tables.",
             "BEGIN;"]
    for name in (roles.reader, roles.recorder, roles.verifier):
        lines.append(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"'{name}') THEN CREATE ROLE {_quote(name)} NOLOGIN; END IF; END $$;")
    lines += [
        f"GRANT CONNECT ON DATABASE {db} TO {r};",
        f"GRANT USAGE ON SCHEMA {sc} TO {r};",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {sc} TO {r};",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {sc} GRANT SELECT ON TABLES TO {r};",
        f"GRANT {r} TO {rec};",
    ]
    for table in recorder_tables():
        lines.append(f"GRANT INSERT, UPDATE, DELETE ON {sc}.{_quote(table)} TO {rec};")
    lines += [
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {sc} TO {rec};",
        f"GRANT {rec} TO {ver};",
        f"GRANT INSERT, DELETE ON {sc}.\"certificates\" TO {ver};",
        f"GRANT INSERT ON {sc}.\"cert_log\" TO {ver};",
        f"GRANT INSERT, DELETE ON {sc}.\"cert_log_head\" TO {ver};",
        "-- the certificate tables stay read-only for everyone else",
    ]
    for table in CERT_TABLES:
        lines.append(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {sc}.{_quote(table)} "
                     f"FROM {r}, {rec};")
    lines += [f"REVOKE UPDATE ON {sc}.\"cert_log\" FROM {ver};", "COMMIT;",
              "-- then, per person or job:",
              f"--   CREATE ROLE alice LOGIN PASSWORD '…' IN ROLE {roles.reader};"]
    return "\n".join(lines) + "\n"


def _server(store: object) -> SqlStore:
    from auditor.store.sql import SqlStore

    if not isinstance(store, SqlStore) or store.is_sqlite:
        raise StoreError("roles belong to a PostgreSQL store; a local SQLite store is "
                         "guarded by its folder's file permissions",
                         hint="pass --store postgresql+psycopg://…")
    return store


def store_sql(store: object, prefix: str = PREFIX) -> str:
    """The grant SQL for this PostgreSQL store: its database and schema (the URL's
    ``search_path``, ``public`` by default) as the server names them."""
    server = _server(store)
    import sqlalchemy as sa

    roles = Roles.named(prefix)
    try:
        with server.engine.connect() as conn:
            database, schema = conn.execute(
                sa.text("SELECT current_database(), current_schema()")).one()
    except sa.exc.SQLAlchemyError as exc:
        raise server.unavailable(exc) from None
    return grant_sql(str(database), roles, str(schema or SCHEMA))


def apply(store: object, prefix: str = PREFIX) -> Roles:
    """Run the grant SQL on the store's database as the URL's role (the owner, with
    CREATEROLE); a failure is one line naming what PostgreSQL refused."""
    server = _server(store)
    sql = store_sql(server, prefix)
    import sqlalchemy as sa

    try:
        with server.engine.connect() as conn:
            conn.exec_driver_sql(sql)
            conn.commit()
    except sa.exc.SQLAlchemyError as exc:
        raise server.unavailable(exc) from None
    return Roles.named(prefix)


def require(store: object, action: str) -> None:
    """Fail now, with ``denial``'s line, when the URL's role lacks the rights ``action``
    ("record", "verify") needs; nothing on SQLite."""
    from auditor.store.sql import SqlStore

    if not isinstance(store, SqlStore) or store.is_sqlite:
        return
    import sqlalchemy as sa

    tables = NEEDS[action]
    try:
        with store.engine.connect() as conn:
            missing = [t for t in tables if not conn.execute(
                sa.text("SELECT has_table_privilege(:t, 'INSERT')"), {"t": t}).scalar_one()]
    except sa.exc.SQLAlchemyError as exc:
        raise store.unavailable(exc) from None
    if missing:
        first = missing[0]
        needed = f"{PREFIX}_verifier" if first in CERT_TABLES else f"{PREFIX}_recorder"
        what = "append certificates" if first in CERT_TABLES else f"write to table {first}"
        raise StoreError(f"store {store.url}: this database role may not {what}, so it "
                         f"cannot {action}", hint=f"it needs {needed}: see `audit store roles`")
