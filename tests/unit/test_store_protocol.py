"""Callers are typed against the ``RunStore`` protocol and never see SQLAlchemy.

Only ``auditor/store/`` names the implementation (``SqlStore``) or imports SQLAlchemy;
everything above it speaks ``RunStore`` and ``StoreError``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sqlalchemy as sa

import auditor
from auditor.core.errors import StoreUnavailable
from auditor.store import open_store
from tests.conftest import audit

PACKAGE = Path(auditor.__file__).parent


def _outside_store() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    return [p for p in files if p.relative_to(PACKAGE).parts[0] != "store"]


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.alias):
        return node.name
    return node.attr if isinstance(node, ast.Attribute) else None


def test_no_caller_names_the_sql_implementation() -> None:
    named = []
    for path in _outside_store():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if _name(node) == "SqlStore":
                named.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}")
    assert not named, f"use auditor.store.RunStore instead of SqlStore: {named}"


def test_no_caller_imports_sqlalchemy() -> None:
    found = []
    for path in _outside_store():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno} {m}"
                      for m in modules if m.split(".")[0] == "sqlalchemy"]
    assert not found, f"SQLAlchemy belongs inside auditor/store: {found}"


def test_a_database_error_during_an_operation_is_one_line_exit_3(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    with store.engine.begin() as conn:  # type: ignore[attr-defined]  # the table goes away
        conn.exec_driver_sql("DROP TABLE metrics")
    with pytest.raises(StoreUnavailable, match="no such table: metrics") as err:
        list(store.iter_metrics("0" * 26))  # a generator method: raised while iterated
    assert err.value.exit_code == 3
    with pytest.raises(StoreUnavailable):
        store.add_metrics("0" * 26, [("loss", 0, 1.0, 0.0)])
    store.close()
    res = audit("--store", str(tmp_path / "s"), "show", "0" * 26, cwd=tmp_path)
    assert res.returncode == 2 and "no run matches" in res.stderr  # the runs table is fine
    with sa.create_engine(f"sqlite:///{tmp_path / 's' / 'store.db'}").begin() as conn:
        conn.exec_driver_sql("DROP TABLE runs")
    res = audit("--store", str(tmp_path / "s"), "list", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert res.stderr.startswith("error: store sqlite:///") and res.stderr.count("\n") == 1
    assert "no such table: runs" in res.stderr and "Traceback" not in res.stderr


def _private_store_imports(source: str, where: str) -> list[str]:
    """``from auditor.store… import _name`` lines of ``source``: a private helper of the
    store borrowed by another package."""
    return [f"{where}:{node.lineno} {node.module}.{a.name}"
            for node in ast.walk(ast.parse(source, where))
            if isinstance(node, ast.ImportFrom) and node.module
            and (node.module + ".").startswith("auditor.store.")
            for a in node.names if a.name.startswith("_")]


def test_no_caller_imports_a_private_name_of_the_store() -> None:
    found = [hit for path in _outside_store()
             for hit in _private_store_imports(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert not found, f"use the store's public names (auditor.store.records…): {found}"
    # the checker itself catches the borrow issue 18 removed (fsck parsing records)
    assert _private_store_imports("from auditor.store.sql import _parse_record\n", "fsck.py")
    assert not _private_store_imports("from auditor.store.records import parse_record\n", "x")
