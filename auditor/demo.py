"""``make demo``: the whole loop on the bundled example, with the real ``audit`` command.

It copies ``fixtures/train`` (a tiny torch MLP with its hashed lockfile) and its data into
``demo-out/project``, makes that a git repository with one commit, records a training run
with ``audit record``, and shows what was recorded. Each command is printed before it
runs, so the output doubles as a tutorial.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out"


def sh(*argv: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> int:
    """Print and run one command."""
    print(f"\n$ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, cwd=cwd, check=check, env=env).returncode


def prepare() -> Path:
    """A fresh git project holding the example."""
    project = OUT / "project"
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(
        REPO / "fixtures" / "train",
        project,
        ignore=shutil.ignore_patterns("__pycache__", "requirements.in"),
    )
    shutil.copytree(REPO / "fixtures" / "data", project / "data")
    (project / ".gitignore").write_text("outputs/\n.auditor/\n")
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        [
            "-c",
            "user.name=demo",
            "-c",
            "user.email=demo@example.invalid",
            "commit",
            "-q",
            "-m",
            "example",
        ],
    ):
        subprocess.run(["git", *cmd], cwd=project, check=True)
    return project


def main() -> int:
    """Run the demo."""
    project = prepare()
    audit = str(Path(sys.executable).parent / "audit")
    env = {**os.environ, "AUDITOR_STORE": str(OUT / "store"), "OMP_NUM_THREADS": "2"}
    sh(
        audit,
        "record",
        "--name",
        "mlp-demo",
        "--input",
        "data/blobs.csv",
        "--output",
        "outputs",
        "--",
        sys.executable,
        "train_mlp.py",
        "--data",
        "data/blobs.csv",
        "--seed",
        "42",
        "--epochs",
        "6",
        "--lr",
        "0.05",
        cwd=project,
        env=env,
    )
    sh(audit, "list", cwd=project, env=env)
    run_id = subprocess.run(
        [audit, "--json", "list", "--limit", "1"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    rid = json.loads(run_id)[0]["id"]
    sh(audit, "show", rid[:10], cwd=project, env=env)
    print(f"\nstore: {OUT / 'store'}  (AUDITOR_STORE={OUT / 'store'} audit show {rid[:10]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
