"""What a command runs and the local source it imports, read statically (never run).

Contract:

- ``entry_of(argv, cwd)`` finds what a command runs: a script (``python train.py``, a
  launcher's ``….py`` argument, an executable with a Python shebang) or a module
  (``python -m pkg.train``), and the folders Python would search first for its imports
  (the script's folder, or ``cwd`` for ``-m``, then ``PYTHONPATH``).
- ``import_closure(entries, roots)`` follows ``import`` / ``from … import`` (relative ones
  too, also inside functions and ``try``) through every file found under ``roots``: the
  local source the command imports, each file once. Anything not found there (the
  standard library, installed packages) is left alone. Nothing is executed: a file is read
  (at most ``MAX_SOURCE_BYTES``) and parsed with ``ast``; one that does not parse is named.

What that source says (seeds, switches, loaders, paths) is ``preflight/facts.py``.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_SOURCE_BYTES = 4 << 20  # a larger .py file is not source we read
_PYTHON = re.compile(r"^(?:python|pypy)[0-9.]*$")
_PY_VALUE_OPTIONS = frozenset({"-W", "-X", "-Q"})


@dataclass(frozen=True)
class Entry:
    """What a command runs: a script or a module, and where its imports are found first."""

    script: Path | None
    module: str | None
    roots: tuple[Path, ...]


# ---- what the command runs ------------------------------------------------------------


def entry_of(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Entry:
    """The script or module ``argv`` runs, with Python's first import folders."""
    extra = tuple(Path(p) for p in (env or os.environ).get("PYTHONPATH", "").split(":") if p)
    if not argv:
        return Entry(None, None, (cwd, *extra))
    rest = list(argv[1:]) if _PYTHON.match(Path(argv[0]).name) else None
    if rest is None and _has_python_shebang(cwd / argv[0]):
        script = (cwd / argv[0]).resolve()
        return Entry(script, None, (script.parent, *extra))
    words = iter(rest if rest is not None else argv[1:])
    for word in words:
        if rest is not None and word == "-m":
            module = next(words, None)
            return Entry(None, module, (cwd, *extra))
        if rest is not None and word in _PY_VALUE_OPTIONS:
            next(words, None)
            continue
        if rest is not None and word == "-c":
            return Entry(None, None, (cwd, *extra))
        if word.endswith(".py") or (rest is not None and not word.startswith("-")):
            script = (cwd / word).resolve()
            return Entry(script, None, (script.parent, *extra))
    return Entry(None, None, (cwd, *extra))


def _has_python_shebang(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            first = handle.readline(256).decode(errors="replace")
    except OSError:
        return False
    return first.startswith("#!") and "python" in first


# ---- the import closure ---------------------------------------------------------------


def read_tree(path: Path) -> ast.Module | None:
    """The parsed file, or None when it cannot be read or parsed."""
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            return None
        return ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def import_closure(entries: Iterable[Path], roots: Sequence[Path],
                   modules: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
    """(local files the entries import, transitively, entries included; files that did not
    parse). ``modules`` are module names run with ``-m``."""
    seen: dict[Path, None] = {}
    broken: list[Path] = []
    queue = [p.resolve() for p in entries]
    scripts = set(queue)  # a script's own folder is first on sys.path; a module's is not
    for name in modules:
        queue += _resolve(name, roots)
    while queue:
        path = queue.pop(0)
        if path in seen or not path.is_file():
            continue
        seen[path] = None
        tree = read_tree(path)
        if tree is None:
            broken.append(path)
            continue
        own = (path.parent,) if path in scripts else ()
        for name in _imported(tree, path, roots):
            queue += [p for p in _resolve(name, (*own, *roots)) if p not in seen]
    return list(seen), broken


def _imported(tree: ast.Module, path: Path, roots: Sequence[Path]) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path, roots)
            if base is None:
                continue
            if base:
                yield base
            yield from (f"{base}.{a.name}" if base else a.name for a in node.names)


def _absolute(node: ast.ImportFrom, path: Path, roots: Sequence[Path]) -> str | None:
    if not node.level:
        return node.module or ""
    package = path.parent
    for _ in range(node.level - 1):
        package = package.parent
    root = next((r.resolve() for r in roots if package.is_relative_to(r.resolve())), None)
    if root is None:
        return None
    parts = list(package.relative_to(root).parts)
    return ".".join([*parts, *([node.module] if node.module else [])])


def _resolve(name: str, roots: Sequence[Path]) -> list[Path]:
    """The files importing ``name`` runs (each package's ``__init__.py`` on the way), from
    the first root that has it; [] when no root does (stdlib, installed packages)."""
    parts = name.split(".")
    for root in roots:
        found: list[Path] = []
        folder = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if (folder / part).is_dir():
                folder = folder / part
                init = folder / "__init__.py"
                if init.is_file():
                    found.append(init.resolve())
                continue
            if (folder / f"{part}.py").is_file():
                found.append((folder / f"{part}.py").resolve())
                break
            if not last or not found:
                break
        if found:
            return found
    return []
