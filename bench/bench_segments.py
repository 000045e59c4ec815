"""A 20-segment run: the time of a full `audit verify` vs `audit verify --segments 2`, as a
ratio measured in one run of this script (issue 19; target: at most 12%).

    python bench/bench_segments.py [--hidden 1024] [--updates 1] [--repeats N] [--out FILE]
        # writes bench/results/segments.json

Records ``bench/segments_fixture/train_heavy.py`` (the checkpoint pattern of
``fixtures/ckpt`` with a step that costs something: 20 epochs x 5 steps, a checkpoint per
epoch, 20 segments) in a throwaway git project, builds its image once (`audit build`, not
timed), then times, alternately, ``REPEATS`` full verifications, ``REPEATS`` spot-checks
of 2 segments (fixed seeds) and the same spot-checks with ``AUDITOR_SEGMENT_JOBS=1`` (the
segments one after the other, as before they replayed concurrently), each the wall time of
the whole `audit verify` process on the same docker engine. Besides the ratio it reports
the replay stage's fixed cost (its wall time, the chosen segments replaying concurrently,
minus their share of the training; per segment: each replay's own time, which overlap)
and, from the measured costs, the training length from which ``--segments 2`` stays within
the target, and the host's load average (a shared machine: other work slows the two sides
unevenly). Needs a docker engine and the base image (`bash .ci/docker-setup.sh`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AUDIT = str(Path(sys.executable).parent / "audit")
RESULTS = REPO / "bench" / "results" / "segments.json"
REPEATS = 1
TARGET = 0.12


def sh(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True)


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    out = sh(argv, cwd, env).stdout
    seconds = time.perf_counter() - start
    return seconds, json.loads(out)["results"][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024,
                        help="the training's width: what one step costs")
    parser.add_argument("--updates", type=int, default=1,
                        help="optimizer updates per logged step: the training's length "
                             "without larger checkpoints")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="alternating pairs of verifications (medians reported)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the figures go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "p"
        shutil.copytree(REPO / "bench" / "segments_fixture", project)
        env = {
            **os.environ,
            "AUDITOR_STORE": f"{tmp}/store",
            "AUDITOR_BASE_IMAGE": os.environ.get("AUDITOR_BASE_IMAGE", "auditor-base:bookworm"),
            "AUDITOR_WHEELHOUSE": os.environ.get("PIP_FIND_LINKS", "/opt/wheels"),
            "AUDITOR_CA_BUNDLE": os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"),
            "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
            "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
        }
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "b"]):
            sh(["git", *cmd], project, env)
        out = sh([AUDIT, "--json", "record", "--", sys.executable, "train_heavy.py",
                  "--hidden", str(args.hidden), "--repeat", str(args.updates)],
                 project, env).stdout
        run_id = json.loads(out.strip().splitlines()[-1])["id"]
        shown = json.loads(sh([AUDIT, "--json", "show", run_id], project, env).stdout)
        training = float(shown["identity"]["duration_s"])
        sh([AUDIT, "-q", "build", run_id], project, env)  # the image, once, not timed
        full: list[float] = []
        spot: list[float] = []
        serial: list[float] = []  # the same spot-check, its segments one after the other
        replays: list[float] = []
        stages: list[float] = []
        fractions: list[float] = []
        load = os.getloadavg()[0]
        for i in range(args.repeats):
            seconds, _ = timed([AUDIT, "--json", "verify", run_id], project, env)
            full.append(seconds)
            seconds, result = timed([AUDIT, "--json", "verify", run_id, "--segments", "2",
                                     "--segment-seed", f"bench-{i}"], project, env)
            spot.append(seconds)
            replays += [float(s["seconds"]) for s in result["segments"]]
            stages.append(float(result["seconds"]["rerun"]))
            fractions.append(float(result["spot_check"]["fraction"]))
            seconds, _ = timed([AUDIT, "--json", "verify", run_id, "--segments", "2",
                                "--segment-seed", f"bench-{i}"], project,
                               {**env, "AUDITOR_SEGMENT_JOBS": "1"})
            serial.append(seconds)
        ratio = statistics.median(spot) / statistics.median(full)
        per_segment = training / 20
        stage = statistics.median(stages)
        fixed = stage - 2 * per_segment  # the replay stage beyond its training
        rest = statistics.median(spot) - stage  # verify's own work around the replays
        overhead_full = statistics.median(full) - training
        # (rest + fixed + 2 T/20) / (overhead_full + T) <= TARGET, solved for T (segments
        # replayed one after the other: an upper bound, when they overlap their training)
        slack = TARGET - 2 / 20
        break_even = ((rest + fixed - TARGET * overhead_full) / slack
                      if slack > 0 else float("inf"))
        figures = {
            "bench": "bench_segments",
            "what": "wall time of `audit verify RUN --segments 2` / `audit verify RUN` "
                    "(20 segments, image built), medians of alternating runs",
            "machine": f"{platform.machine()} {os.cpu_count()} cpus; docker",
            "load_average_1min_at_start": round(load, 2),
            "fixture": f"bench/segments_fixture/train_heavy.py --hidden {args.hidden} "
                       f"--repeat {args.updates} "
                       "(20 epochs x 5 steps, a checkpoint per epoch: 20 segments)",
            "training_recorded_s": round(training, 2),
            "full_verify_s": [round(x, 2) for x in full],
            "segments2_verify_s": [round(x, 2) for x in spot],
            "segments2_one_at_a_time_verify_s": [round(x, 2) for x in serial],
            "ratio_one_at_a_time": round(statistics.median(serial) / statistics.median(full),
                                         4),
            "segment_replay_s": [round(x, 2) for x in replays],
            "replay_stage_s": [round(x, 2) for x in stages],
            "replayed_fraction": statistics.median(fractions),
            "replay_stage_fixed_cost_s": round(fixed, 2),
            "verify_rest_s": round(rest, 2),
            "full_verify_overhead_s": round(overhead_full, 2),
            "training_length_for_target_s": round(break_even, 1),
            "ratio": round(ratio, 4),
            "target": TARGET,
            "meets_target": ratio <= TARGET,
        }
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
