"""The filter and sort language of ``audit list --where … --sort …`` and of ``audit ui``.

A filter is clauses joined by ``and`` (or given as several ``--where``)::

    name ~ mlp            name contains "mlp"        (``=`` is exact, ``!=`` its negation)
    tag = baseline        the run has this tag
    status = finished     running, finished, failed, crashed
    verified = bitwise    bitwise, within-tolerance, not-reproduced, could-not-verify, never
    params.lr < 0.1       any param (``params.`` prefix) with = != < <= > >= ~
    metrics.acc >= 0.9    any final metric
    id ~ 01jf             id contains

Values are numbers, bare words or quoted strings (``"a b"``, ``'x'``). A clause on a key a
run lacks is false for that run; numbers compare with numbers, text with text (a clause
comparing a number with text is false rather than an error).

A sort is comma-separated keys, each ``-key`` (descending) or ``key``; runs lacking a key
sort last either way. The default is newest first.

Reads go through the store's own summaries (``RunStore.list_runs``) and certificate index,
so every store the protocol covers (SQLite, PostgreSQL) answers the same queries.

``verifiable_runs`` is the selection of ``audit verify --all`` (finished originals, not
reruns, narrowed by ``--since AGE``, ``--tag``, ``--name GLOB``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from auditor.core.errors import InputError
from auditor.store.base import CertifiedRuns, RecordReader, RunSummary

Op = Literal["=", "!=", "<", "<=", ">", ">=", "~"]
OPS: tuple[Op, ...] = ("<=", ">=", "!=", "=", "<", ">", "~")
PLAIN_FIELDS = ("id", "name", "status", "tag", "verified", "started", "commit")
BADGES = {
    "reproduced-bitwise": "bitwise",
    "reproduced-within-tolerance": "within-tolerance",
    "not-reproduced": "not-reproduced",
    "could-not-verify": "could-not-verify",
}
VERIFIED_VALUES = (*BADGES.values(), "never")
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op><=|>=|!=|==|=|<|>|~)"""
    r"""|(?P<word>[^\s=<>!~"']+))"""
)
MAX_FILTER = 4000
_PLAIN_ATTRS = frozenset({"id", "name", "status", "verified", "commit"})


@dataclass(frozen=True)
class Row:
    """One run as the table shows it: the summary plus its params and verification badge."""

    id: str
    name: str
    status: str
    started_at: datetime
    commit: str | None
    dirty: bool
    reproduces: str | None
    tags: tuple[str, ...]
    params: dict[str, Any]
    metrics: dict[str, float]
    verified: str = "never"
    lacks: str | None = None  # an imported run: what it lacks to be verifiable
    entry: str | None = None  # the entry point its command ran (summaries.entry_point)

    @property
    def final_metrics(self) -> dict[str, float]:
        """The final metrics, under ``RunSummary``'s name for them."""
        return self.metrics

    def value(self, key: str) -> Any:
        """The value a clause or sort key names, or None when the run lacks it."""
        if key.startswith("params."):
            return self.params.get(key[7:])
        if key.startswith("metrics."):
            return self.metrics.get(key[8:])
        if key == "started":
            return self.started_at.isoformat()
        return getattr(self, key) if key in _PLAIN_ATTRS else None


@dataclass(frozen=True)
class Clause:
    """``key op value``."""

    key: str
    op: Op
    value: str | float

    def matches(self, row: Row) -> bool:
        """Whether the run satisfies the clause (False when it lacks the key)."""
        if self.key == "tag":
            hit = any(_compare(t, "=" if self.op in ("=", "!=") else self.op, self.value)
                      for t in row.tags)
            return not hit if self.op == "!=" else hit
        return _compare(row.value(self.key), self.op, self.value)


@dataclass(frozen=True)
class Query:
    """A parsed filter and sort."""

    clauses: tuple[Clause, ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()  # (key, descending)
    originals: bool = False  # reruns left out (they are shown under their originals)

    def matches(self, row: Row) -> bool:
        """All clauses hold (and the run is no rerun, for a query of originals)."""
        if self.originals and row.reproduces:
            return False
        return all(c.matches(row) for c in self.clauses)


@dataclass(frozen=True)
class Page:
    """One page of the filtered, sorted runs, and the columns they have."""

    rows: list[Row]
    total: int
    matched: int
    page: int
    size: int
    param_keys: list[str] = field(default_factory=list)
    metric_keys: list[str] = field(default_factory=list)
    matched_rows: list[Row] = field(default_factory=list, repr=False)
    reruns: int = 0  # reruns a query of originals left out of ``total``

    @property
    def pages(self) -> int:
        """How many pages the matched runs fill (at least 1)."""
        return max(1, math.ceil(self.matched / self.size))


def parse_filter(texts: Sequence[str]) -> tuple[Clause, ...]:
    """Clauses of one or more filter strings; InputError naming the bad part."""
    clauses: list[Clause] = []
    for text in texts:
        if len(text) > MAX_FILTER:
            raise InputError(f"filter is longer than {MAX_FILTER} characters")
        for part in re.split(r"\s+(?:and|AND)\s+|\s*&&\s*", text.strip()):
            if part:
                clauses.append(_clause(part))
    return tuple(clauses)


def _clause(text: str) -> Clause:
    tokens = _tokens(text)
    shape = [kind == "op" for kind, _ in tokens]
    if shape != [False, True, False] or tokens[0][0] != "word":
        raise InputError(
            f"bad filter clause {text!r}: expected KEY OP VALUE, e.g. params.lr < 0.1",
            hint="keys: name, tag, status, verified, id, params.NAME, metrics.NAME; "
            "ops: = != < <= > >= ~",
        )
    key, op, value = tokens[0][1], tokens[1][1], tokens[2]
    _check_key(key)
    op = "=" if op == "==" else op
    if key == "verified" and value[1] not in VERIFIED_VALUES:
        raise InputError(f"unknown verification state {value[1]!r}: use one of "
                         + ", ".join(VERIFIED_VALUES))
    return Clause(key, op, _number_or_text(value))  # type: ignore[arg-type]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"bad filter clause {text!r} near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or "word"
        raw = m.group(kind)
        out.append((kind, _unquote(raw) if kind == "str" else raw))
        pos = m.end()
    return out


def _unquote(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw[1:-1])


def _number_or_text(token: tuple[str, str]) -> str | float:
    kind, raw = token
    if kind == "word":
        try:
            number = float(raw)
        except ValueError:
            return raw
        return number if math.isfinite(number) else raw
    return raw


def _check_key(key: str) -> None:
    if key in PLAIN_FIELDS or (key.startswith(("params.", "metrics.")) and "." in key[:9]
                                and len(key.split(".", 1)[1]) > 0):
        return
    raise InputError(
        f"unknown filter key {key!r}",
        hint="keys: " + ", ".join(PLAIN_FIELDS) + ", params.NAME, metrics.NAME",
    )


def parse_sort(text: str | None) -> tuple[tuple[str, bool], ...]:
    """``-metrics.acc,name`` -> ((metrics.acc, True), (name, False))."""
    keys: list[tuple[str, bool]] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        descending = part.startswith("-")
        key = part.lstrip("-+")
        if key == "tag":
            raise InputError("cannot sort by tag (a run has several)")
        _check_key(key)
        keys.append((key, descending))
    return tuple(keys)


def parse_query(where: Sequence[str] = (), sort: str | None = None, *,
                originals: bool = False) -> Query:
    """Filter strings and a sort string, parsed (``originals``: reruns left out)."""
    return Query(parse_filter(where), parse_sort(sort), originals)


def _compare(left: Any, op: Op, right: str | float) -> bool:
    if left is None:
        return op == "!="
    if isinstance(left, bool):
        left = str(left).lower()
    if op == "~":
        return str(right).lower() in str(left).lower()
    if isinstance(right, float):
        number = _as_number(left)
        if number is None:
            return op == "!="
        left = number
    else:
        left = str(left)
    return _OPERATORS[op](left, right)


def _as_number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _sort_value(value: Any) -> tuple[int, Any]:
    number = _as_number(value) if not isinstance(value, bool) else None
    if number is not None and not math.isnan(number):
        return (0, number)
    return (1, str(value))


def sort_rows(rows: list[Row], keys: Sequence[tuple[str, bool]]) -> list[Row]:
    """Stable multi-key sort; missing values last in either direction."""
    out = sorted(rows, key=lambda r: r.id, reverse=True)
    for key, descending in reversed(keys):
        values = [(r.value(key), r) for r in out]  # each run's value read once
        present = [(_sort_value(v), r) for v, r in values if v is not None]
        missing = [r for v, r in values if v is None]
        present.sort(key=lambda vr: vr[0], reverse=descending)
        out = [r for _, r in present] + missing
    return out


def latest_verdicts(store: CertifiedRuns) -> dict[str, str]:
    """Run id -> badge of its newest certificate."""
    certificates = getattr(store, "certificates", None)
    if certificates is None:
        return {}
    out: dict[str, str] = {}
    for cert in certificates():  # newest first
        out.setdefault(cert.run_id, BADGES.get(cert.verdict, cert.verdict))
    return out


def all_rows(store: CertifiedRuns) -> list[Row]:
    """Every run as a table row, newest first."""
    verdicts = latest_verdicts(store)
    return [_row(store, s, verdicts.get(s.id, "never")) for s in store.list_runs()]


def _row(store: RecordReader, s: RunSummary, verified: str) -> Row:
    params = s.params
    if params is None and s.status == "corrupt":  # its record fails its digest: no params
        params = {}
    elif params is None:  # a row written before summaries carried params
        params = {k: v for k, v in store.get_record(s.id).params.items()
                  if v is None or isinstance(v, str | int | float | bool)}
    return Row(s.id, s.name, s.status, s.started_at, s.commit, s.dirty, s.reproduces, s.tags,
               dict(params), dict(s.final_metrics), verified, s.lacks, s.entry)


class RowCache:
    """Every run as a table row, kept between requests: each refresh reads only the
    (id, record digest) pairs and re-reads the runs whose record changed, so a page over
    10,000 runs does not parse 10,000 summaries. Certificates are re-read every time
    (their badges change without the run's record changing)."""

    def __init__(self, store: CertifiedRuns) -> None:
        self.store = store
        self.rows: dict[str, Row] = {}
        self.versions: dict[str, str] = {}
        self.verdicts: dict[str, str] = {}
        self.ordered: list[Row] = []
        self.keys: tuple[list[str], list[str]] = ([], [])

    def refresh(self) -> list[Row]:
        """All rows, newest first, current as of this call."""
        versions = self.store.run_versions()
        verdicts = latest_verdicts(self.store)
        if versions == self.versions and verdicts == self.verdicts:
            return self.ordered  # nothing changed: two dict comparisons, no row touched
        self.verdicts = verdicts
        changed = [i for i, sha in versions.items() if self.versions.get(i) != sha]
        gone = [i for i in self.rows if i not in versions]
        for i in gone:
            del self.rows[i]
        if changed:
            for s in self.store.list_runs(ids=changed):
                self.rows[s.id] = _row(self.store, s, "never")
        dirty = bool(changed or gone)
        for i, row in self.rows.items():
            verified = verdicts.get(i, "never")
            if row.verified != verified:
                self.rows[i] = dataclasses.replace(row, verified=verified)
                dirty = True
        self.versions = {i: versions[i] for i in self.rows}
        if dirty or len(self.ordered) != len(self.rows):
            self.ordered = sorted(self.rows.values(), key=lambda r: r.id, reverse=True)
            self.keys = (_keys(self.ordered, "params"), _keys(self.ordered, "metrics"))
        return self.ordered


def select(rows: Sequence[Row], query: Query, *, page: int = 1, size: int = 50,
           keys: tuple[list[str], list[str]] | None = None) -> Page:
    """Filter, sort and cut one page (1-based) out of ``rows``; ``keys`` are the param and
    metric names of all ``rows`` where the caller already knows them (used when no clause
    narrows the rows)."""
    size = max(1, size)
    reruns = sum(1 for r in rows if r.reproduces) if query.originals else 0
    if reruns:
        rows = [r for r in rows if not r.reproduces]
    matched = [r for r in rows if query.matches(r)] if query.clauses else list(rows)
    ordered = sort_rows(matched, query.sort) if query.sort else matched
    pages = max(1, math.ceil(len(ordered) / size))
    page = max(1, min(page, pages))
    cut = ordered[(page - 1) * size: page * size]
    if keys is None or query.clauses:
        keys = (_keys(matched, "params"), _keys(matched, "metrics"))
    return Page(cut, len(rows), len(ordered), page, size, keys[0], keys[1], matched, reruns)


def _keys(rows: Sequence[Row], attr: str) -> list[str]:
    return sorted(set().union(*(getattr(r, attr).keys() for r in rows)))


def page_runs(store: CertifiedRuns, query: Query, *, page: int = 1, size: int = 50) -> Page:
    """One page of the runs ``query`` selects, filtered, sorted and cut by the database
    (``RunStore.query_page``); the page's rows are then built from their digest-checked
    records and checked against ``query`` here (each must match, in the order
    ``sort_rows`` gives). An index that disagrees (a record changed meanwhile, or rows no
    digest covers edited) makes this page come from the full Python path instead.
    ``matched_rows`` is left empty."""
    size = max(1, size)
    found = store.query_page(query, page, size)
    verdicts = latest_verdicts(store)
    summaries = {s.id: s for s in store.list_runs(ids=found.ids)} if found.ids else {}
    rows = [_row(store, summaries[i], verdicts.get(i, "never")) for i in found.ids
            if i in summaries]
    if (len(rows) == len(found.ids) and all(query.matches(r) for r in rows)
            and (not query.sort or sort_rows(rows, query.sort) == rows)):
        return Page(rows, found.total, found.matched, found.page, size, found.param_keys,
                    found.metric_keys, reruns=found.reruns)
    whole = select(all_rows(store), query, page=page, size=size)
    return dataclasses.replace(whole, matched_rows=[])


def query_runs(store: CertifiedRuns, where: Sequence[str] = (), sort: str | None = None,
               *, page: int = 1, size: int = 50, originals: bool = False) -> Page:
    """The page of runs a filter and sort select, read from ``store``."""
    return select(all_rows(store), parse_query(where, sort, originals=originals),
                  page=page, size=size)


def rows_of(store: CertifiedRuns, ids: Sequence[str]) -> list[Row]:
    """These runs as table rows, in the order given."""
    verdicts = latest_verdicts(store)
    summaries = {s.id: s for s in store.list_runs(ids=list(ids))}
    return [_row(store, summaries[i], verdicts.get(i, "never")) for i in ids if i in summaries]


def reruns_of(store: CertifiedRuns, originals: Sequence[Row]) -> dict[str, list[Row]]:
    """Original id -> its reruns as rows, newest first (for showing them nested)."""
    wanted = {r.id: store.run_ids_reproducing(r.id) for r in originals}
    ids = [i for found in wanted.values() for i in found]
    if not ids:
        return {}
    verdicts = latest_verdicts(store)
    summaries = {s.id: s for s in store.list_runs(ids=ids)}
    return {o: [_row(store, summaries[i], verdicts.get(i, "never")) for i in found
                if i in summaries] for o, found in wanted.items() if found}


def parse_age(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` as a duration; ``InputError`` otherwise."""
    m = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not m:
        raise InputError(f"--since {text!r}: expected a number and a unit (30m, 12h, 7d, 2w)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def verifiable_runs(store: CertifiedRuns, *, since: str | None = None, tags: Sequence[str] = (),
                    name: str | None = None, now: datetime | None = None) -> list[str]:
    """The ids ``audit verify --all`` verifies: finished runs that are not reruns, started
    within ``since`` (an age), carrying any of ``tags``, named like the glob ``name``."""
    oldest = (now or datetime.now(UTC)) - parse_age(since) if since else None
    return [r.id for r in store.list_runs()
            if r.status == "finished" and not r.reproduces
            and (oldest is None or r.started_at >= oldest)
            and (not tags or set(tags) & set(r.tags))
            and (not name or fnmatch.fnmatchcase(r.name, name))]
