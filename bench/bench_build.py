"""Benchmark of image builds and of a warm verify (issue 17), measured in one run.

* ``a_cold``: the fixture's lock (``fixtures/train/requirements.lock``, torch CPU from the
  wheelhouse) built with an empty wheel cache and ``no_cache=True`` (every layer and the
  heavy packages' image rebuilt), against the floor for the same downloads and installs:
  ``pip install --no-cache-dir --require-hashes -r lock`` into a fresh venv on the host.
* ``b_one_package_apart``: the same lock plus one small package (six), ``no_cache=True``
  (docker's layer cache cold, the heavy image rebuilt too), the wheel cache warm; reports
  how many wheels were fetched (target: 1) and the ratio to ``a_cold`` (target <= 0.25).
* ``c_heavy_cached``: that lock again, every layer rebuilt but the heavy packages' image
  reused (target <= 15 s).
* ``d_warm_verify``: the bundled fixture recorded (6 epochs) and verified once (image
  built), then verified ``--repeat`` times warm as ``audit --json -q verify`` processes
  (bytecode cached, as installed): the overhead is the process's wall time minus the
  rerun's ``duration_s`` (target: total <= 1 s), also reported beyond the container's own
  life (docker events: the training process alone) and as host CPU seconds; one more warm
  verify runs in-process under cProfile to split the overhead by stage.
* ``cache_hit``: ``build_docker()`` of inputs whose image exists, 5 times.

Needs a docker engine, the base image ``auditor-base:bookworm`` (``.ci/docker-setup.sh``
builds it), the torch wheel in ``$PIP_FIND_LINKS`` (default /opt/wheels) and the index's CA
bundle (``$PIP_CERT``, else the system bundle). Writes ``bench/results/build.json``.
Images it tags are removed at the end. Usage: ``python bench/bench_build.py [--skip-builds]
[--skip-verify] [--repeat N] [--against DIR] [--baseline DIR]`` (``--skip-builds``: only
(d), the other part's figures kept in the file; ``--against``: (d)'s warm verifies of
another checkout's code, e.g. before a change, alternated with this one's on the same
store, kept under ``before``; ``--baseline``: the same benchmark of another checkout,
run first in the same process tree and kept under ``baseline``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.core.lockfile import Lock, parse_requirements_lock
from auditor.core.progress import Counter, Reporter
from auditor.env.baseimage import build_base_image
from auditor.env.build import (
    build_docker,
    build_inputs_digest,
    cached_sizes,
    image_tag,
    template_context,
    wheel_cache_of,
)
from auditor.env.engine import docker_client
from auditor.env.spec import BuildInputs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "build.json"
TRAIN_LOCK = ROOT / "fixtures" / "train" / "requirements.lock"
SMALL_LOCK = ROOT / "fixtures" / "locks" / "pip" / "small.requirements.lock"
AUDIT = str(Path(sys.executable).parent / "audit")
HITS = 5
CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
WHEELHOUSE = Path(os.environ.get("PIP_FIND_LINKS") or "/opt/wheels")


class Fetches(Reporter):
    """Counts the wheels a build fetched into the cache."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched = 0

    def counter(self, label: str, total: int, total_bytes: int = 0, *,
                unit: str = "packages", eta_s: float | None = None) -> Counter:
        if label == "fetching":
            self.fetched += total
        return Counter()


def inputs(lock: Lock, base: tuple[str, str], cache: Path) -> BuildInputs:
    """Build inputs for a lock on the local base image with a given wheel cache."""
    return BuildInputs(run_id="bench-build", lock=lock, python_version="3.11.2",
                       base_image=base[0], base_image_id=base[1], wheelhouse=WHEELHOUSE,
                       ca_bundle=CA, wheel_cache=cache, auditor_version="bench")


def timed_build(case: BuildInputs, **kw: Any) -> tuple[float, int, Any]:
    seen = Fetches()
    started = time.monotonic()
    result = build_docker(case, progress=seen, **kw)
    return time.monotonic() - started, seen.fetched, result


def pip_floor(lock_path: Path) -> float:
    """Seconds of a fresh venv plus ``pip install --require-hashes`` of the lock."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", f"{tmp}/v"], check=True)
        subprocess.run([f"{tmp}/v/bin/python", "-m", "pip", "install", "-q", "--no-cache-dir",
                        "--no-deps", "--require-hashes", "--cert", str(CA),
                        f"--find-links={WHEELHOUSE}", "-r", str(lock_path)],
                       check=True, capture_output=True)
        return time.monotonic() - started


def builds(base: tuple[str, str], report: dict[str, Any], made: list[str]) -> None:
    """Cases a, b, c and the cache hit, in one run."""
    lock = parse_requirements_lock(TRAIN_LOCK.read_text(), name="requirements.lock")
    derived = parse_requirements_lock(lock.text + SMALL_LOCK.read_text(), name="derived.lock")
    with tempfile.TemporaryDirectory(prefix="bench-wheels-") as tmp:
        cache = Path(tmp) / "wheels"
        first, second = inputs(lock, base, cache), inputs(derived, base, cache)
        made += [image_tag(build_inputs_digest(c)) for c in (first, second)]
        floor = pip_floor(TRAIN_LOCK)
        a_s, a_fetched, _ = timed_build(first, no_cache=True)
        made.append(str(template_context(first, "", cached_sizes(first), "heavy")["heavy_tag"]))
        b_s, b_fetched, _ = timed_build(second, no_cache=True)
        c_s, c_fetched, _ = timed_build(second, no_cache=True, reuse_heavy=True)
        report["a_cold"] = {"build_s": round(a_s, 1), "pip_install_fresh_venv_s": round(floor, 1),
                            "ratio_to_pip": round(a_s / floor, 2), "wheels_fetched": a_fetched,
                            "cache_mb": round(wheel_cache_of(first).size() / 1e6, 1)}
        report["b_one_package_apart"] = {
            "build_s": round(b_s, 1), "wheels_fetched": b_fetched,
            "ratio_to_a": round(b_s / a_s, 2), "target_ratio": 0.25, "ok": b_s <= 0.25 * a_s}
        report["c_heavy_cached"] = {"build_s": round(c_s, 1), "wheels_fetched": c_fetched,
                                    "ratio_to_a": round(c_s / a_s, 2), "target_s": 15.0,
                                    "ok": c_s <= 15.0}
        report["cache_hit"] = cache_hit(second)


def cache_hit(case: BuildInputs) -> dict[str, Any]:
    """Seconds of a rebuild of an image that exists."""
    times = []
    for _ in range(HITS):
        started = time.monotonic()
        result = build_docker(case)
        times.append(time.monotonic() - started)
        assert result.cached
    return {"runs": HITS, "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


# ---- d: warm verify overhead by stage ------------------------------------------------

STAGES = {  # cProfile function -> stage; cumulative seconds, nested ones subtracted below
    "open_store": "store open",
    "_check_verifiable": "integrity checks",
    "choose": "backend choice (engine ping)",
    "inputs_for": "lock resolution and build inputs",
    "build": "image check (cache hit)",
    "prepare": "tree copy and plan",
    "execute": "container create, start, training, wait",
    "docker:run": "  of which container create and start",
    "docker:wait": "  of which the wait for its exit",
    "docker:remove": "  of which container removal",
    "record_rerun": "rerun record and ingest",
    "evidence_from_store": "compare: evidence",
    "compare_runs": "compare",
    "decide": "verdict",
    "issue_certificate": "certificate",
}

PROFILED = """
import cProfile, json, pstats, sys, time
started = time.monotonic()
from auditor.core.policy import load_policy, policy_path
from auditor.store import open_store
from auditor.verify import VerifyOptions, verify
store = open_store(None, create=False)
record = store.get_record(store.resolve(sys.argv[1]))
policy = load_policy(policy_path(None))
ready = time.monotonic()
profile = cProfile.Profile()
profile.enable()
result = verify(store, record, policy, VerifyOptions())
profile.disable()
rerun = store.get_record(result.rerun_run)
stats = pstats.Stats(profile).stats
cum = {}
for (path, line, name), (cc, nc, tt, ct, callers) in stats.items():
    if "auditor" in path:
        cum[name] = max(cum.get(name, 0.0), ct)
    elif path.endswith("docker/models/containers.py"):
        cum["docker:" + name] = max(cum.get("docker:" + name, 0.0), ct)
print(json.dumps({"cumulative": cum, "wall_s": time.monotonic() - started,
                  "startup_s": ready - started,
                  "training_s": rerun.identity.duration_s, "seconds": result.seconds}))
"""


def warm_verify(repeat: int = 3, against: Path | None = None) -> dict[str, Any]:
    """Overhead of a warm ``audit verify`` of the bundled fixture, whole and by stage.

    Each warm verify is one ``audit --json -q verify`` process, timed three ways: its wall
    time minus the rerun's ``duration_s`` (the rerun record's own time, container start
    and ingest included: the figure of earlier runs), its wall time minus the container's
    own life (docker's ``start`` to ``die`` events: the training process alone, so
    container create/start/removal and ingest count as overhead), and its host CPU time.
    With ``against`` (another checkout), its code's verify processes alternate with this
    one's on the same store, so both see the same load."""
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        project, env = _project(Path(tmp))
        out = _sh([AUDIT, "--json", "record", "--", sys.executable, "train_mlp.py",
                   "--epochs", "6"], project, env).stdout
        run_id = json.loads(out.strip().splitlines()[-1])["id"]
        started = time.monotonic()
        _sh([AUDIT, "-q", "verify", run_id], project, env)
        first = time.monotonic() - started
        sides = {"after": env}
        if against is not None:
            sides = {"before": {**env, "PYTHONPATH": str(against.resolve())}, **sides}
            _sh([AUDIT, "-q", "verify", run_id], project, sides["before"])  # its bytecode
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(repeat):
            for side, side_env in sides.items():
                runs[side].append(_timed_verify(run_id, project, side_env))
        profiled = {side: _profiled(run_id, project, side_env)
                    for side, side_env in sides.items()}
    report = {"first_verify_s": round(first, 1), "repeat": repeat, **_summary(runs["after"]),
              "target_s": 1.0,
              "ok": statistics.median(r["overhead_s"] for r in runs["after"]) <= 1.0,
              **profiled["after"]}
    if against is not None:
        report["before"] = {"checkout": str(against), **_summary(runs["before"]),
                            **profiled["before"]}
    return report


def _profiled(run_id: str, project: Path, env: dict[str, str]) -> dict[str, Any]:
    """One more warm verify in-process under cProfile: the stages' cumulative seconds."""
    profiled = json.loads(_sh([sys.executable, "-c", PROFILED, run_id], project,
                              env).stdout.strip().splitlines()[-1])
    cum = profiled["cumulative"]
    stages = {label: round(cum.get(name, 0.0), 3) for name, label in STAGES.items()}
    stages["training inside the container (rerun's duration_s)"] = round(
        float(profiled["training_s"]), 3)
    return {"profiled_stage_cumulative_s": stages,
            "profiled_startup_s": round(profiled["startup_s"], 3),
            "profiled_wall_s": round(profiled["wall_s"], 2)}


def _timed_verify(run_id: str, project: Path, env: dict[str, str]) -> dict[str, float]:
    """One warm ``audit verify`` process: wall, host CPU, the rerun's and the container's
    own seconds."""
    cpu = _children_cpu()
    since = time.time()
    started = time.monotonic()
    res = _sh([AUDIT, "--json", "-q", "verify", run_id], project, env)
    wall = time.monotonic() - started
    cpu = _children_cpu() - cpu
    rerun = json.loads(res.stdout)["results"][0]["rerun_run"]
    shown = json.loads(_sh([AUDIT, "--json", "show", rerun], project, env).stdout)
    container = _container_life(run_id, since)
    duration = float(shown["identity"]["duration_s"])
    return {"wall_s": wall, "cpu_s": cpu, "rerun_duration_s": duration,
            "container_s": container, "overhead_s": wall - duration,
            "overhead_beyond_container_s": wall - container}


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [round(r[key], 2) for r in runs]

    return {"warm_wall_s": col("wall_s"), "warm_overhead_s": col("overhead_s"),
            "overhead_median_s": round(statistics.median(col("overhead_s")), 2),
            "overhead_beyond_container_s": col("overhead_beyond_container_s"),
            "overhead_beyond_container_median_s": round(
                statistics.median(col("overhead_beyond_container_s")), 2),
            "host_cpu_s": col("cpu_s"),
            "host_cpu_median_s": round(statistics.median(col("cpu_s")), 2),
            "container_s": col("container_s")}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _container_life(run_id: str, since: float) -> float:
    """Seconds from the rerun container's ``start`` to its ``die`` (docker's events)."""
    client = docker_client()
    try:
        at = {e["Action"]: e["timeNano"] / 1e9 for e in client.events(
            since=int(since), until=int(time.time()) + 1, decode=True,
            filters={"type": "container", "label": f"auditor.run={run_id}"})
            if e.get("Action") in ("start", "die") and e["timeNano"] / 1e9 >= since}
    finally:
        client.close()
    return at["die"] - at["start"]


def _project(tmp: Path) -> tuple[Path, dict[str, str]]:
    project = tmp / "p"
    shutil.copytree(ROOT / "fixtures" / "train", project)
    shutil.copytree(ROOT / "fixtures" / "data", project / "data")
    env = {**os.environ, "AUDITOR_STORE": f"{tmp}/store",
           # bytecode written and reused, as pip's install compiles it: without it every
           # `audit` process compiles its modules again (PYTHONDONTWRITEBYTECODE shells)
           "PYTHONPYCACHEPREFIX": f"{tmp}/pycache",
           "AUDITOR_BASE_IMAGE": "auditor-base:bookworm",
           "AUDITOR_WHEELHOUSE": str(WHEELHOUSE), "AUDITOR_CA_BUNDLE": str(CA),
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "b"]):
        _sh(["git", *cmd], project, env)
    return project, env


def _sh(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True)


@contextlib.contextmanager
def removing(tags: list[str]) -> Iterator[None]:
    """Untag the images this benchmark tagged, whatever happens."""
    try:
        yield
    finally:
        client = docker_client()
        try:
            for tag in dict.fromkeys(tags):
                with contextlib.suppress(Exception):
                    client.images.remove(tag)
        finally:
            client.close()


def baseline(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of ``checkout``'s own benchmark (its code imported first), run now."""
    flags = [f for f, on in (("--skip-builds", args.skip_builds),
                             ("--skip-verify", args.skip_verify)) if on]
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], text=True,
                            capture_output=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    subprocess.run([sys.executable, str(checkout / "bench" / "bench_build.py"), *flags],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    figures = json.loads((checkout / "bench" / "results" / "build.json").read_text())
    return {"checkout": str(checkout), "commit": commit or "(not a git checkout)", **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--skip-builds", action="store_true", help="only the warm verify")
    parser.add_argument("--skip-verify", action="store_true", help="only the builds")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="warm verifies measured (the median is reported)")
    parser.add_argument("--against", type=Path, default=None, metavar="DIR",
                        help="warm verify only: alternate each warm verify with one of DIR's "
                        "code (a checkout before a change), same store, same load")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="first run DIR's own bench/bench_build.py (a checkout of the "
                        "code before a change, with this venv) and keep its figures under "
                        "'baseline', so before and after are measured in one run")
    args = parser.parse_args()
    base = build_base_image()
    report: dict[str, Any] = {"benchmark": "build", "when": datetime.now(UTC).isoformat(),
                              "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "load_1m": round(os.getloadavg()[0], 1)}}
    if args.baseline is not None:
        report["baseline"] = baseline(args.baseline, args)
    made: list[str] = []
    with removing(made):
        if not args.skip_builds:
            builds(base, report, made)
        if not args.skip_verify:
            report["d_warm_verify"] = warm_verify(args.repeat, args.against)
    report["host"]["load_1m_after"] = round(os.getloadavg()[0], 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.skip_builds and RESULTS.exists():  # the builds' last figures kept, as they were
        kept = json.loads(RESULTS.read_text())
        report = {**kept, "d_warm_verify": {"when": report["when"], "host": report["host"],
                                            **report["d_warm_verify"]}}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
