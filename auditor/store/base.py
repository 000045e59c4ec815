"""The ``RunStore`` protocol: the single source of truth for runs.

One core write per kind of thing (``put_record``, ``add_metrics``) plus thin reads.
Implementations never leak their rows: every method speaks in schema models or small
frozen dataclasses. ``store/sql.py`` implements it over SQLAlchemy (SQLite by default,
PostgreSQL by URL); artifacts live in a ``BlobStore`` beside the database.

``RunStore`` is the union of one small protocol per family of tables, each split in a
reader and a writer (records, metric series, certificates, builds and meta); a caller
names the narrowest one it uses, so what it may touch is in its signature.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # pydantic's schema is not imported by `audit list`
    import numpy as np

    from auditor.core.schema import RunRecord
    from auditor.store.batches import BatchTables
    from auditor.store.blobs import BlobStore
    from auditor.store.migrate import Upgrade


class MetricPoint(NamedTuple):
    """One logged value. ``value`` keeps NaN, ±Inf, -0.0 and subnormals bit-exactly.
    A plain tuple ``(key, step, value, time)`` is accepted wherever a point is."""

    key: str
    step: int
    value: float
    time: float


_DOUBLE = struct.Struct("<d")
_INT64 = struct.Struct("<q")


def float_to_bits(value: float) -> int:
    """The IEEE-754 bits of a double as a signed 64-bit integer."""
    return int(_INT64.unpack(_DOUBLE.pack(value))[0])


def bits_to_float(bits: int) -> float:
    """Inverse of ``float_to_bits``."""
    return float(_DOUBLE.unpack(_INT64.pack(bits))[0])


_POINT = struct.Struct("<I")
_NUMBERS = struct.Struct("<qdd")


def series_digest(points: Iterable[MetricPoint]) -> str:
    """sha256 hex over every point in logging order, bit-exact (NaN payloads, -0.0 kept).

    The record stores it as ``metrics.series_sha256``; the record's own digest covers it,
    so a point changed, added or deleted in the metrics table no longer matches.
    """
    digest = hashlib.sha256()
    for key, step, value, time in points:
        name = key.encode("utf-8")
        digest.update(_POINT.pack(len(name)) + name + _NUMBERS.pack(step, value, time))
    return digest.hexdigest()


@dataclass(frozen=True)
class RunSummary:
    """What ``audit list`` shows, read without parsing whole records."""

    id: str
    name: str
    status: str
    started_at: datetime
    commit: str | None
    dirty: bool
    reproduces: str | None
    final_metrics: dict[str, float]
    tags: tuple[str, ...]
    params: dict[str, object] | None = None  # scalar params; None in rows older than them
    lacks: str | None = None  # an imported run: what it lacks to be verifiable
    entry: str | None = None  # the entry point (script or module) its command ran


class ClauseSpec(Protocol):
    """One filter clause (``store/query.py``'s ``Clause``)."""

    @property
    def key(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def value(self) -> str | float: ...


class QuerySpec(Protocol):
    """A filter and sort (``store/query.py``'s ``Query``)."""

    @property
    def clauses(self) -> Sequence[ClauseSpec]: ...
    @property
    def sort(self) -> Sequence[tuple[str, bool]]: ...
    @property
    def originals(self) -> bool: ...


@dataclass(frozen=True)
class PageIds:
    """One page of the runs table as the database filtered, sorted and cut it."""

    ids: list[str]
    total: int
    matched: int
    page: int
    param_keys: list[str]
    metric_keys: list[str]
    reruns: int = 0  # reruns left out (a query for originals only)


@dataclass(frozen=True)
class CertificateRow:
    """A stored certificate (its DSSE envelope bytes are in the blob store)."""

    sha256: str
    run_id: str
    rerun_id: str | None
    verdict: str
    issued_at: datetime
    subjects: tuple[str, ...]


class LogParts(Protocol):
    """Where a certificate log keeps its three parts (the lines ``certs.jsonl``, the head
    ``certs.head.json`` and the signed head ``certs.head.dsse.json``), by those names: files
    in a folder (``certify/log.py``'s ``FileLog``, SQLite stores) or the database of a
    server store (``store/certlog.py``). ``certify/log.py`` does every check; a part only
    stores bytes."""

    def label(self, name: str) -> str: ...

    def locked(self, *, exclusive: bool) -> AbstractContextManager[None]: ...

    def read(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def append_line(self, line: bytes) -> int: ...

    def write(self, name: str, data: bytes | None) -> None: ...


class HasBlobs(Protocol):
    """Where the store's artifacts and certificate envelopes are."""

    blobs: BlobStore


class RecordReader(HasBlobs, Protocol):
    """The runs family, read (``store/sql_records.py``): records, their summaries and
    artifact index. What the run table, exports and the release gate read."""

    def get_record(self, run_id: str) -> RunRecord:
        """The full record of a run (exact id); CorruptRecord when it fails its digest."""

    def resolve(self, id_or_prefix: str) -> str:
        """The full id for an id or unique prefix of >= 6 chars; RunNotFound/Ambiguous."""

    def list_runs(self, *, limit: int | None = None,
                  ids: Sequence[str] | None = None) -> list[RunSummary]:
        """Runs, newest first (only ``ids`` when given)."""

    def query_page(self, query: QuerySpec, page: int, size: int) -> PageIds:
        """The ids of one page (1-based, clamped) of the runs ``query`` selects, filtered,
        sorted and cut in the database (``store/sqlquery.py``)."""

    def run_versions(self) -> dict[str, str]:
        """id -> record sha256 of every run (what changed since a cache last looked)."""

    def run_ids_reproducing(self, run_id: str) -> list[str]:
        """Reruns that point at ``run_id``, newest first."""

    def runs_with_artifact(self, sha256: str) -> list[tuple[str, str]]:
        """(run id, artifact name) pairs that reference an object."""

    def all_records(self) -> Iterator[tuple[str, str, str]]:
        """(id, record JSON, stored digest) of every run, unparsed (for fsck:
        ``store/records.py``'s ``parse_record`` checks each)."""


class RecordWriter(RecordReader, Protocol):
    """The runs family, written: what the recorder and a rerun need."""

    def put_record(self, record: RunRecord, *, pid: int | None = None) -> None:
        """Insert or replace a run's record atomically (with its artifact index)."""

    def mark_stale_runs(self) -> list[str]:
        """Mark runs whose recorder died on this host as crashed; returns their ids."""


class MetricReader(Protocol):
    """The metrics family, read (``store/sql_metrics.py``): series and their previews."""

    def iter_metrics(self, run_id: str, key: str | None = None) -> Iterator[MetricPoint]:
        """A run's points in logging order (optionally one key)."""

    def metric_arrays(self, run_id: str, key: str | None = None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (steps, values) numpy arrays in logging order, exact values."""

    def metric_previews(self, run_id: str
                        ) -> dict[str, tuple[np.ndarray, np.ndarray, int]] | None:
        """key -> (steps, values, total): each series' stored curve preview plus the
        points logged after it (derived, display-only: store/preview.py); None when the
        run has no usable preview."""

    def metrics_mark(self, run_id: str) -> int:
        """The run's last metric sequence number (-1 for none): unchanged means the
        run's series are unchanged (points are append-only)."""

    def preview_problems(self, run_id: str, *, repair: bool = False) -> list[str]:
        """Previews that differ from what the run's series gives (``repair``: rebuilt)."""


class MetricWriter(MetricReader, Protocol):
    """The metrics family, written: what a recording run appends."""

    def add_metrics(self, run_id: str,
                    points: Iterable[MetricPoint | tuple[str, int, float, float]]) -> int:
        """Append metric points in one transaction; returns how many were stored."""

    def refresh_previews(self, run_id: str) -> None:
        """Recompute the run's curve previews from its series now."""


class CertificateReader(HasBlobs, Protocol):
    """The certificates family, read (``store/sql_certs.py``)."""

    def certificates(self, *, run_id: str | None = None,
                     subject: str | None = None) -> list[CertificateRow]:
        """Certificates, newest first, optionally for a run or a subject digest."""

    def certificate_log(self) -> LogParts | None:
        """The certificate log the store keeps itself (a server store's database); None
        when it lives in the store folder (``log/``, SQLite)."""


class CertificateWriter(CertificateReader, Protocol):
    """The certificates family, written: what ``certify`` issues into."""

    def put_certificate(self, row: CertificateRow) -> None:
        """Index a certificate whose envelope is already in the blob store."""


class MetaStore(Protocol):
    """The builds and meta family (``store/sql_meta.py``): the key/value ``meta`` table,
    remembered builds and the database's own check."""

    def get_meta(self, key: str) -> str | None:
        """A value of the store's key/value ``meta`` table."""

    def meta_items(self, prefix: str) -> list[tuple[str, str]]:
        """(key, value) of every ``meta`` row whose key starts with ``prefix``."""

    def remember_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set already; returns the value it has now."""

    def put_build(self, inputs_digest: str, run_id: str, result_json: str) -> None:
        """Remember a build result (JSON) by its inputs digest."""

    def get_build(self, inputs_digest: str) -> str | None:
        """A remembered build result (JSON) or None."""

    def integrity_check(self) -> str:
        """The database's own consistency check ("ok" when sound)."""


class RunReader(RecordReader, MetricReader, Protocol):
    """Records and their series, read: what comparing runs and showing them needs."""


class CertifiedRuns(RecordReader, CertificateReader, Protocol):
    """Records and their certificates, read: what the release gate and export need."""


class EvidenceReader(RunReader, CertifiedRuns, Protocol):
    """What checking a certificate against the store reads: records, their series and
    certificates (the release gate, the tamper checks)."""


class StoreAudit(EvidenceReader, MetaStore, Protocol):
    """Everything a check of the whole store reads (``audit fsck``, a push's source):
    the evidence, the record signatures in ``meta`` and the database's own check."""


class Certifier(RecordWriter, CertificateWriter, Protocol):
    """What issuing a certificate writes: the certificate, its log line, the rerun's
    stored result."""


class RunStore(RecordWriter, MetricWriter, CertificateWriter, MetaStore, Protocol):
    """Where runs, metrics, artifacts and certificates live: the union of the family
    protocols above.

    ``open_store`` returns it and only ``open_store`` names the implementation
    (``SqlStore``); a caller types its store with the narrowest protocol it uses
    (``RunReader``, ``CertificateWriter``, …). Failures of the database surface as
    ``StoreError``, never as the driver's or SQLAlchemy's own exceptions.
    """

    url: str  # shown form: any password replaced by ***
    upgrade: Upgrade  # what opening the store found and migrated

    def batches(self) -> BatchTables:
        """Batches of verifications and their claims (``store/batches.py``)."""

    def close(self) -> None:
        """Release connections."""


def runs_to_move(store: CertificateReader, run_ids: Sequence[str]
                 ) -> tuple[list[str], dict[str, CertificateRow]]:
    """What a push or pull of ``run_ids`` moves: the runs (each once, in order) followed by
    the reruns their certificates name, and those certificates by sha256."""
    wanted = list(dict.fromkeys(run_ids))
    certified: dict[str, CertificateRow] = {}
    for run_id in list(wanted):
        for row in store.certificates(run_id=run_id):
            certified[row.sha256] = row
            if row.rerun_id and row.rerun_id not in wanted:
                wanted.append(row.rerun_id)
    return wanted, certified
