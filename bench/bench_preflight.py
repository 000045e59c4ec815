"""Wall time and findings of `audit preflight` on the project's fixtures and on real public
training scripts we did not write.

Cases:

- ``fixtures/train/train_mlp.py``, ``train_api.py``, ``train_timed.py`` and
  ``fixtures/sweep/train_sweep.py``, each copied with ``requirements.lock`` and the data
  into a fresh git repository (``.gitignore``: ``outputs/``, ``.auditor/``), run by a venv
  installed from that lock (``pip install --require-hashes --no-deps``; made once, about
  2 minutes, kept in ``~/.cache/auditor-bench/``; ``--fixture-python`` names another), and
  once more by this venv's Python, which holds far more than the lock (the drift case).
- pytorch/examples (https://github.com/pytorch/examples, BSD-3-Clause), cloned from a
  local mirror (``--examples``, default ``/work/.mirror/pytorch+examples/repo``; the
  commit is recorded): ``mnist/main.py`` (DataLoader workers built in a dict,
  ``torch.manual_seed(args.seed)``, ``datasets.MNIST('../data', download=True)``),
  ``imagenet/main.py`` (``cudnn.benchmark``/``deterministic`` under ``--seed``, which
  defaults to None; ``num_workers=args.workers``) and ``word_language_model/main.py``
  (imports its local ``data.py`` and ``model.py``).

Each case runs the real ``audit preflight --json -- python SCRIPT`` ``--repeat`` times
(default 5); the median wall clock, the per-check seconds of the last run and its findings
are kept in bench/results/preflight.json. The engine check talks to this host's engine,
with ``--base-image`` ``$AUDITOR_BASE_IMAGE`` when set.

Usage: ``python bench/bench_preflight.py [--repeat 5] [--examples PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
FIXTURES = REPO / "fixtures"
DEFAULT_EXAMPLES = Path("/work/.mirror/pytorch+examples/repo")
SPARSE = ("/.gitignore", "/mnist/", "/imagenet/", "/word_language_model/*.py",
          "/word_language_model/requirements.txt")
GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV}).stdout


def fixture_repo(parent: Path) -> Path:
    root = parent / "fixtures-train"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for name in ("train_mlp.py", "train_api.py", "train_timed.py", "requirements.lock"):
        shutil.copy(FIXTURES / "train" / name, root)
    shutil.copy(FIXTURES / "sweep" / "train_sweep.py", root)
    (root / "data").mkdir()
    shutil.copy(FIXTURES / "data" / "blobs.csv", root / "data")
    (root / ".gitignore").write_text("outputs/\n.auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixtures")
    return root


def fixture_python(given: Path | None) -> Path:
    """A venv installed from fixtures/train/requirements.lock (made once, then reused)."""
    if given is not None:
        return given
    lock = FIXTURES / "train" / "requirements.lock"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "auditor-bench" / f"fixture-env-{digest}"
    python = folder / "bin" / "python"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--require-hashes",
                        "--no-deps", "-r", str(lock)], check=True)
        (folder / "done").write_text("")
    return python


def examples_repo(parent: Path, source: Path) -> tuple[Path, str] | None:
    if not source.exists():
        return None
    dest = parent / "examples"
    git(parent, "clone", "-q", "--no-checkout", str(source), str(dest))
    # only what the cases read (the mirror leaves out the largest data files)
    git(dest, "sparse-checkout", "set", "--no-cone", *SPARSE)
    git(dest, "checkout", "-q")
    return dest, git(dest, "rev-parse", "HEAD").strip()


def measure(cwd: Path, argv: list[str], repeat: int) -> dict[str, Any]:
    audit = str(Path(sys.executable).parent / "audit")
    base = os.environ.get("AUDITOR_BASE_IMAGE")
    cmd = [audit, "preflight", "--json", *(["--base-image", base] if base else []), "--",
           *argv]
    times, report = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(f"preflight failed in {cwd}: {done.stderr.strip()}")
        report = json.loads(done.stdout)
    return {
        "cwd": cwd.name, "command": argv[1:], "wall_s_median": round(statistics.median(times), 3),
        "wall_s_min": round(min(times), 3), "exit": 0 if report["rerunnable"] else 1,
        "source_files": len(report["source_files"]),
        "check_s": {c["check"]: round(c["seconds"], 3) for c in report["checks"]},
        "findings": [f"{f['check']}: {f['problem']}" for f in report["findings"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES)
    parser.add_argument("--fixture-python", type=Path, default=None)
    args = parser.parse_args()
    python = sys.executable
    own = str(fixture_python(args.fixture_python))
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = fixture_repo(Path(tmp))
        for script in ("train_mlp.py", "train_api.py", "train_timed.py", "train_sweep.py"):
            cases[f"fixtures/{script}"] = measure(root, [own, script], args.repeat)
        cases["fixtures/train_mlp.py, drifted venv"] = measure(root, [python, "train_mlp.py"],
                                                               args.repeat)
        cloned = examples_repo(Path(tmp), args.examples)
        commit = None
        if cloned is not None:
            ex, commit = cloned
            for folder in ("mnist", "imagenet", "word_language_model"):
                cases[f"pytorch/examples/{folder}/main.py"] = measure(
                    ex / folder, [python, "main.py"], args.repeat)
    result = {
        "cases": cases,
        "examples_source": "https://github.com/pytorch/examples",
        "examples_commit": commit,
        "python": python,
        "fixture_python": own,
        "base_image": os.environ.get("AUDITOR_BASE_IMAGE"),
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "preflight.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, case in cases.items():
        print(f"{name}: {case['wall_s_median']} s, exit {case['exit']}, "
              f"{len(case['findings'])} finding(s)")


if __name__ == "__main__":
    main()
