"""Hugging Face: ``AuditorCallback``, one callback given to the ``Trainer``.

::

    from transformers import Trainer, TrainingArguments
    from auditor.integrations.transformers import AuditorCallback

    args = TrainingArguments(output_dir="out", seed=0, report_to="none", save_steps=4)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[AuditorCallback()]).train()

What it records, into the run ``audit record`` (or a rerun) opened, else into a standalone
run of the script (see ``auditor.integrations``):

- ``on_train_begin``: the ``TrainingArguments`` as ``args.<name>`` (``to_dict()``: tokens
  already masked by transformers) and the model's config as ``model.<name>``; the seed the
  Trainer set (``args.seed``; ``full_determinism`` as the determinism request); the step a
  resumed training starts from as ``trainer.resumed_from_step``;
- ``on_log``: every number logged, at the Trainer's global step, except the timings
  (``*_runtime``, ``*_per_second``), which never reproduce;
- ``on_save``: the checkpoint's weights (``checkpoint-<step>/model.safetensors``) through
  ``run.log_checkpoint(path, step)``;
- ``on_train_end``: flushes; a standalone run ends at interpreter exit, so a script that
  trains again (a resume) stays one run.

Everything runs on the main process only (``state.is_world_process_zero``). Supported:
transformers ``>=4.46,<6`` (tested with 5.25.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers

from auditor.integrations import _run

SUPPORTED = ("4.46", "6")  # >=4.46,<6; checked before anything else of transformers loads
_run.check_version("auditor.integrations.transformers", "transformers",
                   transformers.__version__, *SUPPORTED)

from transformers import TrainerCallback  # noqa: E402

TIMING_SUFFIXES = ("_runtime", "_per_second")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")


class AuditorCallback(TrainerCallback):
    """A ``TrainerCallback`` recording into auditor's run (see the module's docstring).

    ``name`` names a standalone run; ``store`` is its store (default ``AUDITOR_STORE`` /
    ``.auditor``); ``run`` records into a run the script opened with ``auditor.start_run``.
    """

    def __init__(self, name: str | None = None, *, store: str | None = None,
                 run: Any = None, tags: tuple[str, ...] = ()) -> None:
        self._name, self._store, self._tags = name, store, tags
        self._run: Any = run

    @property
    def run(self) -> Any:
        """The auditor run (attached or standalone) this callback records into."""
        if self._run is None:
            self._run = _run.process_run(self._name, store=self._store, tags=self._tags)
        return self._run

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        params = _run.params_from("args", args.to_dict())
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            params.update(_run.params_from("model", config.to_dict()))
        if state.global_step:
            params["trainer.resumed_from_step"] = int(state.global_step)
        self.run.log_params(params)
        _run.note_seed(args.seed, ["random", "numpy", "torch"],
                       deterministic=bool(getattr(args, "full_determinism", False)))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        values = {k: v for k, v in ((k, _run.number(v)) for k, v in logs.items()
                                    if not k.endswith(TIMING_SUFFIXES)) if v is not None}
        self.run.log_metrics(values, int(state.global_step))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                _run.log_checkpoint(self.run, folder / name, int(state.global_step))
                return

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self._run is None:
            return
        self._run.flush()


__all__ = ["AuditorCallback"]
