"""Differences + policy -> a ``Verdict``, with the likely causes ranked.

Contract of ``decide(diffs, left, right, policy, notes)``:

* Differences that count are every one except the environment comparer's (they explain,
  they never fail) and informational ones (``stats["informational"]``: logs).
* level: no counted difference -> ``reproduced-bitwise``; all within tolerance ->
  ``reproduced-within-tolerance``; any beyond -> ``not-reproduced``. Under
  ``policy.bitwise`` a within-tolerance difference counts as beyond: bit identity demanded.
* first_divergence (not-reproduced only): the earliest step out of tolerance over all
  metrics (``metrics/loss@step 0``; ties by name), else the first beyond-tolerance
  difference in table order (weights, files, params, metrics without steps).
* summary: compared_metrics and compared_files (keys and non-ignored outputs of either
  run), identical (of those, how many have no counted difference), within_tolerance and
  beyond_tolerance (counted differences), environment_changes, informational.
* causes: for not-reproduced, ``rank_causes``; for within-tolerance the same list with
  halved scores; none for bitwise.

``rank_causes`` scores each environment difference by the first row of ``SCORES`` whose
group and item glob match it (higher is more likely; the table is the documentation),
with one rule above the table: torch's initial seed differing while no seed was set
means the run is unseeded (score 100). With no environment difference at all, the cause
is nondeterminism the record does not explain.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from typing import Any

from auditor.compare import environment
from auditor.compare.difference import Difference
from auditor.outcome import Cause, Level, Verdict
from auditor.policy import Policy
from auditor.schema import RunRecord, canonical_json

# (group, item glob, category, score, why it can change a result): the first match wins.
SCORES: tuple[tuple[str, str, str, float, str], ...] = (
    ("seeds", "seed", "seed", 95,
     "The seed set for the run differs, so every random draw (initial weights, data order, "
     "dropout) differs."),
    ("seeds", "pythonhashseed", "seed", 90,
     "PYTHONHASHSEED differs, so the iteration order of sets and string-keyed hashes (data "
     "order, vocabularies) can differ."),
    ("env", "PYTHONHASHSEED", "seed", 90,
     "PYTHONHASHSEED differs, so the iteration order of sets and string-keyed hashes (data "
     "order, vocabularies) can differ."),
    ("seeds", "torch_initial_seed", "seed", 88,
     "torch's initial seed differs although the same seed was set: something reseeds torch "
     "from a source that varies."),
    ("seeds", "seeded", "seed", 85,
     "Different random generators were seeded (random, numpy, torch, cuda)."),
    ("determinism", "*threads", "threads", 80,
     "The thread count changes how floating-point sums are split, so results differ in the "
     "last bits on CPUs."),
    ("env", "OMP_NUM_THREADS", "threads", 80,
     "OMP_NUM_THREADS changes how floating-point sums are split across threads."),
    ("env", "MKL_NUM_THREADS", "threads", 80,
     "MKL_NUM_THREADS changes how floating-point sums are split across threads."),
    ("determinism", "*", "determinism", 75,
     "A determinism switch (deterministic algorithms, cuDNN, TF32) differs, which lets "
     "kernels pick other algorithms or precisions."),
    ("env", "CUBLAS_WORKSPACE_CONFIG", "determinism", 75,
     "CUBLAS_WORKSPACE_CONFIG decides whether cuBLAS reductions are deterministic."),
    ("gpu", "*", "gpu", 70,
     "The GPU model or CUDA stack differs, and kernels compute differently on other hardware "
     "and library versions."),
    ("packages", "torch", "packages", 50, "The deep-learning framework version differs."),
    ("packages", "numpy", "packages", 50, "The numpy version differs."),
    ("packages", "scipy", "packages", 50, "The scipy version differs."),
    ("packages", "jax*", "packages", 50, "The jax version differs."),
    ("packages", "tensorflow*", "packages", 50, "The tensorflow version differs."),
    ("packages", "nvidia-*", "packages", 50, "A CUDA library package version differs."),
    ("python", "version", "python", 45, "The Python version differs."),
    ("cpu", "cpu_count", "cpu", 30,
     "The number of CPUs differs, and default thread counts follow it."),
    ("cpu", "cpu_affinity", "cpu", 30,
     "The number of usable CPUs differs, and default thread counts follow it."),
    ("cpu", "cpu_flags", "cpu", 25,
     "The CPU instruction sets differ, so math libraries may take other code paths."),
    ("python", "*", "python", 20, "The Python build differs."),
    ("packages", "*", "packages", 20, "A package version differs."),
    ("cpu", "*", "cpu", 20, "The CPU model differs."),
    ("os", "*", "os", 15, "The operating system, kernel or C library differs."),
    ("env", "*", "env", 15, "An environment variable differs."),
)
UNSEEDED_SCORE = 100.0
UNEXPLAINED = Cause(
    category="nondeterminism", what="unexplained", score=10.0,
    explanation="Nothing recorded about the environment differs: look for nondeterminism "
                "the record cannot see (an unseeded RNG, data order from the filesystem, "
                "nondeterministic kernels).")
WITHIN_TOLERANCE_WEIGHT = 0.5  # causes of differences inside tolerance matter less


def decide(diffs: dict[str, list[Difference]], left: RunRecord, right: RunRecord,
           policy: Policy, notes: Sequence[str] = ()) -> Verdict:
    """The verdict over every comparer's differences."""
    counted = [d for name, found in diffs.items() if name != "environment"
               for d in found if not d.stats.get("informational")]
    beyond = [d for d in counted if not d.within_tolerance or policy.bitwise]
    level = _level(counted, beyond)
    return Verdict(level=level, differences=diffs, notes=list(notes),
                   causes=_causes(level, diffs, left, right),
                   first_divergence=first_divergence(diffs, beyond) if beyond else None,
                   summary=_summary(diffs, counted, beyond, (left, right), policy))


def _level(counted: list[Difference], beyond: list[Difference]) -> Level:
    if beyond:
        return "not-reproduced"
    return "reproduced-within-tolerance" if counted else "reproduced-bitwise"


def _causes(level: Level, diffs: dict[str, list[Difference]], left: RunRecord,
            right: RunRecord) -> list[Cause]:
    if level == "reproduced-bitwise":
        return []
    causes = rank_causes(diffs, left, right)
    crashed = [d for d in diffs.get("process", []) if d.where == "process/exit_code"]
    if crashed:  # nothing else matters as much as a rerun that did not finish
        tail = "; ".join(crashed[0].comments) or "no stderr"
        causes.insert(0, Cause(category="process", what="exit_code", left=crashed[0].left,
                               right=crashed[0].right, score=200.0,
                               explanation=f"The rerun exited with {crashed[0].right} "
                                           f"({tail})."))
    if level == "not-reproduced":
        return causes
    return [c.model_copy(update={"score": c.score * WITHIN_TOLERANCE_WEIGHT}) for c in causes]


def first_divergence(diffs: dict[str, list[Difference]], beyond: list[Difference]) -> str | None:
    """Where the divergence starts: the earliest metric step, else the first difference."""
    ids = {id(d) for d in beyond}
    stepped = [(int(step), d.where) for d in diffs.get("metrics", [])
               if id(d) in ids and isinstance(step := d.stats.get("first_step"), int)]
    if stepped:
        step, where = min(stepped)
        return f"{where}@step {step}"
    for name in ("process", "weights", "files", "params", "metrics"):
        for d in diffs.get(name, []):
            if id(d) in ids:
                return d.where
    return beyond[0].where if beyond else None


def _summary(diffs: dict[str, list[Difference]], counted: list[Difference],
             beyond: list[Difference], runs: tuple[RunRecord, RunRecord],
             policy: Policy) -> dict[str, int]:
    keys = sorted(set(runs[0].metrics.final) | set(runs[1].metrics.final))
    outputs = sorted({a.name for r in runs for a in r.outputs()
                      if not any(fnmatch.fnmatchcase(a.name, g) for g in policy.ignore_outputs)})
    touched = {d.where for d in counted}
    identical = sum(1 for k in keys if f"metrics/{k}" not in touched) + sum(
        1 for n in outputs
        if not any(_under(w, f"weights/{n}") or _under(w, f"files/{n}") for w in touched))
    return {"compared_metrics": len(keys), "compared_files": len(outputs),
            "identical": identical, "within_tolerance": len(counted) - len(beyond),
            "beyond_tolerance": len(beyond),
            "environment_changes": len(diffs.get("environment", [])),
            "informational": sum(1 for found in diffs.values() for d in found
                                 if d.stats.get("informational"))}


def _under(where: str, item: str) -> bool:
    """True when ``where`` is the file ``item`` or a place inside it (a tensor, a line)."""
    return where == item or where.startswith((item + "/", item + "@"))


# -- causes ----------------------------------------------------------------------------


def rank_causes(diffs: dict[str, list[Difference]], left: RunRecord,
                right: RunRecord) -> list[Cause]:
    """Environment differences as likely causes, most likely first (see ``SCORES``)."""
    env = diffs["environment"] if "environment" in diffs else environment.compare_records(
        left, right)
    best: dict[tuple[str, str], Cause] = {}
    for diff in env:
        cause = _cause(diff, left, right)
        key = (cause.category, cause.what)
        if key not in best or cause.score > best[key].score:
            best[key] = cause
    causes = sorted(best.values(), key=lambda c: (-c.score, c.category, c.what))
    return causes or [UNEXPLAINED]


def _cause(diff: Difference, left: RunRecord, right: RunRecord) -> Cause:
    group, item = _group_item(diff)
    if group == "seeds" and item == "torch_initial_seed" and _unseeded(left, right):
        return Cause(category="seed", what="unseeded", left=diff.left, right=diff.right,
                     score=UNSEEDED_SCORE,
                     explanation="The run is not seeded (or seeded from the clock): torch's "
                                 "initial seed differed between the runs, so results differ "
                                 "from the first step.")
    category, score, why = _lookup(group, item)
    what = "PYTHONHASHSEED" if item == "pythonhashseed" else item or group
    return Cause(category=category, what=what, left=diff.left, right=diff.right, score=score,
                 explanation=why if item else f"The {group} section was recorded on one side "
                                               "only, so it cannot be compared.")


def _group_item(diff: Difference) -> tuple[str, str]:
    parts = diff.where.split("/", 2)  # environment/<group>[/<item>]
    group = str(diff.stats.get("group") or (parts[1] if len(parts) > 1 else ""))
    return group, parts[2] if len(parts) > 2 else ""


def _unseeded(left: RunRecord, right: RunRecord) -> bool:
    return left.seeds.seed is None or right.seeds.seed is None


def _lookup(group: str, item: str) -> tuple[str, float, str]:
    for g, glob, category, score, why in SCORES:
        if g == group and fnmatch.fnmatchcase(item, glob):
            return category, score, why
    return group, 10.0, f"The {group} setting {item} differs."


# -- environment digest ----------------------------------------------------------------


def environment_digest(record: RunRecord) -> str:
    """sha256 (hex) of the canonical JSON of what a rerun's environment must match."""
    return hashlib.sha256(canonical_json(_rerun_environment(record))).hexdigest()


def _rerun_environment(record: RunRecord) -> dict[str, Any]:
    env = record.environment
    py, system, acc = env.python, env.system, env.accelerators
    return {
        "python": None if py is None else py.version,
        "packages": None if py is None else dict(sorted(py.packages.items())),
        "system": None if system is None else {
            "os": system.os, "kernel": system.kernel, "cpu_model": system.cpu_model},
        "gpus": None if acc is None else {
            "devices": [{"name": g.name, "compute_capability": g.compute_capability}
                        for g in acc.gpus],
            "driver": acc.driver_version, "torch_cuda": acc.torch_cuda, "cudnn": acc.cudnn},
        "determinism": None if record.determinism is None
        else record.determinism.model_dump(mode="json", exclude={"source"}),
        "pythonhashseed": record.seeds.pythonhashseed,
    }
