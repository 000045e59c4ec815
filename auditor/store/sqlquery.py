"""The runs table's filter, sort and page as one SQL query over ``run_values``
(``store/values.py``), on SQLite and PostgreSQL alike, with the semantics of
``store/query.py`` (which remains the reference: ``query.page_runs`` checks every page
against it):

* a clause on a key a run lacks is false, ``!=`` is the negation of ``=`` (true when
  the run lacks the key); numbers compare with numbers, text with text; ``~`` is a
  case-folded substring; a ``tag`` clause holds when any tag satisfies it;
* a sort key orders numbers before text (descending: text before numbers), runs lacking
  it last either way, ties newest (greatest id) first;
* ``verified`` is the badge of the run's newest certificate, ``never`` without one.

Text compares by code point (PostgreSQL: ``COLLATE "C"``), as Python compares strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from auditor.store.base import ClauseSpec, QuerySpec
from auditor.store.query import BADGES

_KINDS = {"params.": "p", "metrics.": "m"}


def _kind_key(key: str) -> tuple[str, str]:
    for prefix, kind in _KINDS.items():
        if key.startswith(prefix):
            return kind, key[len(prefix):]
    return "f", key


class PageQuery:
    """SQL for one ``Query`` over the tables of ``store/sql.py``."""

    def __init__(self, runs: sa.Table, values: sa.Table, certs: sa.Table,
                 dialect: str) -> None:
        self.runs, self.values, self.certs = runs, values, certs
        self.postgres = dialect == "postgresql"

    def _text(self, column: Any) -> Any:
        return column.collate("C") if self.postgres else column

    def verified(self) -> ColumnElement[Any]:
        """The badge of each run's newest certificate, ``never`` without one."""
        c = self.certs
        newest = (sa.select(c.c.verdict).where(c.c.run_id == self.runs.c.id)
                  .order_by(c.c.issued_at.desc()).limit(1).scalar_subquery())
        return sa.func.coalesce(
            sa.case(*((newest == verdict, badge) for verdict, badge in BADGES.items()),
                    else_=newest), "never")

    def _holds(self, v: Any, op: str, value: str | float) -> ColumnElement[bool]:
        """``value op`` over one ``run_values`` row (or the verified expression)."""
        if op == "~":
            return v.folded.contains(str(value).lower(), autoescape=True)  # type: ignore[no-any-return]
        column = v.num if isinstance(value, float) else self._text(v.text)
        conditions: dict[str, ColumnElement[bool]] = {
            "=": column == value, "<": column < value, "<=": column <= value,
            ">": column > value, ">=": column >= value}
        return conditions[op]

    def clause(self, clause: ClauseSpec) -> ColumnElement[bool]:
        """One clause as a condition on ``runs``."""
        if clause.key == "verified":
            return self._verified_clause(clause)
        if clause.key == "tag":
            kind, key = "t", None
            op = "=" if clause.op in ("=", "!=") else clause.op
        else:
            (kind, key), op = _kind_key(clause.key), clause.op
        op = "=" if op == "!=" else op
        v = self.values.alias()
        where = [v.c.run_id == self.runs.c.id, v.c.kind == kind,
                 self._holds(v.c, op, clause.value)]
        if key is not None:
            where.append(v.c.key == key)
        exists = sa.exists(sa.select(sa.literal(1)).select_from(v).where(*where))
        return ~exists if clause.op == "!=" else exists

    def _verified_clause(self, clause: ClauseSpec) -> ColumnElement[bool]:
        value = clause.value
        if isinstance(value, float):  # a badge is never a number
            return sa.true() if clause.op == "!=" else sa.false()
        badge = self._text(self.verified())
        if clause.op == "~":
            return badge.contains(value.lower(), autoescape=True)  # type: ignore[no-any-return]
        conditions: dict[str, ColumnElement[bool]] = {
            "=": badge == value, "!=": badge != value, "<": badge < value,
            "<=": badge <= value, ">": badge > value, ">=": badge >= value}
        return conditions[clause.op]

    def where(self, query: QuerySpec) -> list[ColumnElement[bool]]:
        """Every clause as a condition on ``runs``."""
        return [self.clause(c) for c in query.clauses]

    def reruns(self, conn: Connection) -> int:
        """How many runs are reruns of another run."""
        return int(conn.execute(sa.select(sa.func.count()).select_from(self.runs)
                                .where(self.runs.c.reproduces.is_not(None))).scalar_one())

    def page(self, conn: Connection, query: QuerySpec, page: int, size: int
             ) -> tuple[list[str], int, int, int, list[str], list[str], int]:
        """(ids of the page, total runs, matched runs, page shown, param keys, metric
        keys of the matched runs, reruns left out). With ``query.originals`` reruns are
        neither counted nor listed (a store without reruns gets no extra condition)."""
        runs = self.runs
        where = self.where(query)
        hidden = self.reruns(conn) if query.originals else 0
        base = [runs.c.reproduces.is_(None)] if hidden else []
        total = conn.execute(sa.select(sa.func.count()).select_from(runs).where(*base)
                             ).scalar_one()
        matched = total if not where else conn.execute(
            sa.select(sa.func.count()).select_from(runs).where(*base, *where)).scalar_one()
        pages = max(1, -(-int(matched) // size))
        page = max(1, min(page, pages))
        select = sa.select(runs.c.id).where(*base, *where)
        order: list[Any] = []
        for n, (key, descending) in enumerate(query.sort):
            if key == "verified":
                badge = self._text(self.verified())
                order.append(badge.desc() if descending else badge.asc())
                continue
            kind, name = _kind_key(key)
            s = self.values.alias(f"s{n}")
            select = select.outerjoin(
                s, sa.and_(s.c.run_id == runs.c.id, s.c.kind == kind, s.c.key == name))
            order.extend(self._order(s, descending))
        select = select.order_by(*order, runs.c.id.desc()).limit(size).offset((page - 1) * size)
        ids = [str(i) for i in conn.execute(select).scalars()]
        found = conn.execute(self._keys(where)).all()
        params = sorted(str(k) for kind, k in found if kind == "p")
        metrics = sorted(str(k) for kind, k in found if kind == "m")
        return ids, int(total), int(matched), page, params, metrics, hidden

    def _keys(self, where: list[ColumnElement[bool]]) -> Any:
        """The param and metric names of the matched runs: every name any run has, each
        kept when a matched run has it (one probe per name, driven by the name's rows)."""
        v = self.values
        names = (sa.select(v.c.kind, v.c.key).distinct().where(v.c.kind.in_(("p", "m")))
                 .subquery("names"))
        if not where:
            return sa.select(names.c.kind, names.c.key)
        has = self.values.alias("has")
        probe = (sa.select(sa.literal(1)).select_from(has.join(self.runs,
                                                               has.c.run_id == self.runs.c.id))
                 .where(has.c.kind == names.c.kind, has.c.key == names.c.key, *where))
        return sa.select(names.c.kind, names.c.key).where(sa.exists(probe))

    def _order(self, s: Any, descending: bool) -> Sequence[Any]:
        missing = sa.case((s.c.stext.is_(None), 1), else_=0)
        textual = sa.case((s.c.num.is_(None), 1), else_=0)
        text = sa.case((s.c.num.is_(None), self._text(s.c.stext)), else_=None)
        if descending:
            return [missing.asc(), textual.desc(), s.c.num.desc(), text.desc()]
        return [missing.asc(), textual.asc(), s.c.num.asc(), text.asc()]
