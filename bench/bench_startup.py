"""Start-up cost of the `audit` command, beside `python -c pass` in the same run.

Every command pays the import of what it needs before it does anything; issue 10 sets
`audit --help` under 0.15 s and `audit list` over 10,000 runs under 0.25 s. A store of
10,000 runs is built once (as in bench_record.py), then each command is run `--repeat`
times (default 7) and the median wall clock is kept. `import auditor.cli.main` alone is
measured too (`python -c "import auditor.cli.main"`). Results: bench/results/startup.json.

Usage: ``python bench/bench_startup.py [--repeat 7] [--label before]`` (run it with another
checkout's venv Python for before/after figures: each venv's own `audit` is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent))

TARGETS = {"audit_help_s": 0.15, "audit_list_default_s": 0.25}


def median_wall(argv: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    from bench.bench_record import build_store

    audit = str(Path(sys.executable).parent / "audit")
    with tempfile.TemporaryDirectory() as tmp:
        build_store(Path(tmp))
        env = {**os.environ, "AUDITOR_STORE": tmp}
        cases = {
            "python_pass_s": [sys.executable, "-c", "pass"],
            "import_auditor_cli_s": [sys.executable, "-c", "import auditor.cli.main"],
            "audit_help_s": [audit, "--help"],
            "audit_version_s": [audit, "--version"],
            "audit_verify_help_s": [audit, "verify", "--help"],
            "audit_list_default_s": [audit, "list"],
            "audit_list_all_json_s": [audit, "list", "--limit", "0", "--json"],
        }
        median_wall(cases["audit_list_default_s"], env, 1)  # warm the page cache
        result: dict[str, object] = {name: median_wall(argv, env, args.repeat)
                                     for name, argv in cases.items()}
    result["runs"] = 10_000
    result["targets"] = TARGETS
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    (RESULTS / f"startup{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in cases:
        target = TARGETS.get(name)
        note = f" (target < {target} s)" if target else ""
        print(f"{name:<24} {result[name]:.3f} s{note}")


if __name__ == "__main__":
    main()
