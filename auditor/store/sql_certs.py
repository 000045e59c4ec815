"""The certificates family of the SQL store: the ``certificates`` index (each envelope's
bytes are in the blob store) and, in a server store, the certificate log's tables
(``store/certlog.py``; a SQLite store keeps its log as files in the store folder).
"""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa

from auditor.store.base import CertificateRow
from auditor.store.certlog import TableLog
from auditor.store.sql_base import SqlBase, db
from auditor.store.sql_schema import t_certs


class CertificateTables(SqlBase):
    """Certificates and the certificate log."""

    @db
    def put_certificate(self, row: CertificateRow) -> None:
        """Index a certificate whose envelope is already in the blob store."""
        with self.engine.begin() as conn:
            conn.execute(t_certs.delete().where(t_certs.c.sha256 == row.sha256))
            conn.execute(
                t_certs.insert().values(
                    sha256=row.sha256,
                    run_id=row.run_id,
                    rerun_id=row.rerun_id,
                    verdict=row.verdict,
                    issued_at=row.issued_at.isoformat(),
                    subjects=json.dumps(list(row.subjects)),
                )
            )

    @db
    def certificates(
        self, *, run_id: str | None = None, subject: str | None = None
    ) -> list[CertificateRow]:
        """Certificates, newest first, optionally for a run or a subject digest."""
        query = sa.select(t_certs).order_by(t_certs.c.issued_at.desc())
        if run_id:
            query = query.where(t_certs.c.run_id == run_id)
        if subject:
            query = query.where(t_certs.c.subjects.contains(subject, autoescape=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            CertificateRow(
                r.sha256,
                r.run_id,
                r.rerun_id,
                r.verdict,
                datetime.fromisoformat(r.issued_at),
                tuple(json.loads(r.subjects)),
            )
            for r in rows
        ]

    def certificate_log(self) -> TableLog | None:
        """The certificate log kept in this database (a server store: every machine using
        the store shares it); None for SQLite, whose log is files in the store folder."""
        if self.is_sqlite:
            return None
        return TableLog(self.engine, self.url, self.unavailable)
