"""auditor's in-process probe, put on the PYTHONPATH of wrapped commands.

It must run under any interpreter, so it imports nothing outside the standard library and
never imports torch itself. At exit it writes the determinism switches, thread counts and
torch's initial seed as they are then in effect (scripts set them themselves), with its
pid and its parent's (in a container the command is docker-init's child), to
``$AUDITOR_PROBE_DIR/determinism-<pid>.json``. It then hands over to any other
``sitecustomize`` module further down the path, so a project's own keeps working.

While the process runs, an audit hook (``sys.addaudithook``) notes every path the process
opens for writing, renames or links onto, truncates or touches, one absolute path a line in
``$AUDITOR_PROBE_DIR/writes-<pid>.txt`` (appended as it happens, so a killed process keeps
what it wrote), and the two native writers of weights that raise no audit event
(``torch.save`` to a path, safetensors' ``save_file``) are wrapped to note their target the
same way. The recorder attributes changed files to the run with it (``record/concurrent``).

The first argparse parse of the process's own command line is captured whole, defaults and
each value's source included (``_auditor_params``, beside this module), to
``$AUDITOR_PROBE_DIR/params-<pid>.json`` at exit.
"""

import _thread
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


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_state: "dict[str, Any]" = {"fd": None, "seen": set(), "pid": None}
_MAX_SEEN = 100_000  # paths remembered per process to skip repeats
_MAX_BYTES = 64 << 20  # of paths noted per process (the recorder reads no more)
_busy: "set[int]" = set()  # threads inside _note: its own open raises an event too


def _note(path: "Any") -> None:
    """Append ``path`` (made absolute) to this process's writes file, once per path."""
    me = _thread.get_ident()
    if me in _busy:
        return
    _busy.add(me)
    try:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif not isinstance(path, str):
            path = os.fspath(path)
        full = os.path.abspath(path)
        if full.startswith(os.environ["AUDITOR_PROBE_DIR"] + os.sep):
            return  # the probe's own files
        if _state["pid"] != os.getpid():  # first note, or a forked child: its own file
            _state.update(pid=os.getpid(), seen=set(), written=0, fd=os.open(
                os.path.join(os.environ["AUDITOR_PROBE_DIR"], f"writes-{os.getpid()}.txt"),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        if full in _state["seen"] or "\n" in full or _state["written"] > _MAX_BYTES:
            return
        if len(_state["seen"]) >= _MAX_SEEN:  # bounded memory: a cache, not a record
            _state["seen"].clear()
        _state["seen"].add(full)
        line = (full + "\n").encode("utf-8", "surrogateescape")
        _state["written"] += len(line)
        os.write(_state["fd"], line)
    except Exception:  # noqa: BLE001 - the probe is best effort by design
        pass
    finally:
        _busy.discard(me)


def _audit(event: str, args: "tuple[Any, ...]") -> None:
    if event in _EVENTS:
        try:
            _written(event, args)
        except Exception:  # noqa: BLE001 - an audit hook that raises breaks the call
            return


_EVENTS = frozenset(("open", "os.rename", "os.link", "os.symlink", "shutil.copyfile",
                     "os.truncate", "os.utime"))


def _written(event: str, args: "tuple[Any, ...]") -> None:
    if event == "open":
        path, mode, flags = (*tuple(args), None, None, None)[:3]
        if isinstance(path, int):
            return  # an fd: opened before, by path
        writes = (bool(flags & _WRITE_FLAGS) if isinstance(flags, int)
                  else isinstance(mode, str) and any(c in mode for c in "wax+"))
        if writes and path is not None:
            _note(path)
    elif event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile"):
        if len(args) > 1 and not isinstance(args[1], int):
            _note(args[1])  # the destination
    elif event in ("os.truncate", "os.utime") and args and isinstance(
            args[0], (str, bytes, os.PathLike)):
        _note(args[0])


# native writers: (module, function, position and name of the path argument)
_NATIVE = {"safetensors": ("serialize_file", 1, "filename"),
           "torch.serialization": ("save", 1, "f")}


def _wrap_native(module: "Any", attr: str, pos: int, kw: str) -> None:
    try:
        _wrap(module, attr, pos, kw)
    except Exception:  # noqa: BLE001 - the probe must never break the training
        return


def _wrap(module: "Any", attr: str, pos: int, kw: str) -> None:
    inner = getattr(module, attr, None)
    if inner is None or getattr(inner, "_auditor_wrapped", False):
        return

    def wrapper(*args: "Any", **kwargs: "Any") -> "Any":
        target = args[pos] if len(args) > pos else kwargs.get(kw)
        if isinstance(target, (str, bytes, os.PathLike)):
            _note(target)
        return inner(*args, **kwargs)

    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        if hasattr(inner, name):
            setattr(wrapper, name, getattr(inner, name))
    wrapper.__wrapped__ = inner  # type: ignore[attr-defined]
    wrapper._auditor_wrapped = True  # type: ignore[attr-defined]
    setattr(module, attr, wrapper)


class _NativeFinder:
    """Wraps the native writers in ``_NATIVE`` as their modules finish loading."""

    @staticmethod
    def find_spec(name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if name not in _NATIVE:
            return None
        for finder in sys.meta_path:
            if finder is _NativeFinder or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run = getattr(loader, "exec_module", None)
        if run is None:
            return spec

        def exec_module(module: "Any") -> None:
            run(module)
            _wrap_native(module, *_NATIVE[name])

        try:
            setattr(loader, "exec_module", exec_module)  # noqa: B010 - a method, patched
        except (AttributeError, TypeError):  # a loader that takes no attribute: unwrapped
            return spec
        return spec


def _watch_writes() -> None:
    try:
        sys.addaudithook(_audit)
        sys.meta_path.insert(0, _NativeFinder)
        for name, spec in _NATIVE.items():  # already imported (a sitecustomize before us)
            if name in sys.modules:
                _wrap_native(sys.modules[name], *spec)
    except Exception:  # noqa: BLE001 - the probe is best effort by design
        pass


def _capture_params() -> None:
    try:
        import _auditor_params

        _auditor_params.install()
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
    _watch_writes()
    _capture_params()
    _chain()
