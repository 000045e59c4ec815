"""The Python API for a standalone run: ``Run`` and its ``start_run``.

``with auditor.start_run(name=..., params=cfg, seed=42) as run:`` records a run of the
current process into the store. Under ``audit record`` or a rerun the same call attaches
to the surrounding run instead (``record/attached.py``, standard library only).

A run not ended by its ``with`` block or ``run.end()`` ends when the interpreter exits
(``atexit``): "finished", or "failed"/"killed" after an uncaught exception, with its seeds,
determinism switches and metrics, never left "crashed" and empty. When it ends it prints
``recorded run <id> (<status>)`` on stderr, as ``audit record`` does, unless ``quiet=True``
or ``AUDITOR_QUIET=1``.

``log_metric`` is buffered: it appends a tuple; full batches of 1,000 points go to a
background writer thread (sqlite3 releases the GIL while it writes), so a call costs well
under a microsecond; points keep their exact float bits.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from auditor.core.schema import (
    ArtifactRef,
    CheckpointKind,
    CheckpointRef,
    MetricsSummary,
    RunRecord,
    Seeds,
)
from auditor.record import session
from auditor.record.attached import (
    SEED_STATE,
    AttachedRun,
    MetricLogger,
    attach,
    seed_everything,
)
from auditor.record.capture import determinism as det
from auditor.record.capture.secrets import redact_params, redacted_env_value
from auditor.record.checkpoint_io import MANIFEST, CheckpointMixin
from auditor.record.outputs import store_artifact
from auditor.store import RunStore, open_store, store_dir_of

FLUSH_POINTS = 1000
__all__ = ["AttachedRun", "Run", "seed_everything", "start_run"]


class Run(MetricLogger, CheckpointMixin):
    """A run being recorded. Use as a context manager; see ``start_run``. Checkpoints are
    spooled under the store's local folder, then stored as blobs by a background thread."""

    def __init__(self, record: RunRecord, *, store: RunStore, seed: int | None = None,
                 quiet: bool = False) -> None:
        super().__init__(record.params)
        self._quiet = quiet
        self.record = record
        self.id = record.identity.id
        self._store = store
        self._points = 0
        self._writer: _Writer | None = None
        self._artifacts: list[ArtifactRef] = []
        self._seed: tuple[int | None, list[str]] = (seed, [])
        self._closed = False
        self._checkpoints: list[CheckpointRef] = []
        self._ckpt_error: str | None = None
        self._ckpt_artifacts: list[ArtifactRef] = []

    # -- checkpoints (checkpoint, log_checkpoint, resume come from CheckpointMixin) ----
    def _spool_root(self) -> Path:
        root = self._store.blobs.root / "spool" / self.id
        if not root.is_dir():
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root

    def _stored(self, folder: Path, step: int, kind: str, files: Mapping[str, Path]) -> None:
        """In the checkpoint thread: every file and the manifest into the blob store."""
        stored = [(name, *self._store.blobs.put_file(path)) for name, path in files.items()]
        self._note_checkpoint(folder.name, step, kind, stored,
                              self._store.blobs.put_file(folder / MANIFEST))
        shutil.rmtree(folder, ignore_errors=True)

    def _stored_bytes(self, folder: Path, step: int, kind: str, files: Mapping[str, bytes],
                      manifest: bytes) -> None:
        """In the checkpoint thread: a small checkpoint's bytes straight into the blob
        store, all of its objects behind one durability barrier (no spool folder)."""
        *put, manifest_put = self._store.blobs.put_many([*files.values(), manifest])
        self._note_checkpoint(folder.name, step, kind,
                              [(name, sha, n) for name, (sha, n) in zip(files, put, strict=True)],
                              manifest_put)

    def _note_checkpoint(self, label: str, step: int, kind: str,
                         stored: list[tuple[str, str, int]], manifest: tuple[str, int]) -> None:
        prefix = f"checkpoints/{label}"
        for name, sha, n in stored:
            self._ckpt_artifacts.append(ArtifactRef(name=f"{prefix}/{name}", sha256=sha,
                                                    size=n, kind="checkpoint"))
        self._ckpt_artifacts.append(ArtifactRef(name=f"{prefix}/{MANIFEST}", sha256=manifest[0],
                                                size=manifest[1], kind="checkpoint"))
        self._checkpoints.append(CheckpointRef(step=step, manifest=manifest[0],
                                               kind=cast(CheckpointKind, kind),
                                               size=sum(n for _, _, n in stored),
                                               files=len(stored)))

    def _metrics_so_far(self) -> dict[str, tuple[int, float]]:
        return {k: (self._steps[k], v) for k, v in self._final.items()}

    # -- logging (log_param(s) and log_metric(s) come from MetricLogger) ---------------
    def _param(self, key: str, value: Any) -> Any:
        return redact_params({key: _jsonable(value)})[key]

    def _full(self) -> None:
        self._hand_off()

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Store a file produced by the run (weights, predictions) as an output artifact."""
        path = Path(path)
        self._artifacts.append(store_artifact(self._store.blobs, path, name or path.name))

    def _hand_off(self) -> None:
        """Give a full batch to the writer thread (sqlite3 releases the GIL while writing)."""
        batch, self._buffer = self._buffer, []
        self._points += len(batch)
        if self._writer is None:
            self._writer = _Writer(self._write_batch)
        self._writer.put(batch)

    def flush(self) -> None:
        """Write every buffered metric point now and wait until it is stored."""
        if self._buffer:
            self._hand_off()
        if self._writer is not None:
            self._writer.drain()

    def _write_batch(self, batch: list[tuple[str, int, float, float]]) -> None:
        self._store.add_metrics(self.id, batch)

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status = (
            "finished"
            if exc_type is None
            else ("killed" if exc_type is KeyboardInterrupt else "failed")
        )
        self.end(status)

    def end(self, status: str = "finished") -> None:
        """Flush and close the run (called by the context manager)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self.flush()
        try:
            self.wait_checkpoints()
        except Exception as exc:  # noqa: BLE001 - the run is still stored, the loss named
            self._ckpt_error = str(exc)
            print(f"auditor: checkpoints not stored: {exc}", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(self._store.blobs.root / "spool" / self.id, ignore_errors=True)
        self.record = self._finish(status)
        if not self._quiet:
            print(f"auditor: recorded run {self.id} ({status}); `audit show {self.id}` shows it",
                  file=sys.stderr, flush=True)

    def _at_exit(self) -> None:
        """End a run its script never ended, as the interpreter exits."""
        error = getattr(sys, "last_value", None)  # set when an uncaught exception ended it
        try:
            self.end("finished" if error is None else
                     "killed" if isinstance(error, KeyboardInterrupt) else "failed")
        except Exception as exc:  # noqa: BLE001 - one line at exit, never a traceback
            print(f"auditor: run {self.id} could not be ended at exit: {exc}",
                  file=sys.stderr, flush=True)

    def _finish(self, status: str) -> RunRecord:
        env = dict(os.environ)
        determinism, torch_seed = det.observe_self(env)
        from auditor.record.probe.sitecustomize import observe

        environment = self.record.environment.model_copy(
            update={
                "accelerators": session.with_cuda_stack(
                    self.record.environment.accelerators, observe()
                )
            }
        )
        seed, seeded = (SEED_STATE.get("seed"), SEED_STATE.get("seeded", [])) if SEED_STATE \
            else self._seed
        seeds = Seeds(
            seed=seed,
            seeded=tuple(seeded),
            torch_initial_seed=torch_seed,
            pythonhashseed=redacted_env_value("PYTHONHASHSEED", env.get("PYTHONHASHSEED")),
        )
        metrics = MetricsSummary(final=self._final, points=self._points)
        updates = {
            "params": self._params,
            "seeds": seeds,
            "determinism": determinism,
            "environment": environment,
            "metrics": metrics,
            "artifacts": (*self.record.artifacts, *self._artifacts, *self._ckpt_artifacts),
            "checkpoints": tuple(sorted(self._checkpoints, key=lambda c: (c.step, c.kind))),
        }
        if self._ckpt_error:
            updates["not_captured"] = {**self.record.not_captured,
                                       "checkpoints": f"not all stored: {self._ckpt_error}"}
        return session.finish(
            self._store,
            self.record,
            status=status,
            exit_code=0 if status == "finished" else 1,
            updates=updates,
        )


class _Writer:
    """One background thread that stores metric batches in order; errors surface on drain."""

    def __init__(self, write: Callable[[list[tuple[str, int, float, float]]], None]) -> None:
        self._queue: queue.Queue[list[tuple[str, int, float, float]] | None] = queue.Queue()
        self._write = write
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="auditor-metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def put(self, batch: list[tuple[str, int, float, float]]) -> None:
        """Queue one batch."""
        self._queue.put(batch)

    def drain(self) -> None:
        """Wait until every queued batch is stored; raise the first write error."""
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def start_run(
    name: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    deterministic: bool = True,
    store: str | None = None,
    inputs: list[str | Path] | None = None,
    tags: list[str] | None = None,
    quiet: bool | None = None,
) -> Run | AttachedRun:
    """Start recording a run of this process (or attach to the surrounding ``audit record``
    or rerun). It ends with its ``with`` block, ``run.end()`` or the interpreter, then
    prints its id on stderr unless ``quiet`` (default: ``AUDITOR_QUIET=1``)."""
    attached = attach(params, seed, deterministic)
    if attached is not None:
        return attached
    if seed is not None:
        seed_everything(seed, deterministic=deterministic)
    opened = open_store(store)
    plan = session.Plan(name=name, argv=_own_argv(), cwd=Path.cwd(), mode="api",
                        inputs=[Path(p) for p in inputs or []], tags=tags or [],
                        python=sys.executable)
    if quiet is None:
        quiet = os.environ.get("AUDITOR_QUIET", "") not in ("", "0")
    run = Run(session.begin(opened, plan, store_dir_of(opened)), store=opened, seed=seed,
              quiet=quiet)
    run.log_params(params or {})
    atexit.register(run._at_exit)
    return run


def _own_argv() -> list[str]:
    return [sys.executable, *sys.argv] if sys.argv and sys.argv[0] else [sys.executable]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
        return value
    except (TypeError, ValueError):
        return repr(value)
