"""What checkpoints cost a training (issue 19): ``run.checkpoint`` for a 50 MB model, and
the recording overhead per step of the bundled checkpoint fixture.

    python bench/bench_checkpoint.py        # writes bench/results/checkpoint.json

1. A 50 MB fp32 model (5 x Linear(1580, 1580), 12.5 M parameters) with Adam state
   (another 100 MB): the time ``run.checkpoint(...)`` takes to return (the caller's thread:
   tensors streamed into the spool, no hashing), and the time until the background thread
   has hashed it, built the manifest and stored every file in a local store
   (``wait_checkpoints``); beside ``torch.save`` of the same state dicts and
   ``safetensors.torch.save_file`` of the model, in the same process. Median of 5.
2. The fixture's training loop (``fixtures/ckpt/train_ckpt.py``: tiny MLP, Adam, StepLR,
   a shuffled DataLoader with its own generator), 6,000 steps, three ways, interleaved and
   repeated 3 times (median): no recording; ``run.log_metric`` every step; and log_metric
   plus ``run.checkpoint(..., every=100)``, the background thread drained before the
   clock stops. Wall time and process CPU time (every thread) per step; on a shared,
   loaded machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "fixtures" / "ckpt"))


def _run(store_dir: str) -> Any:
    from auditor.core.schema import Command, Identity, RunRecord
    from auditor.record.tracker import Run
    from auditor.store import open_store

    store = open_store(store_dir)
    rec = RunRecord(identity=Identity(id="0" * 26, name="b", user="u", host="h",
                                      started_at=datetime.now(UTC)),
                    command=Command(argv=("x",), cwd="."))
    store.put_record(rec)
    return Run(rec, store=store, quiet=True)


def bench_50mb(repeats: int = 5) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1580, 1580) for _ in range(5)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1580)).sum().backward()
    opt.step()
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    out: dict[str, Any] = {"model_mb": round(model_mb, 1), "optimizer": "Adam (2 x model)"}
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
        run = _run(tmp)
        run.checkpoint(0, model=model)  # the one DataLoader scan of the process
        run.wait_checkpoints()
        step = 0
        for label, kwargs in (("model", {"model": model}),
                              ("model_and_adam", {"model": model, "optimizer": opt})):
            call, total = [], []
            for _ in range(repeats):
                step += 1
                t0 = time.perf_counter()
                run.checkpoint(step, **kwargs)
                t1 = time.perf_counter()
                run.wait_checkpoints()
                t2 = time.perf_counter()
                call.append(t1 - t0)
                total.append(t2 - t0)
            out[f"{label}_call_s"] = round(statistics.median(call), 4)
            out[f"{label}_stored_s"] = round(statistics.median(total), 4)
        ref_save, ref_st = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()},
                       Path(tmp) / "ref.pt")
            ref_save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            save_file(model.state_dict(), str(Path(tmp) / "ref.safetensors"))
            ref_st.append(time.perf_counter() - t0)
        out["torch_save_model_and_adam_s"] = round(statistics.median(ref_save), 4)
        out["safetensors_save_file_model_s"] = round(statistics.median(ref_st), 4)
        run.end()
        stored = run.record.checkpoints
        out["checkpoints_stored"] = len(stored)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _loop(steps: int, mode: str, store_dir: str) -> tuple[float, float]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from train_ckpt import BATCH, synthetic

    import auditor.record.attached as attached

    attached.seed_everything(0, deterministic=True)
    x, y = synthetic()
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    run = _run(store_dir) if mode != "none" else None
    step = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            step += 1
            if run is not None:
                run.log_metric("loss", loss.item(), step=step)
                if mode == "checkpoints":
                    run.checkpoint(step, model=model, optimizer=opt, scheduler=sched,
                                   generators=[gen], every=100)
            elif mode == "none":
                loss.item()  # the same sync the recorded loops do
        sched.step()
    if run is not None:
        run.flush()
        run.wait_checkpoints()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if run is not None:
        run.end()
    return elapsed, cpu


def bench_fixture(steps: int = 6000, repeats: int = 3) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    modes = ("none", "log_metric", "checkpoints")
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
        _loop(200, "none", tmp)  # warm up
        for r in range(repeats):
            for mode in modes:
                w, c = _loop(steps, mode, str(Path(tmp) / f"{mode}{r}"))
                wall[mode].append(w)
                cpu[mode].append(c)
    out: dict[str, Any] = {"steps": steps, "checkpoint_every": 100,
                           "checkpoints_per_run": steps // 100, "torch_threads": 1}
    for label, series in (("wall", wall), ("cpu", cpu)):
        med = {m: statistics.median(v) for m, v in series.items()}
        for m in modes:
            out[f"{label}_step_ms_{m}"] = round(med[m] / steps * 1e3, 4)
        out[f"{label}_overhead_pct_checkpoints_vs_log_metric"] = round(
            100 * (med["checkpoints"] - med["log_metric"]) / med["log_metric"], 2)
        out[f"{label}_overhead_pct_recording_vs_none"] = round(
            100 * (med["checkpoints"] - med["none"]) / med["none"], 2)
        out[f"{label}_runs_s"] = {m: [round(t, 3) for t in v] for m, v in series.items()}
    out.update(_per_checkpoint())
    step_cpu = statistics.median(cpu["log_metric"]) / steps
    out["computed_overhead_pct_per_step"] = round(
        100 * out["checkpoint_cpu_ms_total"] / 1e3 / (100 * step_cpu), 2)
    out["computed_overhead_pct_caller_thread"] = round(
        100 * out["checkpoint_cpu_ms_caller"] / 1e3 / (100 * step_cpu), 2)
    out["target"] = "< 2% of step time (checkpoints vs log_metric alone)"
    return out


def _per_checkpoint(n: int = 100) -> dict[str, float]:
    """CPU per checkpoint of the fixture's state, measured directly (the loop totals above
    differ by less than this machine's noise): the caller's thread (``thread_time`` around
    ``run.checkpoint``), the background thread (``thread_time`` around each job it runs)
    and ``run.end()``'s share. One training step between checkpoints, outside both clocks,
    so every checkpoint stores new weights and optimizer state (an unchanged model would
    only be deduplicated)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from train_ckpt import BATCH, synthetic

    import auditor.record.checkpoint_io as cio

    x, y = synthetic()
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)

    def one_step() -> None:
        xb, yb = next(iter(loader))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    worker: list[float] = []
    put = cio.Worker.put

    def timed_put(self: Any, job: Any) -> None:
        def timed() -> None:
            t0 = time.thread_time()
            try:
                job()
            finally:
                worker.append(time.thread_time() - t0)
        put(self, timed)

    cio.Worker.put = timed_put  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
            run = _run(tmp)
            one_step()
            run.checkpoint(0, model=model, optimizer=opt, scheduler=sched, generators=[gen])
            run.wait_checkpoints()
            worker.clear()
            caller = []
            for i in range(1, n + 1):
                one_step()
                t0 = time.thread_time()
                run.checkpoint(i, model=model, optimizer=opt, scheduler=sched, generators=[gen])
                caller.append(time.thread_time() - t0)
                run.wait_checkpoints()
            t0 = time.thread_time()
            run.end()
            end_ms = (time.thread_time() - t0) * 1e3
    finally:
        cio.Worker.put = put  # type: ignore[method-assign]
    caller_ms = statistics.median(caller) * 1e3
    worker_ms = statistics.median(worker) * 1e3
    return {"checkpoint_cpu_ms_caller": round(caller_ms, 3),
            "checkpoint_cpu_ms_background": round(worker_ms, 3),
            "checkpoint_cpu_ms_total": round(caller_ms + worker_ms, 3),
            "run_end_cpu_ms_with_checkpoints": round(end_ms, 1),
            "checkpoints_measured": n,
            "checkpoint_bytes": sum(p.numel() * 4 for p in model.parameters()) * 3}


def main() -> None:
    os.environ["AUDITOR_QUIET"] = "1"
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version()},
        "checkpoint_50mb": bench_50mb(),
        "fixture_per_step": bench_fixture(),
    }
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
