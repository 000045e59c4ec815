"""``audit preflight [-- COMMAND]``: will this run be re-runnable, asked before it starts.

It reads the command's code statically (the entry script and the local source it
imports, parsed with ``ast``, never executed) and checks the environment cheaply (the
training interpreter's packages against the lockfile, the docker engine and the base
image). The checks, in ``CHECKS`` order, each finding with a one-line fix:

  ignored-source  local source the command imports that git ignores (or outside the repo)
  lockfile        no lockfile, unhashed, for another Python, or drifting from what is installed
  inputs          data read but ignored by git or outside the tree and not --input; downloads
  seed            no seeding call in the code read; a seed from the clock; a --seed defaulting
                  to None that the command does not pass
  determinism     cudnn.benchmark on, deterministic algorithms off, with CUDA: deterministic
                  algorithms never on, CUBLAS_WORKSPACE_CONFIG unset
  dataloader      DataLoader with workers and neither generator= nor worker_init_fn=
  engine          no docker engine answers, or the base image is not on it

Seeds are found statically rather than by a probe run: a probe would have to start the
user's training (minutes to hours before the first seed call is certain) and a static
reading is bounded by the size of the source. ``run_preflight`` returns the
``PreflightReport``; ``rerunnable`` is true when nothing was found.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from auditor.preflight.code_checks import (
    Skip,
    determinism,
    ignored_sources,
    inputs,
    load_code,
    loaders,
    seeds,
)
from auditor.preflight.env_checks import engine, lockfile
from auditor.preflight.model import CheckResult, Finding, PreflightReport, Project
from auditor.store import repo_root

__all__ = ["CHECKS", "Finding", "PreflightReport", "Project", "run_preflight"]

Check = Callable[[Project], list[Finding]]
CHECKS: dict[str, Check] = {
    "ignored-source": ignored_sources,
    "lockfile": lockfile,  # before engine: the base image follows the interpreter's Python
    "inputs": inputs,
    "seed": seeds,
    "determinism": determinism,
    "dataloader": loaders,
    "engine": engine,
}


def run_preflight(argv: Sequence[str], *, cwd: Path | None = None,
                  declared: Sequence[Path] = (), base_image: str | None = None,
                  skip: Sequence[str] = (), env: dict[str, str] | None = None
                  ) -> PreflightReport:
    """Every check of ``CHECKS`` (but those in ``skip``) for ``argv`` run in ``cwd``."""
    started = time.monotonic()
    here = (cwd or Path.cwd()).resolve()
    root = repo_root(here)
    project = Project(cwd=here, root=root.resolve() if root else None, argv=tuple(argv),
                      inputs=tuple(here / d for d in declared), base_image=base_image,
                      env=dict(os.environ if env is None else env))
    if root is None:
        project.notes.append("not a git repository: audit record snapshots the whole folder "
                             "(--code-dir); git-ignore checks do not apply")
    load_code(project)
    results: list[CheckResult] = []
    findings: list[Finding] = []
    for name, check in CHECKS.items():
        began = time.monotonic()
        if name in skip:
            results.append(CheckResult(check=name, status="skipped", why="--skip",
                                       seconds=0.0))
            continue
        try:
            found = check(project)
        except Skip as exc:
            results.append(CheckResult(check=name, status="skipped", why=str(exc),
                                       seconds=time.monotonic() - began))
            continue
        findings += found
        results.append(CheckResult(check=name, status="failed" if found else "ok",
                                   seconds=time.monotonic() - began))
    entry = project.entry
    shown = (project.label(entry.script) if entry and entry.script else
             f"-m {entry.module}" if entry and entry.module else None)
    return PreflightReport(rerunnable=not findings, root=str(project.root) if root else None,
                           command=tuple(argv), entry=shown,
                           source_files=tuple(project.label(f) for f in project.files),
                           checks=tuple(results), findings=tuple(findings),
                           notes=tuple(project.notes), seconds=time.monotonic() - started)
