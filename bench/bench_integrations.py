"""Record overhead per training step of the Lightning and Hugging Face integrations.

For each framework the same tiny training (CPU, a 4→16→3 MLP for Lightning, a one-layer
BERT from a config for the Trainer; a metric logged at every step, no checkpoints) runs
``--steps`` steps three ways: without auditor, with the integration attached to a run as
under ``audit record`` (``AUDITOR_PROBE_DIR``/``AUDITOR_RUN_ID`` set: points go to the
probe folder), and with the integration opening a standalone run (a fresh SQLite store).
The plain loop (a hand-written torch loop, the same MLP, ``run.log_metric`` each step) is
measured the same way for reference. Each (case, mode) runs ``--repeats`` times,
interleaved, in this process after one warm-up; the median per-step time is reported, and
the overhead is the median with auditor minus the median without it. The run is opened
before the steps are timed (``run_open_s``: once per run; a standalone run captures the
code, the environment and the lock there). On a shared machine
that difference is within the noise of a training step, so the cost of the hooks
themselves is also timed alone (``hook_us_per_logged_step``: 20,000 calls of what the
integration runs at each logged step, median of 3).

Writes ``bench/results/integrations.json``. Usage:
``python bench/bench_integrations.py [--steps 300] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "integrations.json"
MODES = ("none", "attached", "standalone")


def _mode(mode: str, folder: Path) -> float:
    """Point auditor at a probe folder (attached) or a fresh store (standalone) and open
    the process's run there, outside the timed steps; the seconds that took."""
    from auditor.integrations import _run

    _run._RUN = None
    for key in ("AUDITOR_PROBE_DIR", "AUDITOR_RUN_ID"):
        os.environ.pop(key, None)
    os.environ["AUDITOR_QUIET"] = "1"
    if mode == "attached":
        probe = Path(tempfile.mkdtemp(dir=folder))
        os.environ.update(AUDITOR_PROBE_DIR=str(probe), AUDITOR_RUN_ID="bench")
    elif mode == "standalone":
        os.environ["AUDITOR_STORE"] = tempfile.mkdtemp(dir=folder)
    if mode == "none":
        return 0.0
    start = time.perf_counter()
    _run.process_run("bench")  # the integration records into this run: opened once
    return time.perf_counter() - start


def _end() -> None:
    from auditor.integrations import _run

    if _run._RUN is not None:
        _run._RUN.end()
        _run._RUN = None


def plain(steps: int, mode: str) -> float:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    run = None
    if mode != "none":
        from auditor.integrations import _run

        run = _run.process_run("bench-plain")
    start = time.perf_counter()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if run is not None:
            run.log_metric("loss", loss.item(), step)
    if run is not None:
        run.flush()
    return time.perf_counter() - start


def lightning_fit(steps: int, mode: str) -> float:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from auditor.integrations.lightning import AuditorLogger

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                           torch.nn.Linear(16, 3))

        def training_step(self, batch: Any, idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32 * steps, 4), torch.randint(0, 3, (32 * steps,)))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1,
                        logger=AuditorLogger() if mode != "none" else False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)
    loader = DataLoader(data, batch_size=32)
    start = time.perf_counter()
    trainer.fit(MLP(), loader)
    return time.perf_counter() - start


def hf_train(steps: int, mode: str) -> float:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from auditor.integrations.transformers import AuditorCallback

    class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 8 * steps

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": torch.arange(8) % 50, "labels": torch.tensor(i % 2)}

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, num_labels=2)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, logging_steps=1,
                                 save_strategy="no", per_device_train_batch_size=8,
                                 report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
        trainer = Trainer(model=BertForSequenceClassification(config), args=args,
                          train_dataset=Tokens(),
                          callbacks=[AuditorCallback()] if mode != "none" else [])
        trainer.remove_callback(PrinterCallback)  # no line printed per step in any mode
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def hook_cost(case: str, mode: str, calls: int = 20_000) -> float:
    """Microseconds per call of what the integration runs at each logged step, alone:
    Lightning's ``log_metrics`` with a tensor loss and the epoch, the Trainer callback's
    ``on_log`` with the four numbers the Trainer logs, ``run.log_metric`` for the loop."""
    import torch

    from auditor.integrations import _run

    if case == "lightning":
        from auditor.integrations.lightning import AuditorLogger

        logger = AuditorLogger()
        loss = torch.tensor(0.69)

        def call(step: int) -> None:
            logger.log_metrics({"train_loss": loss, "epoch": 0.0}, step)
    elif case == "transformers":
        from transformers import TrainerState, TrainingArguments

        from auditor.integrations.transformers import AuditorCallback

        callback = AuditorCallback()
        state = TrainerState(is_world_process_zero=True)
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, report_to="none", use_cpu=True)

        def call(step: int) -> None:
            state.global_step = step
            callback.on_log(args, state, None, logs={"loss": 0.69, "grad_norm": 0.2,
                                                     "learning_rate": 1e-3, "epoch": 0.5})
    else:
        run = _run.process_run("bench-hook")

        def call(step: int) -> None:
            run.log_metric("loss", 0.69, step)
    start = time.perf_counter()
    for step in range(calls):
        call(step)
    _run.process_run().flush()
    return (time.perf_counter() - start) / calls * 1e6


CASES: dict[str, Callable[[int, str], float]] = {
    "plain-loop": plain, "lightning": lightning_fit, "transformers": hf_train}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)  # a tiny model: one thread, so a shared machine adds less noise
    import logging

    logging.disable(logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, fn in CASES.items():
            times: dict[str, list[float]] = {m: [] for m in MODES}
            opens: dict[str, list[float]] = {m: [] for m in MODES[1:]}
            for rep in range(opts.repeats + 1):
                for mode in MODES:
                    opened = _mode(mode, Path(tmp))
                    seconds = fn(opts.steps, mode)
                    _end()
                    if rep:  # the first round warms imports and caches
                        times[mode].append(seconds)
                        if mode != "none":
                            opens[mode].append(opened)
            per_step = {m: statistics.median(t) / opts.steps * 1e6 for m, t in times.items()}
            hooks = {}
            for mode in MODES[1:]:
                _mode(mode, Path(tmp))
                hooks[mode] = round(statistics.median(
                    hook_cost(case, mode) for _ in range(3)), 2)
                _end()
            row = {"case": case, "steps": opts.steps, "repeats": opts.repeats,
                   "us_per_step": {m: round(v, 1) for m, v in per_step.items()},
                   "overhead_us_per_step": {m: round(per_step[m] - per_step["none"], 1)
                                            for m in MODES[1:]},
                   "hook_us_per_logged_step": hooks,
                   "run_open_s": {m: round(statistics.median(t), 3) for m, t in opens.items()},
                   "overhead_percent": {m: round(100 * (per_step[m] / per_step["none"] - 1), 1)
                                        for m in MODES[1:]},
                   "spread_us_per_step": {m: round((max(t) - min(t)) / opts.steps * 1e6, 1)
                                          for m, t in times.items()}}
            print(json.dumps(row), flush=True)
            results.append(row)
    import lightning
    import transformers

    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "lightning": lightning.__version__,
                    "transformers": transformers.__version__,
                    "note": "shared 2-core machine: spread is the max-min of the repeats"},
        "results": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
