"""Callers are typed against the ``RunStore`` protocol and never see SQLAlchemy.

Only ``auditor/store/`` names the implementation (``SqlStore``) or imports SQLAlchemy;
everything above it speaks ``RunStore`` and ``StoreError``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import auditor

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
