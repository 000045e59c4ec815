"""A project without its own lockfile: what `audit build --print`, `audit build` and
`audit verify` cost when the lock must be derived from the installed set and hashed by
pip-compile (issue 10: 185 s for the first build, then > 60 s for every later call).

The training interpreter is this venv's (about 100 packages, as a real project's). A run
of a one-line script is recorded, then each command is timed twice: the first call
compiles the derived lock, the second must reuse it. `--audit PATH` times another
checkout's `audit` (e.g. main before the change) for before/after figures; `--no-verify`
skips the verify pair (it builds a venv of every package). Results:
bench/results/derived_lock[-LABEL].json.

Usage: ``python bench/bench_derived_lock.py [--audit PATH] [--label before] [--no-verify]
[--python .demo-env/<digest>/bin/python]`` (the demo's training venv: 13 packages, torch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GIT = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - start, 3)
    if done.returncode not in (0, 1):
        print(done.stderr[-2000:], file=sys.stderr)
    return seconds, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audit", default=str(Path(sys.executable).parent / "audit"))
    parser.add_argument("--label", default="")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--python", default=sys.executable,
                        help="the training interpreter (default: this venv's, ~100 packages)")
    args = parser.parse_args()
    audit = args.audit
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "proj"
        repo.mkdir()
        (repo / "t.py").write_text("print('{\"step\": 0, \"loss\": 1.0}')\n")
        (repo / ".gitignore").write_text(".auditor/\n")
        env = {**os.environ, **GIT, "AUDITOR_STORE": str(Path(tmp) / "store")}
        if os.environ.get("PIP_FIND_LINKS"):
            env.setdefault("AUDITOR_WHEELHOUSE", os.environ["PIP_FIND_LINKS"].split()[0])
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
            subprocess.run(["git", *cmd], cwd=repo, env=env, check=True)
        made = subprocess.run([audit, "--json", "record", "--", args.python, "t.py"],
                              cwd=repo, env=env, capture_output=True, text=True, check=True)
        run_id = json.loads(made.stdout.strip().splitlines()[-1])["id"]
        packages = len(json.loads(subprocess.run(
            [audit, "--json", "show", run_id], cwd=repo, env=env, capture_output=True,
            text=True, check=True).stdout)["environment"]["python"]["packages"])
        result: dict[str, object] = {"audit": audit, "installed_packages": packages}
        steps = [("build_print", ["build", run_id, "--print", "--backend", "venv"]),
                 ("build", ["build", run_id, "--backend", "venv"])]
        if not args.no_verify:
            steps.append(("verify", ["verify", run_id, "--backend", "venv"]))
        for name, argv in steps:
            for call in ("first", "second"):
                seconds, code = timed([audit, *argv], repo, env)
                result[f"{name}_{call}_s"] = seconds
                result[f"{name}_{call}_exit"] = code
                print(f"{name:<12} {call:<6} {seconds:8.2f} s (exit {code})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-{args.label}" if args.label else ""
    (RESULTS / f"derived_lock{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
