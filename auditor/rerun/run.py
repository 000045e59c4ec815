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

from auditor.core.progress import Counter, counter, metric_steps, tee
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
        steps = Counter()
        try:
            lease.take(workdir, store.url, backend.name)  # a later command cleans if we die
            acc = original.environment.accelerators
            limits = replace(limits, gpus=len(acc.gpus) if acc else 0)
            prep = prepare(store, original, workdir, skip_replay=skip_replay, pass_env=pass_env)
            say(f"rerunning `{' '.join(prep.argv)}` ({backend.name}, no network)")
            steps = _step_counter(say, original)
            return record_rerun(
                store, original, prep, built,
                lambda sink: backend.execute(
                    prep, built, limits, tee(sink, metric_steps(steps)),
                    hidden=(store_dir_of(store),), also_hidden=_repository(original),
                ),
            )
        finally:
            steps.close()
            cleanup(workdir)
            tmp.cleanup()


def _step_counter(say: Callable[[str], None], original: RunRecord) -> Counter:
    """The rerun's steps against the original's (its metric lines per metric), with the
    original's duration as the time all of them take."""
    per_step = max(1, len(original.metrics.final)) if original.metrics else 1
    total = (original.metrics.points // per_step) if original.metrics else 0
    return counter(say, "rerun", total, unit="steps", eta_s=original.identity.duration_s)


def _repository(original: RunRecord) -> tuple[Path, ...]:
    """The original run's repository on this host: hidden from a venv rerun."""
    return (Path(original.code.root),) if original.code and original.code.root else ()
