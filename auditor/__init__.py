"""auditor: a reproducibility auditor and re-run verifier for deep-learning training.

Public Python API::

    import auditor
    auditor.seed_everything(42, deterministic=True)
    with auditor.start_run(name="mlp", params=cfg, seed=42) as run:
        run.log_metric("loss", 0.41, step=3)
        run.log_artifact("model.safetensors")

Under ``audit record`` the API attaches to the wrapping run instead of creating one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "seed_everything", "start_run"]

if TYPE_CHECKING:
    from auditor.record.tracker import Run, seed_everything, start_run


def __getattr__(name: str) -> Any:
    # Lazy: `audit --help` and the probe must not pay for importing the recorder.
    if name in ("Run", "seed_everything", "start_run"):
        from auditor.record import tracker

        return getattr(tracker, name)
    raise AttributeError(name)
