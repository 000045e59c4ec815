"""auditor: a reproducibility auditor and re-run verifier for deep-learning training.

Public Python API::

    import auditor
    auditor.seed_everything(42, deterministic=True)
    with auditor.start_run(name="mlp", params=cfg, seed=42) as run:
        start = run.resume(model, optimizer, scheduler=sched, generators=[g])  # 0 unless resuming
        run.log_metric("loss", 0.41, step=3)
        run.checkpoint(100, model=model, optimizer=optimizer, scheduler=sched, generators=[g])
        run.log_artifact("model.safetensors")

Checkpoints: ``run.checkpoint`` (every N steps with ``every=N``, or on demand),
``run.log_checkpoint(path, step)`` for a file the script saves itself, ``run.resume`` to
continue from the checkpoint named by ``AUDITOR_RESUME_FROM``; ``AUDITOR_STOP_AT`` ends the
process at that step's checkpoint (``auditor.record.checkpoint_io``, standard library).

Under ``audit record`` (and inside a rerun) the API attaches to the surrounding run instead
of creating one, through ``auditor.record.attached``, which needs only the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.core.version import __version__

__all__ = ["Run", "__version__", "seed_everything", "start_run"]

if TYPE_CHECKING:
    from auditor.record.tracker import Run


def start_run(name: str | None = None, **kwargs: Any) -> Any:
    """Record a run of this process (see ``auditor.record.tracker.start_run``), or attach
    to the surrounding ``audit record`` / rerun without importing auditor's dependencies."""
    from auditor.record.attached import attach

    attached = attach(kwargs.get("params"), kwargs.get("seed"), kwargs.get("deterministic", True))
    if attached is not None:
        return attached
    from auditor.record.tracker import start_run as standalone

    return standalone(name, **kwargs)


def seed_everything(seed: int, *, deterministic: bool = True) -> dict[str, Any]:
    """Seed random, numpy and torch, set torch's deterministic flags; return what was set."""
    from auditor.record.attached import seed_everything as seed_all

    return seed_all(seed, deterministic=deterministic)


def __getattr__(name: str) -> Any:
    # Lazy: `audit --help`, the probe and attached runs must not import the recorder.
    if name == "Run":
        from auditor.record.tracker import Run

        return Run
    raise AttributeError(name)
