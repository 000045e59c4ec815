"""What both integrations share: the process's one run, seeds a framework set, checkpoints,
params named by their source, and the supported-version check.

Standard library only at import (the rerun mounts the ``auditor`` package without its
dependencies): the standalone recorder (``record.tracker``, pydantic, SQLAlchemy) is
imported only when no ``audit record`` or rerun surrounds the script.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from auditor.core.errors import InputError
from auditor.record.attached import SEED_STATE, attach

MAX_PARAMS = 1_000  # params one integration records from one source (a config can be huge)

_RUN: Any = None  # the process's run: attached or standalone, shared by every trainer


def process_run(name: str | None = None, *, store: str | None = None,
                tags: Iterable[str] = ()) -> Any:
    """The run this process records into: the surrounding ``audit record``'s or rerun's
    (attached), else a standalone run opened now (it ends at interpreter exit, printing
    its id). Every caller in the process gets the same run."""
    global _RUN
    if _RUN is None or getattr(_RUN, "_closed", False):
        attached = attach()
        if attached is not None:
            _RUN = attached
        else:
            from auditor.record.tracker import start_run

            _RUN = start_run(name, store=store, tags=list(tags))
    return _RUN


def note_seed(seed: int | None, seeded: Iterable[str], *, deterministic: bool) -> None:
    """What a framework's own seeding set (Lightning's ``seed_everything``, the HF Trainer's
    ``set_seed``), for the run's record, unless ``auditor.seed_everything`` said already."""
    if seed is None or SEED_STATE.get("seed") is not None:
        return
    SEED_STATE.update(seed=int(seed), seeded=list(seeded), deterministic=deterministic)


def log_checkpoint(run: Any, path: str | os.PathLike[str], step: int) -> None:
    """Register a checkpoint file the framework wrote, as the checkpoint API defines it
    (a step not after the last registered one is skipped there: ``last.ckpt`` beside the
    epoch's checkpoint)."""
    run.log_checkpoint(Path(path), int(step))


def params_from(source: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` flattened (nested mappings joined by dots) and named by their source
    (``trainer.max_epochs``, ``args.learning_rate``); JSON-unsafe values as their ``repr``;
    at most ``MAX_PARAMS``."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [(f"{source}.{k}", v) for k, v in values.items()]
    while stack and len(out) < MAX_PARAMS:
        key, value = stack.pop(0)
        if isinstance(value, Mapping) and value:
            stack[:0] = [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out[key] = _plain(value)
    return out


def relative(path: str) -> str:
    """A path under the working directory relative to it (the rerun's tree is elsewhere:
    a param naming the original's absolute path would differ for no reason)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return path


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple) and all(
            v is None or isinstance(v, bool | int | float | str) for v in value):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # a 0-d tensor or numpy scalar
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _plain(item())
    text = getattr(value, "value", None)  # an Enum (HF's IntervalStrategy, ...)
    if isinstance(text, str | int | float | bool):
        return text
    return repr(value)


def number(value: Any) -> float | None:
    """A metric value as a float (tensors and numpy scalars too), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    return None


def version_tuple(text: str) -> tuple[int, ...]:
    """``2.6.6`` → (2, 6, 6); ``5.0.0rc1`` → (5, 0, 0): the leading numbers only."""
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def unsupported(integration: str, package: str, found: str, low: str, high: str) -> str | None:
    """The one-line message when ``found`` is outside ``>=low,<high``, else None."""
    have = version_tuple(found)
    if have and version_tuple(low) <= have < version_tuple(high):
        return None
    return (f"{integration} supports {package} >={low},<{high}; this environment has "
            f"{package} {found} (install a supported version, e.g. pip install "
            f"'{package}>={low},<{high}')")


def check_version(integration: str, package: str, found: str, low: str, high: str) -> None:
    """Stop the training script with one line and exit 2 (bad input) when the framework's
    version is not supported: before any step is spent on a run that cannot be recorded."""
    message = unsupported(integration, package, found, low, high)
    if message is not None:
        fail(InputError(message))


def fail(error: InputError) -> NoReturn:
    """One line on stderr, ``auditor: error: …``, and the error's exit code (the API's way
    of failing inside a training script: no traceback through the framework's loop)."""
    print(f"auditor: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(error.exit_code)
