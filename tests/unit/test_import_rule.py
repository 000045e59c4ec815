"""The import rule of docs/ARCHITECTURE.md, checked on the source: imports point down the
data flow, and no module reaches itself through imports.

Every ``import`` and ``from … import`` in ``auditor/`` counts, also those inside functions
and under ``TYPE_CHECKING``: a lazy import is still a dependency, and a circle through one
is still a circle (pip-tools' and import-linter's "layers" contract, without the tool).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "auditor"

# The stages in data-flow order. A module may import its own package and any stage of a
# lower rank; stages of the same rank (report/release, verify/executors/ui) do not import
# each other.
RANKS: dict[str, int] = {
    "core": 0,
    "store": 1,
    "record": 2,
    "env": 3,
    "integrations": 3,
    "rerun": 4,
    "compare": 5,
    "certify": 6,
    "report": 7,
    "release": 7,
    "verify": 8,
    "spotcheck": 8,
    "executors": 8,
    "ui": 8,
    "preflight": 8,
    "cli": 9,
}
# The package itself is the public Python API: it may use `record` and `core`, and nothing
# inside auditor imports it (a module that did would drag the recorder into the rerun).
ROOT_MAY_IMPORT = {"core", "record"}
# The framework integrations (Lightning, Hugging Face) stand beside the API: they run inside
# training scripts and reruns, use `record` and `core` only, and nothing imports them.
INTEGRATIONS_MAY_IMPORT = {"core", "record"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.ImportFrom) and node.level:
                pytest.fail(f"{name}: relative import (the rule reads absolute ones)")
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "auditor" and target != name:
                    while target not in modules:  # `import auditor.x.y` of a name in x
                        target = target.rsplit(".", 1)[0]
                    edges[name].add(target)
    return edges


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<api>"


def _violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            src, dst = _stage(source), _stage(target)
            if src == dst:
                continue
            if dst == "<api>":
                found.append(f"{source} -> {target}: nothing inside auditor imports the API")
            elif dst == "integrations":
                found.append(f"{source} -> {target}: nothing inside auditor imports the "
                             "integrations")
            elif src == "integrations" and dst not in INTEGRATIONS_MAY_IMPORT:
                found.append(f"{source} -> {target}: the integrations use record and core "
                             "only")
            elif src == "<api>":
                if dst not in ROOT_MAY_IMPORT:
                    found.append(f"{source} -> {target}: the API uses record and core only")
            elif dst not in RANKS or src not in RANKS:
                found.append(f"{source} -> {target}: {src if src not in RANKS else dst} "
                             "is not a stage of RANKS (add it to the rule and ARCHITECTURE.md)")
            elif RANKS[dst] >= RANKS[src]:
                found.append(f"{source} -> {target}: {src} (rank {RANKS[src]}) may not "
                             f"import {dst} (rank {RANKS[dst]})")
    return found


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if node not in index:
            visit(node)
    return found


def test_every_module_sits_in_a_stage() -> None:
    stages = {_stage(m) for m in _modules()} - {"<api>"}
    assert stages <= set(RANKS), f"modules outside the stages of the rule: {stages - set(RANKS)}"


def test_imports_point_down_the_data_flow() -> None:
    assert _violations(_graph()) == []


# Circles still to break, each with the step that removes it; the test fails when one is
# gone but still listed, so the list only shrinks.
KNOWN_CIRCLES: list[list[str]] = []


def test_no_import_circles() -> None:
    assert _circles(_graph()) == KNOWN_CIRCLES


def test_the_rule_catches_an_upward_import_and_a_circle() -> None:
    # the checker itself: an upward import and a two-module circle are both reported
    edges = {
        "auditor.store.sql": {"auditor.certify.issue"},
        "auditor.certify.issue": {"auditor.store.sql"},
    }
    assert _violations(edges) == [
        "auditor.store.sql -> auditor.certify.issue: store (rank 1) may not import certify "
        "(rank 6)"
    ]
    assert _circles(edges) == [["auditor.certify.issue", "auditor.store.sql"]]
    assert _violations({"auditor.report.html": {"auditor.release.gate"}})  # same rank
    assert _violations({"auditor.env.lock": {"auditor"}})  # the API from inside
    assert _violations({"auditor.cli.main": {"auditor.integrations.lightning"}})
    assert _violations({"auditor.integrations.lightning": {"auditor.store.sql"}})
    assert not _violations({"auditor.integrations._run": {"auditor.record.attached"}})


# `record` runs inside every `audit record`: it reaches the store only through its public,
# SQL-free modules (SQLAlchemy loads when a command opens a store, in `open_store`).
RECORD_MAY_NOT_IMPORT = ("auditor.store.sql", "auditor.store.migrate", "auditor.store.sync")
# ... except the MLflow import, which copies runs between stores as `audit push` does
RECORD_SQL_ALLOWED = {"auditor.record.from_mlflow"}


def _sql_leaks(edges: dict[str, set[str]]) -> list[str]:
    return [f"{source} -> {target}: record reaches the store's SQL implementation"
            for source, targets in sorted(edges.items())
            if _stage(source) == "record" and source not in RECORD_SQL_ALLOWED
            for target in sorted(targets) if target.startswith(RECORD_MAY_NOT_IMPORT)]


def test_record_does_not_import_the_sql_store() -> None:
    assert _sql_leaks(_graph()) == []
    # the checker itself catches the leak issue 16 found (a float helper from store.sql)
    assert _sql_leaks({"auditor.record.wrap": {"auditor.store.sql"}})


def test_importing_the_recorder_loads_no_sqlalchemy() -> None:
    # in a fresh interpreter: what `audit record` imports before it opens a store
    import subprocess
    import sys

    code = ("import sys, auditor.record.wrap, auditor.record.childio, auditor.rerun.lease; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'alembic')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout
