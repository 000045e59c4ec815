"""The Python API inside a wrapped command: standard library only.

Under ``audit record`` (and inside a rerun's container) ``AUDITOR_RUN_ID`` and
``AUDITOR_PROBE_DIR`` are set, and ``auditor.start_run`` returns an ``AttachedRun`` that adds
to that run instead of creating a second one: params, seeds and artifact paths go to
``api-<pid>.json`` / ``artifacts.jsonl`` and metric points (exact IEEE bits) to
``metrics-<pid>.jsonl`` in the probe folder, which the recorder merges when the command
ends. Nothing here imports pydantic, SQLAlchemy or the rest of auditor (``errors.py``
imports nothing), so a rerun image needs only this package on its path, not auditor's
dependencies. ``MetricLogger`` is the logging both run objects share.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from auditor.core.errors import InputError  # imports nothing: safe inside a rerun image
from auditor.record.checkpoint_io import CheckpointMixin  # standard library only

FLUSH_POINTS = 1000
SEED_STATE: dict[str, Any] = {}
_SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


def seed_everything(seed: int, *, deterministic: bool = True) -> dict[str, Any]:
    """Seed random, numpy and torch (and CUDA), optionally switch torch to deterministic
    algorithms, and return (and remember for the active run) exactly what was set."""
    seeded = ["random"]
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
        seeded.append("numpy")
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        torch.manual_seed(seed)
        seeded.append("torch")
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
            seeded.append("cuda")
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    SEED_STATE.clear()
    SEED_STATE.update(seed=seed, seeded=seeded, deterministic=deterministic)
    return dict(SEED_STATE)


def _bits(value: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", value))[0])


def _param(key: str, value: Any) -> Any:
    """JSON-safe, and a value under a secret-looking key never leaves the process."""
    if any(word in key.lower() for word in _SECRET_KEYS):
        return "[REDACTED]"
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


class MetricLogger:
    """What every run object logs the same way: params, and metrics buffered as
    ``(name, step, value, time)`` tuples; ``_full()`` is called when a batch is full."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self._params: dict[str, Any] = dict(params or {})
        self._buffer: list[tuple[str, int, float, float]] = []
        self._steps: dict[str, int] = {}
        self._final: dict[str, float] = {}

    def _param(self, key: str, value: Any) -> Any:
        return _param(key, value)

    def _full(self) -> None:
        raise NotImplementedError

    def log_param(self, key: str, value: Any) -> None:
        """Record one hyperparameter (JSON-safe; values under secret-looking keys redacted)."""
        self._params[str(key)] = self._param(str(key), value)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record several hyperparameters."""
        for key, value in params.items():
            self.log_param(key, value)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record one metric value; ``step`` defaults to the next step of that metric."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"metric {name!r}: value {value!r} is not a number") from None
        if step is None:
            step = self._steps.get(name, -1) + 1
        self._steps[name] = step
        self._final[name] = number
        self._buffer.append((name, step, number, time.time()))
        if len(self._buffer) >= FLUSH_POINTS:
            self._full()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record several metrics at one step."""
        for name, value in metrics.items():
            self.log_metric(name, value, step)


class AttachedRun(MetricLogger, CheckpointMixin):
    """A run of the surrounding ``audit record`` (or rerun); same methods as ``Run``.
    Checkpoints are spooled into ``<probe>/checkpoints/step-…/`` (manifest last), where the
    recorder stores them when the command ends."""

    def __init__(self, run_id: str, probe_dir: Path) -> None:
        super().__init__()
        self.id = run_id
        self._probe = probe_dir
        self._closed = False

    def _spool_root(self) -> Path:
        return self._probe / "checkpoints"

    def _stored(self, folder: Path, step: int, kind: str, files: Mapping[str, Path]) -> None:
        pass  # the recorder reads the spool folder

    def _metrics_so_far(self) -> dict[str, tuple[int, float]]:
        return {k: (self._steps[k], v) for k, v in self._final.items()}

    def _full(self) -> None:
        self.flush()

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Ask the recorder to store a file produced by the run."""
        self._append("artifacts.jsonl", {"path": str(Path(path).resolve()), "name": name})

    def flush(self) -> None:
        """Write buffered metric points to the probe folder."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        lines = "".join(json.dumps([k, s, _bits(v), t]) + "\n" for k, s, v, t in batch)
        with open(self._probe / f"metrics-{os.getpid()}.jsonl", "a") as fh:
            fh.write(lines)

    def _append(self, name: str, data: Mapping[str, Any]) -> None:
        with open(self._probe / name, "a") as fh:
            fh.write(json.dumps(data) + "\n")

    def __enter__(self) -> AttachedRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.end()

    def end(self, status: str = "finished") -> None:
        """Flush, and leave params and seeds for the recorder (status is the recorder's)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.end)
        self.flush()
        self.wait_checkpoints()
        data = {"params": self._params, "seed": SEED_STATE.get("seed"),
                "seeded": SEED_STATE.get("seeded", []), "pid": os.getpid()}
        tmp = self._probe / f"api-{os.getpid()}.json.tmp"
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, tmp.with_suffix(""))


def attach(params: Mapping[str, Any] | None = None, seed: int | None = None,
           deterministic: bool = True) -> AttachedRun | None:
    """The attached run when running under ``audit record`` or a rerun, else None."""
    probe, run_id = os.environ.get("AUDITOR_PROBE_DIR"), os.environ.get("AUDITOR_RUN_ID")
    if not (probe and run_id):
        return None
    if seed is not None:
        seed_everything(seed, deterministic=deterministic)
    run = AttachedRun(run_id, Path(probe))
    run.log_params(params or {})
    atexit.register(run.end)  # a run the script never ends still leaves its params and seeds
    return run
