"""8 verifications of the fixture training: one after another on one node (`audit verify
--all`) against the same 8 on the local 2-node Ray cluster (`--executor ray://…`), and the
same on the local one-node Slurm when it can start here (issue 21, Performance).

    python bench/bench_executors.py     # writes bench/results/executors.json

The 8 runs (fixtures/train/train_mlp.py, seeds 0-7) are recorded once; the store is then
copied so each mode verifies the same unverified runs. Every mode uses the venv backend in
bubblewrap, warmed first (the venv of the lock is built once, outside the timings). The
clusters come from tests/engines.py (each node 1 CPU: on 2 cores the ceiling is about 2x).

- ratio: sequential wall / executor wall.
- overhead per job: (executor wall x 2 slots - sequential wall) / jobs: what each job
  costs beyond its share of the sequential work (submission, scheduling, Ray's runtime
  environment, the worker's `audit` start, polling), with the 2 slots sharing 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
AUDIT = str(Path(sys.executable).parent / "audit")
RUNS = 8
EPOCHS = "3"


def sh(argv: list[str], cwd: Path, env: dict[str, str],
       ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode not in ok:
        raise RuntimeError(f"{argv[:4]} exit {done.returncode}: {done.stderr[-2000:]}")
    return done


def _project(tmp: Path, env: dict[str, str]) -> Path:
    project = tmp / "p"
    shutil.copytree(REPO / "fixtures" / "train", project)
    shutil.copytree(REPO / "fixtures" / "data", project / "data")
    (project / ".gitignore").write_text("outputs/\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "b"]):
        sh(["git", *cmd], project, env)
    return project


def _store_env(env: dict[str, str], store: Path) -> dict[str, str]:
    return {**env, "AUDITOR_STORE": str(store)}


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    done = sh(argv, cwd, env, ok=(0, 1, 3))
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    from tests.engines import ray_cluster, slurm_cluster, slurm_missing

    tmp = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    os.chmod(tmp, 0o755)
    env = {**os.environ, "NO_COLOR": "1",
           "AUDITOR_WHEELHOUSE": os.environ.get("PIP_FIND_LINKS", "/opt/wheels"),
           "AUDITOR_CA_BUNDLE": os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"),
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    result: dict[str, Any] = {"runs": RUNS, "epochs": int(EPOCHS), "backend": "venv",
                              "cores": os.cpu_count()}
    try:
        project = _project(tmp, env)
        recorded = tmp / "recorded"
        warm = tmp / "warm"
        for store, seeds, tag in ((recorded, range(RUNS), "bench"), (warm, [99], "warm")):
            for seed in seeds:
                sh([AUDIT, "--json", "record", "--tag", tag, "--", sys.executable,
                    "train_mlp.py", "--epochs", EPOCHS, "--seed", str(seed)], project,
                   _store_env(env, store))
        # the venv of the lock, built once, outside the timings
        sh([AUDIT, "-q", "verify", "--all", "--backend", "venv"], project,
           _store_env(env, warm), ok=(0, 1))
        copies = {m: tmp / f"store-{m}" for m in ("sequential", "ray", "slurm")}
        for copy in copies.values():
            shutil.copytree(recorded, copy)

        wall, shown = _timed([AUDIT, "--json", "-q", "verify", "--all", "--backend", "venv"],
                             project, _store_env(env, copies["sequential"]))
        per_run = [r["seconds"]["total"] for r in shown["results"]]
        result["sequential"] = {"wall_s": wall, "verified": len(per_run),
                                "mean_verify_s": sum(per_run) / max(len(per_run), 1)}
        print(f"sequential: {wall:.1f} s for {len(per_run)} runs", flush=True)

        with ray_cluster(env={"AUDITOR_WHEELHOUSE": env["AUDITOR_WHEELHOUSE"],
                              "AUDITOR_CA_BUNDLE": env["AUDITOR_CA_BUNDLE"]}, cpus=1) as ray:
            wall, shown = _timed([AUDIT, "--json", "-q", "verify", "--all", "--backend",
                                  "venv", "--executor", ray.address], project,
                                 _store_env(env, copies["ray"]))
        result["ray"] = _executor_figures(wall, shown, result["sequential"], slots=2)
        print(f"ray: {wall:.1f} s, ratio {result['ray']['ratio']:.2f}x", flush=True)

        why = slurm_missing()
        if why:
            result["slurm"] = {"skipped": why}
        else:
            with slurm_cluster(cpus=2) as slurm:
                wall, shown = _timed([AUDIT, "--json", "-q", "verify", "--all", "--backend",
                                      "venv", "--executor", "slurm"], project,
                                     {**_store_env(env, copies["slurm"]), **slurm.env})
            result["slurm"] = _executor_figures(wall, shown, result["sequential"], slots=2)
            print(f"slurm: {wall:.1f} s, ratio {result['slurm']['ratio']:.2f}x", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_after"] = list(os.getloadavg())  # the 2 cores are shared
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "executors.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _executor_figures(wall: float, shown: dict[str, Any], sequential: dict[str, Any],
                      slots: int) -> dict[str, Any]:
    """``slots`` jobs run at once: the ideal wall is the sequential one / slots, and what
    the executor adds per job is (wall x slots - sequential wall) / jobs."""
    jobs = shown["jobs"]
    seconds = [j["seconds"] for j in jobs if j["seconds"] is not None]
    mean_job = sum(seconds) / max(len(seconds), 1)
    return {"wall_s": wall, "slots": slots, "ratio": sequential["wall_s"] / wall,
            "ideal_ratio": float(slots),
            "verdicts": sorted({j["verdict"] for j in jobs}), "jobs": len(jobs),
            "mean_job_s": mean_job,
            "overhead_per_job_s": (wall * slots - sequential["wall_s"]) / max(len(jobs), 1)}


if __name__ == "__main__":
    main()
