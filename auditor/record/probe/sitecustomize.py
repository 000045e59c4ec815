"""auditor's in-process probe, put on the PYTHONPATH of wrapped commands.

It must run under any interpreter, so it imports nothing outside the standard library and
never imports torch itself. At exit it writes the determinism switches, thread counts and
torch's initial seed as they are then in effect (scripts set them themselves), with its
pid and its parent's (in a container the command is docker-init's child), to
``$AUDITOR_PROBE_DIR/determinism-<pid>.json``. It then hands over to any other
``sitecustomize`` module further down the path, so a project's own keeps working.
"""

import atexit
import json
import os
import sys

MYPY = False
if MYPY:  # names for the type checker only: at run time the probe imports nothing more
    from collections.abc import Callable
    from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "CUBLAS_WORKSPACE_CONFIG")


def _torch_state(torch: "Any") -> "dict[str, Any]":
    state: dict[str, Any] = {}
    probes: dict[str, Callable[[], Any]] = {
        "torch_deterministic_algorithms": lambda: torch.are_deterministic_algorithms_enabled(),
        "torch_deterministic_warn_only":
            lambda: torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": lambda: bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": lambda: bool(torch.backends.cudnn.benchmark),
        "cudnn_enabled": lambda: bool(torch.backends.cudnn.enabled),
        "tf32_matmul": lambda: bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": lambda: bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": lambda: torch.get_float32_matmul_precision(),
        "torch_num_threads": lambda: torch.get_num_threads(),
        "torch_num_interop_threads": lambda: torch.get_num_interop_threads(),
        "torch_initial_seed": lambda: int(torch.initial_seed()),
        "torch_version": lambda: str(torch.__version__),
        "torch_cuda": lambda: torch.version.cuda,
        "cuda_available": lambda: bool(torch.cuda.is_available()),
        "cudnn": lambda: torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "nccl": lambda: ".".join(map(str, torch.cuda.nccl.version()))
        if torch.cuda.is_available() else None,
    }
    for key, probe in probes.items():
        try:
            state[key] = probe()
        except Exception:  # noqa: BLE001 - a probe must never break the training
            state[key] = None
    return state


def observe() -> "dict[str, Any]":
    """The switches in effect in this process now."""
    obs: dict[str, Any] = {"pid": os.getpid(), "ppid": os.getppid(),
           "torch_imported": "torch" in sys.modules,
           "env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ}}
    if obs["torch_imported"]:
        obs.update(_torch_state(sys.modules["torch"]))
    return obs


def _dump() -> None:
    folder = os.environ.get("AUDITOR_PROBE_DIR")
    if not folder:
        return
    path = os.path.join(folder, f"determinism-{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w") as fh:
            json.dump(observe(), fh)
        os.replace(path + ".tmp", path)
    except Exception:  # noqa: BLE001 - the probe is best effort by design
        pass


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import importlib

        importlib.import_module("sitecustomize")
    except ImportError:
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


if os.environ.get("AUDITOR_PROBE_DIR") and __name__ == "sitecustomize":
    atexit.register(_dump)
    _chain()
