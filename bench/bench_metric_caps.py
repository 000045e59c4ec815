"""`audit record` of a script printing one stdout line with N metric keys (issue 16 item
12: a line of 10^6 keys kept it busy past 300 s at 2 GB). Wall clock and peak RSS of the
recorder (its children included: `ru_maxrss` of the children) for each N, and how many
keys the record kept (capped per line and per run: record/wrap.py). Results:
bench/results/metric_caps[-LABEL].json.

Usage: ``python bench/bench_metric_caps.py [--keys 1000 100000 1000000] [--label after]``
(run it with another checkout's venv Python for a before figure; `--timeout` bounds each).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPT = ("import json, sys\n"
          "n = int(sys.argv[1])\n"
          "print(json.dumps({'step': 0, **{f'k{i}': i for i in range(n)}}))\n")


def one(keys: int, timeout: float) -> dict[str, object]:
    audit = str(Path(sys.executable).with_name("audit"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "m.py").write_text(SCRIPT)
        env = {**os.environ, "AUDITOR_STORE": str(root / "store")}
        start = time.perf_counter()
        try:
            res = subprocess.run([audit, "--json", "record", "-q", "--", sys.executable, "m.py",
                                  str(keys)], cwd=root, env=env, capture_output=True, text=True,
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"keys": keys, "wall_s": None, "timed_out_after_s": timeout}
        wall = time.perf_counter() - start
        run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
        shown = subprocess.run([audit, "--json", "show", run_id], cwd=root, env=env,
                               capture_output=True, text=True, check=True)
        kept = len(json.loads(shown.stdout)["metrics"]["final"])
    return {"keys": keys, "wall_s": round(wall, 2), "kept_keys": kept,
            "exit_code": res.returncode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    rows = [one(n, args.timeout) for n in args.keys]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    out = {"rows": rows, "peak_rss_mib_of_any_child": peak, "python": sys.version.split()[0]}
    RESULTS.mkdir(exist_ok=True)
    name = f"metric_caps{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
