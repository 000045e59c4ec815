"""Determinism switches and thread counts, as they were in effect while training.

A wrapped command is observed from inside by the probe (``record/probe/sitecustomize.py``,
put on the child's PYTHONPATH), which writes what it saw at exit; the Python API observes
its own process. When no observation exists (the child was not Python, or was killed
before exit) only the environment variables are recorded, and the section says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from auditor.core.schema import Determinism
from auditor.record.capture.secrets import redacted_env_value
from auditor.record.probe.sitecustomize import observe

FIELDS = tuple(
    f
    for f in Determinism.model_fields
    if f not in ("source", "cublas_workspace_config", "omp_num_threads", "mkl_num_threads")
)


def from_observation(obs: Mapping[str, Any], env: Mapping[str, str]) -> Determinism:
    """A Determinism section from one probe observation (plus the child's environment)."""
    seen_env = {**env, **obs.get("env", {})}
    values = {k: obs.get(k) for k in FIELDS if obs.get(k) is not None}
    return Determinism(source="observed-in-process", **values, **_env_fields(seen_env))


def environment_only(env: Mapping[str, str]) -> Determinism:
    """What the environment alone says, when the process could not be observed."""
    return Determinism(source="environment-only", **_env_fields(env))


def _env_fields(env: Mapping[str, str]) -> dict[str, Any]:
    # copied from the environment, so scanned like it: a secret smuggled through an
    # allowlisted variable (OMP_NUM_THREADS='1;password=...') is redacted here too
    return {
        field: redacted_env_value(name, env.get(name))
        for field, name in (
            ("cublas_workspace_config", "CUBLAS_WORKSPACE_CONFIG"),
            ("omp_num_threads", "OMP_NUM_THREADS"),
            ("mkl_num_threads", "MKL_NUM_THREADS"),
        )
    }


def observe_self(env: Mapping[str, str]) -> tuple[Determinism, int | None]:
    """(Determinism, torch initial seed) of the current process."""
    obs = observe()
    return from_observation(obs, env), obs.get("torch_initial_seed")


def read_probe(
    folder: Path, child_pid: int | None, *, parent_pid: int | None = None
) -> dict[str, Any] | None:
    """The observation written by the child, if any: preferring the one of pid
    ``child_pid``, or (in a container, where the command has a pid of its own) the one
    whose parent is ``parent_pid``; else any process's."""
    found = []
    for path in sorted(folder.glob("determinism-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found.append((path.name, data))

    def mine(name: str, data: dict[str, Any]) -> bool:
        return name == f"determinism-{child_pid}.json" or (
            parent_pid is not None and data.get("ppid") == parent_pid)

    ranked = [d for n, d in found if mine(n, d)] + [d for _n, d in found]
    return ranked[0] if ranked else None
