"""PyTorch Lightning: ``AuditorLogger``, one argument to the ``Trainer`` and nothing else.

::

    import lightning as L
    from auditor.integrations.lightning import AuditorLogger

    L.seed_everything(0, workers=True)
    trainer = L.Trainer(deterministic=True, max_epochs=3, logger=AuditorLogger())
    trainer.fit(model, train_dataloaders=loader)

What it records, into the run ``audit record`` (or a rerun) opened, else into a standalone
run of the script (see ``auditor.integrations``):

- params, named by their source: the module's (and datamodule's) ``save_hyperparameters``
  as ``hparams.<name>``, the Trainer's settings as ``trainer.<name>`` (``max_epochs``,
  ``deterministic``, ``precision``, ``ckpt_path`` of a resumed fit, ...);
- the seed Lightning's ``seed_everything`` set (``PL_GLOBAL_SEED``; ``workers`` when
  ``workers=True``), unless ``auditor.seed_everything`` set one;
- every metric ``self.log`` sends, at Lightning's step;
- every checkpoint ``ModelCheckpoint`` saves, through ``run.log_checkpoint(path, step)``;
- the determinism switches ``Trainer(deterministic=True)`` turns on are read from torch
  by the recorder, as for any run.

The checkpoint folder is ``<save_dir>/<name>/<version>/checkpoints`` with a relative
``save_dir`` (``.`` by default) and a fixed version, so the paths ``ModelCheckpoint`` keeps
inside each checkpoint are the same in the rerun's tree and the checkpoint bytes can
reproduce bitwise (Lightning's default logger uses a numbered, absolute folder).

Hooks run on global rank 0 only (Lightning's ``rank_zero_only``). The Trainer learns the
module (``log_graph``, which Lightning calls with the module after the hparams); no
callback is needed. Supported: lightning ``>=2.0,<2.7`` (tested with 2.6.6).
"""

from __future__ import annotations

import os
import weakref
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import lightning

from auditor.integrations import _run

SUPPORTED = ("2.0", "2.7")  # >=2.0,<2.7; checked before anything else of Lightning's loads
_run.check_version("auditor.integrations.lightning", "lightning", lightning.__version__,
                   *SUPPORTED)

from lightning.fabric.loggers.logger import rank_zero_experiment  # noqa: E402
from lightning.pytorch.loggers.logger import Logger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402

# The Trainer's settings recorded as params (attribute of the Trainer -> param name).
TRAINER_SETTINGS = ("max_epochs", "min_epochs", "max_steps", "min_steps",
                    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
                    "limit_train_batches", "limit_val_batches", "val_check_interval",
                    "check_val_every_n_epoch", "log_every_n_steps", "precision",
                    "num_nodes", "num_devices", "world_size", "ckpt_path")


class AuditorLogger(Logger):
    """A Lightning ``Logger`` recording into auditor's run (see the module's docstring).

    ``name`` names a standalone run (and the checkpoint folder's parent); ``store`` is the
    standalone run's store (default: ``AUDITOR_STORE`` / ``.auditor``); ``run`` records into
    a run the script opened itself with ``auditor.start_run``; ``save_dir`` and
    ``version`` place the checkpoints (keep them relative and fixed for a bitwise rerun).
    """

    def __init__(self, name: str = "lightning_logs", *, save_dir: str = ".",
                 version: str = "auditor", store: str | None = None, run: Any = None,
                 tags: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._name, self._save_dir, self._version = name, save_dir, version
        self._store, self._tags = store, tags
        self._run: Any = run
        self._trainer: Any = None  # a weak reference, set by log_graph

    # -- what Lightning reads -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The auditor run (attached or standalone) this logger records into."""
        if self._run is None:
            self._run = _run.process_run(self._name, store=self._store, tags=self._tags)
        return self._run

    # -- what Lightning calls -----------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any,
                        **kwargs: Any) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.log_params(_run.params_from("hparams", values))

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning calls this with the module once per fit, after the hparams: the
        Trainer's settings and Lightning's seed are recorded here."""
        trainer = getattr(model, "_trainer", None)
        if trainer is None:
            return
        self._trainer = weakref.ref(trainer)
        self.experiment.log_params(_run.params_from("trainer", trainer_settings(trainer)))
        seed = os.environ.get("PL_GLOBAL_SEED")
        workers = os.environ.get("PL_SEED_WORKERS") == "1"
        _run.note_seed(int(seed) if seed and seed.lstrip("-").isdigit() else None,
                       ["random", "numpy", "torch", *(["workers"] if workers else [])],
                       deterministic=bool(_deterministic(trainer)))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = {k: v for k, v in ((k, _run.number(v)) for k, v in metrics.items())
                  if v is not None}
        self.experiment.log_metrics(values, step)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        path = (getattr(checkpoint_callback, "_last_checkpoint_saved", None)
                or checkpoint_callback.last_model_path or checkpoint_callback.best_model_path)
        trainer = self._trainer() if self._trainer is not None else None
        step = getattr(checkpoint_callback, "_last_global_step_saved", None)
        if step is None and trainer is not None:
            step = trainer.global_step
        if path and step is not None and os.path.isfile(path):
            _run.log_checkpoint(self.experiment, path, step)

    @rank_zero_only
    def save(self) -> None:
        """Nothing: Lightning calls this after every ``log_metrics``, and the run buffers
        its points itself (a batch of 1,000 at a time; ``finalize`` and the run's end flush
        the rest). Flushing here cost a store transaction per step (bench_integrations)."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush; a standalone run this logger opened ends as ``failed`` when the fit
        failed, else at interpreter exit (a script may fit again into the same run)."""
        if self._run is None:
            return
        self._run.flush()
        if status == "failed" and not hasattr(self._run, "_probe"):
            self._run.end("failed")


def trainer_settings(trainer: Any) -> dict[str, Any]:
    """The Trainer's settings worth a param, read where Lightning keeps them."""
    found: dict[str, Any] = {}
    for key in TRAINER_SETTINGS:
        try:
            value = getattr(trainer, key)
        except Exception:  # noqa: BLE001 - a property that needs a later stage: not recorded
            continue
        found[key] = value
    if isinstance(found.get("ckpt_path"), str):  # resolved absolute: named from the cwd
        found["ckpt_path"] = _run.relative(found["ckpt_path"])
    found["deterministic"] = _deterministic(trainer)
    found["benchmark"] = _benchmark()
    return found


def _deterministic(trainer: Any) -> bool:
    """What ``Trainer(deterministic=…)`` left switched on (Lightning keeps no attribute)."""
    import torch

    return bool(torch.are_deterministic_algorithms_enabled())


def _benchmark() -> bool:
    import torch

    return bool(torch.backends.cudnn.benchmark)
