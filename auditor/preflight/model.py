"""The values of a pre-flight check: what it looks at (``Project``), what it found
(``Finding``, each with its one-line fix) and the whole answer (``PreflightReport``, the
``--json`` output, ``schema_version`` 1)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from auditor.preflight.facts import Facts
from auditor.preflight.source import Entry

SCHEMA_VERSION = 1
GIT_TIMEOUT_S = 30


class Finding(BaseModel):
    """One reason the run would not rerun as recorded, and how to fix it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    check: str
    problem: str
    fix: str
    where: str | None = None
    details: tuple[str, ...] = ()


class CheckResult(BaseModel):
    """One check: ``ok``, ``failed`` (it has findings) or ``skipped`` (with why)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    check: str
    status: Literal["ok", "failed", "skipped"]
    why: str | None = None
    seconds: float


class PreflightReport(BaseModel):
    """``audit preflight --json``: re-runnable when there is no finding (exit 0), else 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION
    rerunnable: bool
    root: str | None
    command: tuple[str, ...]
    entry: str | None
    source_files: tuple[str, ...]
    checks: tuple[CheckResult, ...]
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    seconds: float


@dataclass
class Project:
    """What one pre-flight looks at; ``code`` and ``python`` are filled once, on demand."""

    cwd: Path
    root: Path | None
    argv: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    base_image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    entry: Entry | None = None
    files: list[Path] = field(default_factory=list)
    facts: Facts = field(default_factory=Facts)
    python_version: str | None = None
    notes: list[str] = field(default_factory=list)

    def label(self, path: Path) -> str:
        """``path`` as findings name it: relative to the tree (or the working folder)."""
        for base in (self.root, self.cwd):
            if base is not None and path.is_relative_to(base):
                return str(path.relative_to(base))
        return str(path)

    def git(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``git`` in the tree (bounded); the caller reads ``returncode``."""
        assert self.root is not None
        return subprocess.run(["git", "-C", str(self.root), *args], input=stdin,
                              capture_output=True, timeout=GIT_TIMEOUT_S, check=False)

    def ignored(self, paths: Sequence[Path]) -> set[Path]:
        """Those of ``paths`` (inside the tree) that git ignores; tracked files never are."""
        root = self.root
        if root is None:
            return set()
        inside = [p for p in paths if p.is_relative_to(root)]
        if not inside:
            return set()
        rels = b"\0".join(str(p.relative_to(root)).encode() for p in inside) + b"\0"
        done = self.git("check-ignore", "-z", "--stdin", stdin=rels)
        named = {item.decode() for item in done.stdout.split(b"\0") if item}
        return {p for p in inside if str(p.relative_to(root)) in named}
