"""How much `audit verify` adds beyond the rerun's own training time, image already built.

    python bench/bench_verify.py     # writes bench/results/verify.json

Records the bundled fixture (6 epochs) in a throwaway git project, verifies it once to
build the image (cold; reported), then verifies it 3 more times warm. The overhead is the
wall time of the whole `audit verify` process minus the training's own duration as
recorded in the original run (its `duration_s`, measured around the same script). Needs a
docker engine and the base image (`bash .ci/docker-setup.sh`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUDIT = str(Path(sys.executable).parent / "audit")


def sh(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "p"
        shutil.copytree(REPO / "fixtures" / "train", project)
        shutil.copytree(REPO / "fixtures" / "data", project / "data")
        env = {
            **os.environ,
            "AUDITOR_STORE": f"{tmp}/store",
            "AUDITOR_BASE_IMAGE": "auditor-base:bookworm",
            "AUDITOR_WHEELHOUSE": os.environ.get("PIP_FIND_LINKS", "/opt/wheels"),
            "AUDITOR_CA_BUNDLE": os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"),
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@b",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b",
        }
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "b"]):
            sh(["git", *cmd], project, env)
        out = sh(
            [AUDIT, "--json", "record", "--", sys.executable, "train_mlp.py", "--epochs", "6"],
            project,
            env,
        ).stdout
        run_id = json.loads(out.strip().splitlines()[-1])["id"]
        shown = json.loads(sh([AUDIT, "--json", "show", run_id], project, env).stdout)
        training = float(shown["identity"]["duration_s"])
        start = time.perf_counter()
        sh([AUDIT, "-q", "verify", run_id], project, env)
        first = time.perf_counter() - start
        walls, stages = [], []
        for _ in range(3):
            start = time.perf_counter()
            res = sh([AUDIT, "--json", "-q", "verify", run_id], project, env)
            walls.append(time.perf_counter() - start)
            stages.append(json.loads(res.stdout)["results"][0]["seconds"])
    wall = statistics.median(walls)
    result = {
        "training_s": training,
        "first_verify_s": first,
        "warm_verify_wall_s": walls,
        "warm_stage_seconds": stages,
        "overhead_s": wall - training,
    }
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "verify.json").write_text(json.dumps(result, indent=2))
    print(
        f"training {training:.1f} s; verify (image built) {wall:.1f} s median wall; "
        f"overhead {wall - training:.1f} s (target <= 10 s); first verify {first:.1f} s"
    )


if __name__ == "__main__":
    main()
