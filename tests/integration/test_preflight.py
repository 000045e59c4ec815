"""`audit preflight` on real projects: git repositories holding a small stdlib training
script, run by a real virtualenv whose hashed lock the project keeps; each check made to
fire the way users trip it, and a clean project passing. The engine check talks to the
real docker engine (or to a dead socket)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AUDIT, GIT_ENV, audit, commit_repo, git

TRAIN = '''"""A tiny seeded training loop: fits a line to data/points.csv."""
import argparse
import json
import random

from helpers.model import Line

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--data", default="data/points.csv")
ap.add_argument("--out", default="outputs")
args = ap.parse_args()
random.seed(args.seed)
rows = [tuple(map(float, r.split(","))) for r in open(args.data).read().split()]
line = Line()
for step in range(20):
    x, y = random.choice(rows)
    line.update(x, y)
    print(json.dumps({"step": step, "loss": line.loss(rows)}))
'''
MODEL = '''from .optim import sgd


class Line:
    def __init__(self) -> None:
        self.a = 0.0

    def update(self, x: float, y: float) -> None:
        self.a = sgd(self.a, (self.a * x - y) * x)

    def loss(self, rows: list[tuple[float, float]]) -> float:
        return sum((self.a * x - y) ** 2 for x, y in rows) / len(rows)
'''
OPTIM = "def sgd(w: float, g: float) -> float:\n    return w - 0.01 * g\n"
CODE_ONLY = ("engine", "lockfile")
POINTS = "".join(f"{x},{2 * x + 1}\n" for x in range(10))


@pytest.fixture(scope="session")
def venv_lock(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real virtualenv (pip and setuptools from ensurepip) and a hashed lock of exactly
    what it holds: each bundled wheel's name, version and sha256."""
    folder = tmp_path_factory.mktemp("pf") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    bundled = subprocess.run(
        [str(python), "-c", "import ensurepip, os; print(os.path.join(os.path.dirname("
         "ensurepip.__file__), '_bundled'))"], capture_output=True, text=True, check=True)
    lines = ["# the test venv's packages, hashed from the wheels ensurepip installed\n"]
    for wheel in sorted(Path(bundled.stdout.strip()).glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
    return python, "".join(lines)


def make_project(tmp_path: Path, lock: str | None, *, train: str = TRAIN,
                 ignore: str = "outputs/\n.auditor/\n", extra: dict[str, str] | None = None,
                 untracked: dict[str, str] | None = None) -> Path:
    files = {"train.py": train, "helpers/__init__.py": "", "helpers/model.py": MODEL,
             "helpers/optim.py": OPTIM, "data/points.csv": POINTS, ".gitignore": ignore,
             **(extra or {})}
    if lock is not None:
        files["requirements.lock"] = lock
    root = commit_repo(tmp_path / "proj", files)
    for rel, text in (untracked or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def preflight(root: Path, python: Path, *args: str, skip: tuple[str, ...] = ("engine",),
              env: dict[str, str] | None = None, script: str = "train.py"
              ) -> tuple[int, dict[str, Any], str]:
    """`audit preflight --json [--skip CHECK]... ARGS -- PYTHON SCRIPT`: exit, report,
    stderr. The engine check is left out unless a test is about it, the lockfile check
    (which asks the venv for its packages) where a test is about the code."""
    skipped = [w for name in skip for w in ("--skip", name)]
    res = subprocess.run([AUDIT, "preflight", "--json", *skipped, *args, "--", str(python),
                          script], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **GIT_ENV} if env is None else env, check=False)
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


def failed(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in report["findings"]:
        found.setdefault(item["check"], []).append(item)
    return found


@pytest.mark.docker
def test_a_clean_project_is_rerunnable(tmp_path: Path, venv_lock: tuple[Path, str],
                                       base_image: tuple[str, str]) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path, lock)
    code, report, _ = preflight(root, python, "--base-image", base_image[0],
                                skip=())
    assert (code, report["findings"]) == (0, []), report
    assert report["rerunnable"] is True
    assert [c["status"] for c in report["checks"]] == ["ok"] * 7
    assert sorted(report["source_files"]) == ["helpers/__init__.py", "helpers/model.py",
                                              "helpers/optim.py", "train.py"]
    text = audit("preflight", "--base-image", base_image[0], "--", str(python), "train.py",
                 cwd=root)
    assert text.returncode == 0 and "re-runnable: every check passed" in text.stdout


def test_an_imported_module_git_ignores_is_named(tmp_path: Path,
                                                 venv_lock: tuple[Path, str]) -> None:
    # helpers/optim.py is reached only through a relative import in helpers/model.py
    python, lock = venv_lock
    root = make_project(tmp_path, lock, ignore="outputs/\nhelpers/optim.py\n")
    code, report, _ = preflight(root, python, skip=CODE_ONLY)
    found = failed(report)
    assert code == 1 and list(found) == ["ignored-source"], report
    assert found["ignored-source"][0]["where"] == "helpers/optim.py"
    assert "git add -f helpers/optim.py" in found["ignored-source"][0]["fix"]
    # a file git ignores but that is tracked is in the rebuilt tree: nothing to say
    root2 = make_project(tmp_path / "b", lock, ignore="outputs/\nhelpers/optim.py\n")
    git(root2, "add", "-f", "helpers/optim.py")
    git(root2, "commit", "-q", "-m", "track optim")
    assert preflight(root2, python, skip=CODE_ONLY)[0] == 0


def test_no_lockfile_and_a_drifting_one(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    code, report, _ = preflight(make_project(tmp_path / "a", None), python)
    assert code == 1 and [f["check"] for f in report["findings"]] == ["lockfile"]
    assert "no lockfile" in report["findings"][0]["problem"]
    assert "audit lock" in report["findings"][0]["fix"]
    # a lock pinning another setuptools than the venv has (an upgrade never re-locked)
    drifted = "".join(line.replace("setuptools==", "setuptools==0.0.") if
                      line.startswith("setuptools==") else line
                      for line in lock.splitlines(keepends=True))
    assert drifted != lock
    code, report, _ = preflight(make_project(tmp_path / "b", drifted), python)
    (finding,) = report["findings"]
    assert code == 1 and finding["check"] == "lockfile"
    assert any(d.startswith("setuptools: locked 0.0.") for d in finding["details"]), finding
    # an unhashed lock is refused by the rebuild: said before
    bare = "".join(line.split(" \\")[0] + "\n" for line in lock.splitlines()
                   if "==" in line)
    code, report, _ = preflight(make_project(tmp_path / "c", bare), python)
    assert code == 1 and "not hashed" in report["findings"][0]["problem"]


def test_unseeded_and_clock_seeded_scripts(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path / "a", lock, train=TRAIN.replace("random.seed(args.seed)\n", ""))
    code, report, _ = preflight(root, python, skip=CODE_ONLY)
    assert code == 1 and [f["check"] for f in report["findings"]] == ["seed"]
    assert report["findings"][0]["problem"].startswith("no seed is set in train.py and the 3")
    clock = TRAIN.replace("random.seed(args.seed)", "import time\nrandom.seed(time.time_ns())")
    code, report, _ = preflight(make_project(tmp_path / "b", lock, train=clock), python,
                                skip=CODE_ONLY)
    assert code == 1 and "clock" in report["findings"][0]["problem"]
    # imagenet's pattern: seeded only when --seed is given, and it defaults to None
    optional = TRAIN.replace('"--seed", type=int, default=0', '"--seed", type=int')
    root = make_project(tmp_path / "c", lock, train=optional)
    code, report, _ = preflight(root, python, skip=CODE_ONLY)
    assert code == 1 and "defaults to None" in report["findings"][0]["problem"]
    res = audit("preflight", "--skip", "engine", "--skip", "lockfile", "--", str(python),
                "train.py", "--seed", "3", cwd=root)
    assert res.returncode == 0, res.stdout


LOADER = '''import torch
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
ds = TensorDataset(torch.arange(8.0))
{loader}
'''


@pytest.mark.parametrize(("loader", "fires"), [
    ("dl = DataLoader(ds, batch_size=4, num_workers=2)", True),
    ("kw = {'batch_size': 4}\nkw.update({'num_workers': 2, 'shuffle': True})\n"
     "dl = DataLoader(ds, **kw)", True),  # pytorch/examples mnist's pattern
    ("g = torch.Generator()\ng.manual_seed(0)\n"
     "dl = DataLoader(ds, batch_size=4, num_workers=2, generator=g)", False),
    ("dl = DataLoader(ds, batch_size=4, num_workers=0)", False),
    ("dl = DataLoader(ds, batch_size=4)", False),
])
def test_data_loader_workers_need_a_seeded_generator(
        tmp_path: Path, venv_lock: tuple[Path, str], loader: str, fires: bool) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path, lock, extra={"load.py": LOADER.format(loader=loader)})
    code, report, _ = preflight(root, python, script="load.py", skip=CODE_ONLY)
    assert [f["check"] for f in report["findings"]] == (["dataloader"] if fires else [])
    assert code == (1 if fires else 0)


def test_nondeterministic_settings(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    gpu = ("import torch\ntorch.manual_seed(0)\ntorch.backends.cudnn.benchmark = True\n"
           "device = 'cuda' if torch.cuda.is_available() else 'cpu'\n")
    root = make_project(tmp_path, lock, extra={"gpu.py": gpu})
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code, report, _ = preflight(root, python, script="gpu.py", env=env, skip=CODE_ONLY)
    problems = [f["problem"] for f in report["findings"]]
    assert code == 1 and {f["check"] for f in report["findings"]} == {"determinism"}
    assert len(problems) == 3, problems
    assert "gpu.py:3 turns cudnn.benchmark on" in problems[0]
    assert "never turns on deterministic algorithms" in problems[1]
    assert "CUBLAS_WORKSPACE_CONFIG is unset" in problems[2]
    fixed = gpu.replace("benchmark = True", "benchmark = False") + \
        "torch.use_deterministic_algorithms(True)\n"
    (root / "gpu.py").write_text(fixed)
    code, report, _ = preflight(root, python, script="gpu.py", skip=CODE_ONLY,
                                env={**env, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert (code, report["findings"]) == (0, [])


def test_undeclared_input_that_git_ignores(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path, lock, ignore="outputs/\ndata/\n")
    code, report, _ = preflight(root, python, skip=CODE_ONLY)
    (finding,) = report["findings"]
    assert code == 1 and finding["check"] == "inputs"
    assert finding["problem"].startswith("data/points.csv is read by the command (default of "
                                         "--data, train.py:")
    assert finding["fix"] == "declare it: audit record --input data/points.csv -- …"
    assert preflight(root, python, "--input", "data", skip=CODE_ONLY)[0] == 0
    # on the command line too, and a download at run time
    (root / "fetch.py").write_text("import random\nrandom.seed(1)\nfrom torchvision import "
                                   "datasets\ndatasets.MNIST('../mnist', download=True)\n")
    code, report, _ = preflight(root, python, script="fetch.py", skip=CODE_ONLY)
    assert [f["check"] for f in report["findings"]] == ["inputs"]
    assert "downloads data at run time into ../mnist" in report["findings"][0]["problem"]


def test_no_engine_answering(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path, lock)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/dead.sock"}
    code, report, _ = preflight(root, python, skip=("lockfile",), env=env)
    (finding,) = report["findings"]
    assert code == 1 and finding["check"] == "engine"
    assert finding["problem"].startswith(f"no docker engine answers at unix://{tmp_path}")
    assert "start dockerd" in finding["fix"]


def test_json_schema(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    import jsonschema

    from auditor.preflight import PreflightReport

    python, _lock = venv_lock
    root = make_project(tmp_path, None, train=TRAIN.replace("random.seed(args.seed)\n", ""))
    code, report, _ = preflight(root, python)
    jsonschema.validate(report, PreflightReport.model_json_schema())
    assert set(report) == {"schema_version", "rerunnable", "root", "command", "entry",
                           "source_files", "checks", "findings", "notes", "seconds"}
    assert report["schema_version"] == 1 and report["rerunnable"] is False and code == 1
    assert report["command"] == [str(python), "train.py"] and report["entry"] == "train.py"
    assert [c["check"] for c in report["checks"]] == [
        "ignored-source", "lockfile", "inputs", "seed", "determinism", "dataloader", "engine"]
    assert report["checks"][-1] == {"check": "engine", "status": "skipped", "why": "--skip",
                                    "seconds": 0.0}
    for finding in report["findings"]:
        assert set(finding) == {"check", "problem", "fix", "where", "details"}
        assert "\n" not in finding["problem"] + finding["fix"]


def test_preflight_reads_the_code_and_never_runs_it(tmp_path: Path,
                                                     venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    boom = "import pathlib\npathlib.Path('RAN').write_text('x')\nraise SystemExit(9)\n"
    root = make_project(tmp_path, lock, train=boom + TRAIN,
                        extra={"helpers/optim.py": boom + OPTIM})
    code, report, _ = preflight(root, python, skip=CODE_ONLY)
    assert (code, report["findings"]) == (0, []) and not (root / "RAN").exists()
    # without a command: every Python file of the project is read
    res = audit("preflight", "--json", "--skip", "engine", "--skip", "lockfile", cwd=root)
    project = json.loads(res.stdout)
    assert res.returncode == 0 and project["entry"] is None, res.stdout
    assert sorted(project["source_files"]) == ["helpers/__init__.py", "helpers/model.py",
                                               "helpers/optim.py", "train.py"]
    assert not (root / "RAN").exists()


def test_a_missing_script_is_one_line_exit_2(tmp_path: Path,
                                             venv_lock: tuple[Path, str]) -> None:
    python, lock = venv_lock
    root = make_project(tmp_path, lock)
    res = audit("preflight", "--", str(python), "nope.py", cwd=root)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("error: the command's script") and res.stderr.count("\n") == 1
    before = _snapshot(root)
    res = audit("init", "--no-lock", "--", str(python), "nope.py", cwd=root)
    assert res.returncode == 2 and res.stderr.startswith("error: the command's script")
    assert _snapshot(root) == before  # refused before anything was written


# ---- audit init -----------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.parts}


def test_init_is_idempotent(tmp_path: Path, venv_lock: tuple[Path, str]) -> None:
    from auditor.core.policy import DEFAULT_POLICY, load_policy, loosenings

    python, lock = venv_lock
    root = make_project(tmp_path, lock, ignore="outputs/\n")
    args = ("init", "--json", "--skip", "engine", "--", str(python), "train.py")
    first = audit(*args, cwd=root)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["changed"] is True and out["root"] == str(root)
    assert {s["path"]: s["action"] for s in out["steps"]} == {
        "auditor.toml": "wrote", "requirements.lock": "kept",
        ".github/workflows/audit.yml": "wrote", ".gitignore": "wrote"}
    assert out["preflight"]["rerunnable"] is True
    assert load_policy(root / "auditor.toml") == DEFAULT_POLICY
    assert loosenings(load_policy(root / "auditor.toml")) == []
    assert (root / ".gitignore").read_text().endswith("\n.auditor/\n")
    assert git(root, "check-ignore", ".auditor/store.db").strip() == ".auditor/store.db"
    before = _snapshot(root)
    second = audit("init", "--skip", "engine", "--", str(python), "train.py", cwd=root)
    assert second.returncode == 0, second.stderr
    assert "audit init: nothing changed in" in second.stdout
    assert "    wrote  " not in second.stdout
    assert _snapshot(root) == before


def test_init_never_overwrites_the_users_files(tmp_path: Path,
                                               venv_lock: tuple[Path, str]) -> None:
    _python, lock = venv_lock
    mine = {"auditor.toml": "[verify]\nbitwise = true\n",
            ".github/workflows/audit.yml": "name: mine\n",
            ".gitignore": "outputs/\n.auditor\n"}
    root = make_project(tmp_path, lock + "# hand-edited\n", extra=mine)
    before = _snapshot(root)
    res = audit("init", "--no-preflight", cwd=root)
    assert res.returncode == 0, res.stderr
    for rel in ("auditor.toml", ".github/workflows/audit.yml", "requirements.lock"):
        assert f"     kept  {rel}: " in res.stdout, res.stdout
    assert "not overwritten" in res.stdout
    assert "unchanged  .gitignore: git already ignores the store" in res.stdout
    assert "audit init: nothing changed" in res.stdout
    assert _snapshot(root) == before


def test_init_outside_git_refuses_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.py").write_text("print(1)\n")
    res = audit("init", cwd=folder, env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: {folder} is not inside a git repository: audit init "
                                 "wrote nothing")
    assert res.stderr.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["train.py"]


@pytest.mark.slow
def test_init_locks_through_audit_lock(tmp_path: Path) -> None:
    root = commit_repo(tmp_path / "proj", {"requirements.in": "six==1.17.0\n",
                                           "train.py": "import random\nrandom.seed(0)\n"})
    res = audit("init", "--no-preflight", "--ci", "none", cwd=root,
                env={**GIT_ENV, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert res.returncode == 0, res.stderr
    assert "wrote  requirements.lock: `audit lock` of requirements.in: 1 packages, hashed" \
        in res.stdout
    lock = (root / "requirements.lock").read_text()
    assert "six==1.17.0" in lock and "--hash=sha256:" in lock
    again = audit("init", "--no-preflight", "--ci", "none", cwd=root)
    assert "unchanged  requirements.lock" in again.stdout
    assert "audit init: nothing changed" in again.stdout
