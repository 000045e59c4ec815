"""Differences + policy -> a ``Verdict``, with the likely causes ranked.

Contract of ``decide(diffs, left, right, policy, notes)``:

* Differences that count are every one except the environment comparer's (they explain,
  they never fail) and informational ones (``stats["informational"]``: logs under the
  default ``compare_logs = "informational"`` when something else is the evidence, renamed
  outputs whose bytes match). Bytes that differ around identical tensors always count
  (``compare.container``): bitwise means byte for byte.
* level: no counted difference -> ``reproduced-bitwise``; all within tolerance ->
  ``reproduced-within-tolerance``; any beyond -> ``not-reproduced``. A reproduced verdict
  needs evidence: at least one compared metric, counted output, or log compared as
  evidence (``files.logs_are_evidence``: when a run produced nothing but its logs, they
  count, and a note says they were the evidence). With none, the level is
  ``could-not-verify`` and the last note says what to declare (``--output``, a metric). Under
  ``policy.bitwise`` a within-tolerance difference counts as beyond: bit identity demanded.
  When every beyond-tolerance difference is one auditor could not read here
  (``stats["cannot_compare"]``, e.g. an event file without the tensorboard package), the
  level is ``could-not-verify`` and the notes say what to install: our gap is never a
  verdict about the run.
* first_divergence (not-reproduced only): the earliest step out of tolerance over all
  metrics (``metrics/loss@step 0``; ties by name), else the first beyond-tolerance
  difference in table order (weights, files, params, metrics without steps).
* summary: compared_metrics, compared_files (keys and compared outputs of either run)
  and compared_logs (logs compared as evidence), identical (of the first two, how many
  have no counted difference), within_tolerance and beyond_tolerance (counted
  differences), environment_changes, informational.
* outputs: ``files.coverage``: which outputs were compared, ignored, or logs only.
* loosenings: ``policy.loosenings`` plus, when logs differed without counting, one line
  naming the first differing log line.
* causes: for not-reproduced, a rerun that exited otherwise than the original first (with
  the last lines of its stderr), then ``rank_causes``; for within-tolerance the same list
  with halved scores; none for bitwise.

``rank_causes`` scores each environment difference by the first row of ``SCORES`` whose
group and item glob match it (higher is more likely; the table is the documentation),
with rules above the table: torch's initial seed differing while no seed was set means
the run is unseeded (score 100); auditor's own package is never a cause; a Python patch
release scores 5; more than ``PACKAGE_ROWS`` package changes make one line ("97 installed
packages differ from the lockfile; top: …"); a variable kept by name only at record time
and absent from the rerun is a cause with its fix (``unreplayed_env``), except build inputs
(CA bundles, ``AUDITOR_*``: ``BUILD_INPUT_VARIABLES``), which are never causes and which a
note names instead (``build_input_note``). When every metric
reproduced bit for bit, the environment did not change the numerics: its causes are scaled
down. When no cause scores at least ``UNEXPLAINED``, nondeterminism the record does not
explain leads, naming the first divergence.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from auditor.certify.verdict import Cause, Level, Verdict, VerifyResult
from auditor.compare import environment, files
from auditor.compare.difference import Difference
from auditor.compare.pairing import OutputCoverage
from auditor.core.policy import ComparePolicy, Policy, loosenings
from auditor.core.schema import RunRecord, canonical_json

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
PATCH_SCORE = 5.0  # a Python patch release: below UNEXPLAINED, never leads
PACKAGE_ROWS = 3  # more package changes than this become one line
UNREPLAYED_SCORE = 60.0  # a setting-like variable the rerun did not get
UNREPLAYED_OTHER_SCORE = 8.0  # any other such variable: listed, never above UNEXPLAINED
UNREPLAYED_ROWS = 3  # named one by one; the rest in one line
REPRODUCED_WEIGHT = 0.05  # environment causes when every metric reproduced bit for bit
OWN_PACKAGES = frozenset({"auditor"})
# Set by the rerun to replay the recorded torch thread count (rerun.replay_env).
REPLAYED_THREADS = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"})
# Words that make a variable name look like a training setting (TRAIN_LR, BATCH_SIZE).
SETTING_WORDS = frozenset({
    "LR", "LEARNING", "RATE", "EPOCH", "EPOCHS", "BATCH", "SEED", "STEP", "STEPS", "ITERS",
    "DATA", "DATASET", "MODEL", "TRAIN", "TRAINING", "CONFIG", "CFG", "HIDDEN", "DROPOUT",
    "WEIGHT", "DECAY", "MOMENTUM", "OPTIMIZER", "OPTIM", "SCHEDULER", "WARMUP", "SIZE",
    "NUM", "LAYERS", "DIM", "ALPHA", "BETA", "GAMMA", "LAMBDA", "EPS", "TEMPERATURE",
    "HPARAMS", "PARAMS", "EXPERIMENT", "EXP", "SHUFFLE", "SAMPLES", "CLASSES", "MAX", "MIN"})
# Variables of the shell, desktop, CI and tools: set on every host, not training settings.
HOST_VARIABLES = frozenset({
    "PATH", "HOME", "PWD", "OLDPWD", "HOSTNAME", "HOST", "SHLVL", "_", "TERM", "USER",
    "LOGNAME", "SHELL", "MAIL", "EDITOR", "VISUAL", "PAGER", "DISPLAY", "COLORTERM",
    "LS_COLORS", "TMPDIR", "TMP", "TEMP", "MANPATH", "INFOPATH", "WINDOWID", "XAUTHORITY",
    "SESSION_MANAGER", "STY", "TZDIR", "MOTD_SHOWN", "container", "CI", "JAVA_HOME",
    "GOPATH", "GOROOT", "NODE_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})
NOISE_VARIABLES: tuple[str, ...] = (
    "SSH_*", "XDG_*", "DBUS_*", "DESKTOP_*", "GNOME_*", "KDE_*", "GTK_*", "QT_*", "TERM_*",
    "TMUX*", "LESS*", "HIST*", "PS[0-9]", "PROMPT*", "WAYLAND_*", "GPG_*", "SUDO_*",
    "PIP_*", "VIRTUAL_ENV*", "CONDA_*", "MAMBA_*", "PYENV_*", "PYTEST_*", "COV_*",
    "GITHUB_*", "RUNNER_*", "GITLAB_*", "CI_*", "BUILD_*", "JENKINS_*", "BUILDKITE*",
    "TRAVIS*", "CIRCLE*", "DOCKER_*", "KUBERNETES_*", "LD_*", "VSCODE_*", "ITERM*",
    "COMP_*", "_*", "*_PROXY", "*_proxy", "NODE_*", "npm_*", "NVM_*", "CARGO_*",
    "RUSTUP_*", "GIT_*",
    "LC_*", "LANG*", "EMACS*", "INSIDE_EMACS", "JPY_*", "JUPYTER_*", "KERNEL_*",
    "MPLBACKEND", "ELECTRON_*", "CHROME_*", "APPDATA", "ALLUSERSPROFILE", "USERPROFILE",
)

# Variables that name the certificates a host trusts (CA bundles of pip, requests, curl,
# the AWS and Google SDKs, node, git, grpc) and auditor's own settings: inputs of the
# environment build (auditor passes the CA bundle to it alone, --ca-bundle /
# AUDITOR_CA_BUNDLE) that a rerun never gets (sandbox.replay_env keeps no redacted value
# and no AUDITOR_* variable). They say how to reach a package index, not how to train:
# never a cause; a note names them (``build_input_note``).
BUILD_INPUT_VARIABLES: tuple[str, ...] = (
    "AUDITOR_*", "*CA_BUNDLE*", "*CA_CERTS*", "*CA_CERT_*", "*SSL_CERT_FILE", "*SSL_CERT_DIR",
    "*_CAINFO", "*_CAPATH", "*SSL_ROOTS*", "PIP_CERT", "PIP_CLIENT_CERT", "*_CA_FILE",
)


def decide(diffs: dict[str, list[Difference]], left: RunRecord, right: RunRecord,
           policy: Policy, notes: Sequence[str] = ()) -> Verdict:
    """The verdict over every comparer's differences."""
    counted = [d for name, found in diffs.items() if name != "environment"
               for d in found if not d.stats.get("informational")]
    beyond = [d for d in counted if not d.within_tolerance or policy.compare.bitwise]
    unreadable = [d for d in beyond if d.stats.get("cannot_compare")]
    level = _level(counted, beyond)
    coverage = files.coverage(left, right, policy.compare)
    summary = _summary(diffs, counted, beyond, (left, right), coverage)
    notes = [*notes, *_evidence_notes(coverage, policy.compare),
             *build_input_note(diffs.get("environment", []), left, right)]
    if unreadable and len(unreadable) == len(beyond):  # our gap, not the run's fault
        level = "could-not-verify"
        notes = [*notes, *(f"{d.where}: {'; '.join(d.comments)}" for d in unreadable)]
    if level.startswith("reproduced") and not _evidence(summary, coverage):
        level = "could-not-verify"  # nothing was compared: no verdict from no evidence
        notes = [*notes, _no_evidence(left, right, policy.compare)]
    return Verdict(level=level, differences=diffs, notes=notes,
                   causes=_causes(level, diffs, left, right, beyond),
                   first_divergence=first_divergence(diffs, beyond) if beyond else None,
                   summary=summary, outputs=coverage,
                   loosenings=loosenings(policy) + _log_note(diffs, policy.compare))


def _evidence(summary: dict[str, int], coverage: OutputCoverage) -> int:
    """How many compared items a verdict rests on: metrics, outputs whose differences
    count, and logs compared as evidence."""
    outputs = set(coverage.compared) - set(coverage.informational) - set(coverage.evidence_logs)
    return summary["compared_metrics"] + len(outputs) + len(coverage.evidence_logs)


def _evidence_notes(coverage: OutputCoverage, policy: ComparePolicy) -> list[str]:
    if not coverage.evidence_logs or policy.compare_logs != "informational":
        return []
    return [f"evidence: the run logged no metric and wrote no other output, so its logs "
            f"({', '.join(coverage.evidence_logs)}) were the evidence, compared line by "
            "line after the log masks and counted"]


def _no_evidence(left: RunRecord, right: RunRecord, policy: ComparePolicy) -> str:
    """The one line of a verification with nothing to compare: what to declare."""
    printed = any(a.size for r in (left, right) for a in r.artifacts if a.kind == "log")
    what = ("printed nothing" if not printed else
            f"its logs are left out (compare_logs = \"{policy.compare_logs}\")")
    return (f"nothing to compare: the run logged no metric, wrote no output file and {what}, "
            "so no verdict can rest on it; declare what it produces: `audit record --output "
            "PATH -- …` for a file it writes, or print metrics as JSON lines "
            "({\"step\": 1, \"loss\": 0.5}) or match them with --metrics-regex")


def _log_note(diffs: dict[str, list[Difference]], policy: ComparePolicy) -> list[str]:
    """The informational log differences, as the loosening they are (reported first)."""
    logs = [d for found in diffs.values() for d in found
            if d.stats.get("informational") and d.kind == "text"]
    if not logs:
        return []
    first = logs[0]
    line = f" line {first.stats['first_line']}" if "first_line" in first.stats else ""
    shown = f": {first.left} → {first.right}" if first.left or first.right else ""
    return [f"compare_logs = \"{policy.compare_logs}\": {len(logs)} log file(s) differ and "
            f"were not counted; the first at {first.where}{line}{shown} "
            "(compare_logs = \"strict\" counts them)"]


def _level(counted: list[Difference], beyond: list[Difference]) -> Level:
    if beyond:
        return "not-reproduced"
    return "reproduced-within-tolerance" if counted else "reproduced-bitwise"


def _causes(level: Level, diffs: dict[str, list[Difference]], left: RunRecord,
            right: RunRecord, beyond: list[Difference]) -> list[Cause]:
    if level in ("reproduced-bitwise", "could-not-verify"):
        return []
    crashed = [d for d in diffs.get("process", []) if d.where == "process/exit_code"]
    # a file the rerun did not write is missing, not nondeterministic: its own cause
    missing = [d for d in beyond if d.kind == "missing"]
    varied = [d for d in beyond if d.kind != "missing"]
    causes = rank_causes(diffs, left, right, unexplained=not crashed and bool(varied),
                         where=first_divergence(diffs, varied) if varied else None,
                         numerics_reproduced=_numerics_reproduced(diffs, left, right))
    if missing:
        causes.insert(0, _missing(missing))
    if crashed:  # nothing else matters as much as a rerun that did not finish
        tail = "; ".join(crashed[0].comments) or "no stderr"
        causes.insert(0, Cause(category="process", what="exit_code", left=crashed[0].left,
                               right=crashed[0].right, score=200.0,
                               explanation=f"The rerun exited with {crashed[0].right}; the "
                                           f"last lines of its stderr: {tail}"))
    if level == "not-reproduced":
        return causes
    return [c.model_copy(update={"score": c.score * WITHIN_TOLERANCE_WEIGHT}) for c in causes]


def _missing(missing: list[Difference]) -> Cause:
    names = ", ".join(d.where.removeprefix("files/") for d in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return Cause(category="files", what="missing in the rerun", left=names + more, right=None,
                 score=UNEXPLAINED.score + 1.0, explanation=(
                     f"The rerun did not write {names}{more}, which the original run stored "
                     "as its output: missing, not different. Either the script writes it only "
                     "under a condition the rerun does not replay (an argument, a variable, a "
                     "file present then), or another process wrote it into the tree while the "
                     "original was recorded (name a run's outputs with --output)."))


def _numerics_reproduced(diffs: dict[str, list[Difference]], left: RunRecord,
                         right: RunRecord) -> bool:
    """Every metric of the training was compared and came back bit for bit."""
    return bool(left.metrics.final) and "metrics" in diffs and not diffs["metrics"]


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
             coverage: OutputCoverage) -> dict[str, int]:
    keys = sorted(set(runs[0].metrics.final) | set(runs[1].metrics.final))
    outputs = coverage.compared
    touched = {d.where for d in counted}
    identical = sum(1 for k in keys if f"metrics/{k}" not in touched) + sum(
        1 for n in outputs
        if not any(_under(w, f"weights/{n}") or _under(w, f"files/{n}") for w in touched))
    return {"compared_metrics": len(keys), "compared_files": len(outputs),
            "compared_logs": len(coverage.evidence_logs),
            "identical": identical, "within_tolerance": len(counted) - len(beyond),
            "beyond_tolerance": len(beyond),
            "environment_changes": len(diffs.get("environment", [])),
            "informational": sum(1 for found in diffs.values() for d in found
                                 if d.stats.get("informational"))}


def _under(where: str, item: str) -> bool:
    """True when ``where`` is the file ``item`` or a place inside it (a tensor, a line)."""
    return where == item or where.startswith((item + "/", item + "@"))


# -- causes ----------------------------------------------------------------------------


def rank_causes(diffs: dict[str, list[Difference]], left: RunRecord, right: RunRecord, *,
                unexplained: bool = True, where: str | None = None,
                numerics_reproduced: bool = False) -> list[Cause]:
    """Environment differences as likely causes, most likely first (see ``SCORES``).

    Package changes come as one line when there are more than ``PACKAGE_ROWS``; auditor's
    own package is never a cause; a Python patch release scores below ``UNEXPLAINED``;
    a variable set at record time that the rerun did not get (kept by name only) is a
    named cause with its fix. When every metric came back bit for bit
    (``numerics_reproduced``), the environment evidently did not change the training's
    numerics, so its differences score ``REPRODUCED_WEIGHT`` of their usual score. When
    nothing left scores at least ``UNEXPLAINED`` (and ``unexplained``), unexplained
    nondeterminism leads, naming ``where`` it starts."""
    env = diffs["environment"] if "environment" in diffs else environment.compare_records(
        left, right)
    best: dict[tuple[str, str], Cause] = {}
    packages: list[Cause] = []
    for diff in env:
        cause = _cause(diff, left, right)
        if cause is None:
            continue
        if cause.category == "packages" and diff.where.count("/") == 2:
            packages.append(cause)
            continue
        key = (cause.category, cause.what)
        if key not in best or cause.score > best[key].score:
            best[key] = cause
    causes = [*best.values(), *_grouped_packages(packages, left), *unreplayed_env(left, right)]
    if numerics_reproduced:
        causes = [c.model_copy(update={"score": c.score * REPRODUCED_WEIGHT}) for c in causes]
    causes.sort(key=lambda c: (-c.score, c.category, c.what))
    if unexplained and not any(c.score >= UNEXPLAINED.score for c in causes):
        causes.insert(0, _unexplained(where, numerics_reproduced))
    return causes


def _unexplained(where: str | None, numerics_reproduced: bool = False) -> Cause:
    if where is None:
        return UNEXPLAINED
    if numerics_reproduced:
        return UNEXPLAINED.model_copy(update={"explanation": (
            f"Every metric of the training reproduced bit for bit, so the environment did not "
            f"change its numerics; the first divergence is at {where}: the script writes "
            "something there that varies from run to run (the clock, an unseeded random "
            "draw, an id), or writes it after the metrics are taken.")})
    return UNEXPLAINED.model_copy(update={"explanation": (
        f"Nothing recorded about the environment explains it; the first divergence is at "
        f"{where}: look for nondeterminism the record cannot see there (an unseeded RNG, "
        "data order from the filesystem, nondeterministic kernels, a time or an id written "
        "into the output).")})


def _grouped_packages(packages: list[Cause], left: RunRecord) -> list[Cause]:
    if len(packages) <= PACKAGE_ROWS:
        return packages
    ranked = sorted(packages, key=lambda c: (-c.score, c.what))
    top = ", ".join(f"{c.what} {c.left} → {c.right}" for c in ranked[:3])
    top += f" and {len(ranked) - 3} more"
    lock = left.environment.python.lock if left.environment.python else None
    what = f"{len(packages)} packages"
    if lock is not None and bool(lock.drift):
        text = (f"{len(packages)} installed packages differ from the lockfile; top: {top}. "
                "The run was recorded outside the environment its lockfile describes, and "
                "the rerun installs the lockfile: record inside that environment.")
    else:
        text = (f"{len(packages)} installed packages differ between the original and the "
                f"rerun; top: {top}.")
    return [Cause(category="packages", what=what, left=None, right=None,
                  score=ranked[0].score, explanation=text)]


def unreplayed_env(left: RunRecord, right: RunRecord) -> list[Cause]:
    """Variables set when the run was recorded, kept by name only (value redacted), that the
    rerun therefore did not get; shell, desktop, CI and proxy variables and build inputs
    (CA bundles, auditor's settings: ``BUILD_INPUT_VARIABLES``) are left out."""
    absent = [name for name in _absent(left, right)
              if not _noise(name) and not is_build_input(name)]
    ranked = sorted(absent, key=lambda n: (not _looks_like_setting(n), n))
    causes = [_unreplayed(name) for name in ranked[:UNREPLAYED_ROWS]]
    if len(ranked) > UNREPLAYED_ROWS:
        rest = ranked[UNREPLAYED_ROWS:]
        causes.append(Cause(
            category="env", what=f"{len(rest)} more unreplayed variables",
            score=UNREPLAYED_OTHER_SCORE / 2,
            explanation="Also set at record time and not replayed: " + ", ".join(rest[:20])
                        + (", …" if len(rest) > 20 else "")))
    return causes


def _unreplayed(name: str) -> Cause:
    score = UNREPLAYED_SCORE if _looks_like_setting(name) else UNREPLAYED_OTHER_SCORE
    return Cause(category="env", what=name, left=environment.REDACTED, right="(not set)",
                 score=score, explanation=(
                     f"{name} was set when the run was recorded, but only its name was kept "
                     "(the value is redacted), so the rerun ran without it: a script that "
                     f"reads it trains differently. Fix: record with `audit record "
                     f"--env-allow {name} -- …` so its value is kept and replayed, or let the "
                     f"rerun take it from the host with the policy's pass_env = [\"{name}\"]."))


def is_build_input(name: str) -> bool:
    """Whether variable ``name`` is a build input (``BUILD_INPUT_VARIABLES``)."""
    return any(fnmatch.fnmatchcase(name.upper(), g) for g in BUILD_INPUT_VARIABLES)


def build_input_note(env: Sequence[Difference], left: RunRecord, right: RunRecord) -> list[str]:
    """One note naming the build-input variables that differ or that the rerun did not get
    (never causes), and why they cannot change the training."""
    names = sorted({item for d in env for group, item in [_group_item(d)]
                    if group == "env" and item and is_build_input(item)}
                   | {name for name in _absent(left, right) if is_build_input(name)})
    if not names:
        return []
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return [f"environment: {shown} differ or were not given to the rerun; not causes: they "
            "name the certificates a host trusts (CA bundles) or auditor's own settings, "
            "which the environment build gets (--ca-bundle) and the rerun never does, and "
            "tell tools how to reach a package index, not the training how to train"]


def _absent(left: RunRecord, right: RunRecord) -> list[str]:
    """Variables kept by name only at record time (redacted) that the rerun did not get."""
    return [name for name, value in sorted(left.environment.env_vars.items())
            if value == environment.REDACTED and name not in right.environment.env_vars]


def _noise(name: str) -> bool:
    return name in HOST_VARIABLES or any(fnmatch.fnmatchcase(name, g) for g in NOISE_VARIABLES)


def _looks_like_setting(name: str) -> bool:
    words = set(name.upper().replace("-", "_").split("_"))
    return bool(words & SETTING_WORDS)


def _cause(diff: Difference, left: RunRecord, right: RunRecord) -> Cause | None:
    group, item = _group_item(diff)
    if group == "packages" and item in OWN_PACKAGES:
        return None  # auditor itself, present or not in the image, never changes a result
    if group == "env" and is_build_input(item):
        return None  # a CA bundle or auditor's own setting: build_input_note names it
    if group == "seeds" and item == "torch_initial_seed" and _unseeded(left, right):
        return Cause(category="seed", what="unseeded", left=diff.left, right=diff.right,
                     score=UNSEEDED_SCORE,
                     explanation="The run is not seeded (or seeded from the clock): torch's "
                                 "initial seed differed between the runs, so results differ "
                                 "from the first step.")
    if group in ("env", "determinism") and item.upper() in REPLAYED_THREADS and (
            diff.left in (None, "None") and _same_threads(left, right)):
        return Cause(category="threads", what=item, left=diff.left, right=diff.right,
                     score=PATCH_SCORE,
                     explanation=f"{item} was set by the rerun to replay the recorded thread "
                                 "count, which both runs had: not a difference in effect.")
    if group == "python" and item == "version" and _patch_only(diff.left, diff.right):
        return Cause(category="python", what="version", left=diff.left, right=diff.right,
                     score=PATCH_SCORE,
                     explanation="Only the Python patch release differs; patch releases do "
                                 "not change numerical results.")
    category, score, why = _lookup(group, item)
    what = "PYTHONHASHSEED" if item == "pythonhashseed" else item or group
    return Cause(category=category, what=what, left=diff.left, right=diff.right, score=score,
                 explanation=why if item else f"The {group} section was recorded on one side "
                                               "only, so it cannot be compared.")


def _same_threads(left: RunRecord, right: RunRecord) -> bool:
    a, b = left.determinism, right.determinism
    return a is not None and b is not None and a.torch_num_threads is not None and (
        a.torch_num_threads == b.torch_num_threads)


def _patch_only(left: str | None, right: str | None) -> bool:
    a, b = (str(v or "").strip("'\"").split(".") for v in (left, right))
    return len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2]


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


# -- the result of a verification --------------------------------------------------------


def verify_result(original: RunRecord, rerun: RunRecord, verdict: Verdict, policy: Policy, *,
                  image: str | None, backend: str, started: datetime,
                  seconds: dict[str, float], **extra: Any) -> VerifyResult:
    """A full or partial verification's result: both runs, the verdict, the policy, the
    environment the rerun had, and its timings with their ``total`` up to now; ``extra``:
    what only one kind of check carries (curves, the spot-check, segment rows)."""
    total = (datetime.now(UTC) - started).total_seconds()
    return VerifyResult(
        original_run=original.identity.id, original_name=original.identity.name,
        rerun_run=rerun.identity.id, rerun_name=rerun.identity.name, verdict=verdict,
        policy=policy.table(), image=image, backend=backend,
        environment_sha256=environment_digest(rerun), started_at=started,
        seconds={**seconds, "total": total}, **extra)


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
