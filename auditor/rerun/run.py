"""The rerun stage composed: a private scratch folder, the prepared plan, the chosen
backend's ``execute`` and the rerun's own record, with SIGTERM turned into an interrupt so
the container, the process group and the scratch folder are always removed. The scratch
folder carries this process's lease (``rerun/lease.py``): after a ``kill -9`` the next
command that opens the store removes what was left and marks the rerun crashed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from auditor.core.schema import RunRecord
from auditor.env.spec import BuildResult
from auditor.rerun import lease
from auditor.rerun.backends import Backend
from auditor.rerun.record import record_rerun
from auditor.rerun.sandbox import Limits, cleanup, interrupt_on_sigterm, prepare, scratch_dir
from auditor.store import RunStore, store_dir_of


def rerun(
    store: RunStore,
    original: RunRecord,
    built: BuildResult,
    backend: Backend,
    *,
    limits: Limits,
    skip_replay: frozenset[str] = frozenset(),
    pass_env: tuple[str, ...] = (),
    say: Callable[[str], None] = lambda _line: None,
) -> RunRecord:
    """Rerun ``original`` in ``built`` with ``backend``; the stored rerun record."""
    with interrupt_on_sigterm():
        tmp = scratch_dir()
        workdir = Path(tmp.name)
        try:
            lease.take(workdir, store.url, backend.name)  # a later command cleans if we die
            acc = original.environment.accelerators
            limits = replace(limits, gpus=len(acc.gpus) if acc else 0)
            prep = prepare(store, original, workdir, skip_replay=skip_replay, pass_env=pass_env)
            say(f"rerunning `{' '.join(prep.argv)}` ({backend.name}, no network)")
            return record_rerun(
                store, original, prep, built,
                lambda sink: backend.execute(
                    prep, built, limits, sink, hidden=(store_dir_of(store),),
                    also_hidden=_repository(original),
                ),
            )
        finally:
            cleanup(workdir)
            tmp.cleanup()


def _repository(original: RunRecord) -> tuple[Path, ...]:
    """The original run's repository on this host: hidden from a venv rerun."""
    return (Path(original.code.root),) if original.code and original.code.root else ()
