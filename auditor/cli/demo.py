"""``make demo``: the whole loop on the bundled example, with the real ``audit`` command.

It copies ``fixtures/train`` (a tiny torch MLP with its hashed lockfile) and its data into
``demo-out/project``, makes that a git repository with one commit, then: records a seeded
training run, shows it, generates a signing key, verifies the run (rebuilt image or, with
no docker engine, a venv), writes the HTML report and signed certificate, passes the
release gate with the model, and finally records and verifies a clock-seeded run to show a
``not-reproduced`` verdict with its cause. Each command is printed before it runs, so the
output doubles as a tutorial. It ends by printing where the HTML reports are.

The example is recorded in the environment its lockfile describes. With a docker engine:
it is recorded once on this host, ``audit build`` makes that run's pinned image from the
lockfile, and the demo's runs are recorded inside that image (``audit record --in-image``),
so the verification, which rebuilds the same image (from the build cache), compares the
image with itself: its certificate lists no environment change. Without an engine: in a
virtualenv built from ``fixtures/train/requirements.lock`` with the same pip flags a
rebuild uses (kept in ``.demo-env/<lock sha256>`` and reused; the host record of the
engine path uses it too), so the rebuilt venv matches the recorded one package for
package; the venv is made from the interpreter a venv rebuild would use, so its Python and
pip match too. Run it from a source checkout (or any folder holding
``fixtures/``): ``python -m auditor.cli.demo`` also works with an installed wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _repo() -> Path:
    """The folder holding ``fixtures/``: the current directory, else the source checkout."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (folder / "fixtures" / "train").is_dir():
            return folder
    return Path.cwd()


REPO = _repo()
OUT = REPO / "demo-out"
ENVS = REPO / ".demo-env"


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
    (project / ".gitignore").write_text("outputs/\noutputs-host/\n.auditor/\n")
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


def _engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - any failure means: no engine here
        return False
    return True


def _environment() -> dict[str, str]:
    """The store, and the build inputs this machine needs (wheelhouse, CA bundle)."""
    # make's own variables would be recorded and then differ in the rerun (make demo)
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env = {**outer, "AUDITOR_STORE": str(OUT / "store"), "OMP_NUM_THREADS": "2"}
    if os.environ.get("PIP_FIND_LINKS"):
        env.setdefault("AUDITOR_WHEELHOUSE", os.environ["PIP_FIND_LINKS"].split()[0])
    if os.environ.get("PIP_CERT"):
        env.setdefault("AUDITOR_CA_BUNDLE", os.environ["PIP_CERT"])
    return env


def training_python(env: dict[str, str]) -> str:
    """The Python of a venv built from the example's lockfile (built once, then reused)."""
    from auditor.env.venv import host_python

    lock = REPO / "fixtures" / "train" / "requirements.lock"
    # the interpreter a venv rebuild uses (as root: one uid 1000 can run, so a pyenv Python
    # under /root is passed over), so the rerun's Python and pip equal the recorded ones
    base = host_python(f"{sys.version_info.major}.{sys.version_info.minor}")
    digest = hashlib.sha256(lock.read_bytes() + os.fsencode(base)).hexdigest()[:16]
    venv = ENVS / digest
    python = venv / "bin" / "python"
    if (venv / "complete").is_file():
        return str(python)
    print(f"\nbuilding the example's environment from {lock.name} in {venv} (once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--only-binary", ":all:",
           "--require-hashes", "--disable-pip-version-check", "--no-input"]
    pip += ["--find-links", env["AUDITOR_WHEELHOUSE"]] if env.get("AUDITOR_WHEELHOUSE") else []
    pip += ["--cert", env["AUDITOR_CA_BUNDLE"]] if env.get("AUDITOR_CA_BUNDLE") else []
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run([*pip, "--requirement", str(lock)], check=True,
                   env={**isolated, "PIP_CONFIG_FILE": os.devnull})  # as a rebuild installs
    (venv / "complete").write_text(lock.name + "\n")
    return str(python)


def pinned_image(audit: str, project: Path, env: dict[str, str], train: list[str]) -> str:
    """Record the example once on this host, build that run's pinned image (``audit
    build``: from its lockfile, cached), and return the image's tag."""
    print("\nThe example's pinned image: record it once here, then build its lockfile's "
          "image; the demo's runs are recorded inside that image.")
    sh(audit, "record", "--name", "mlp-host", "--input", "data/blobs.csv", "--", *train,
       "--seed", "42", "--out", "outputs-host", cwd=project, env=env)
    host = _run_id(audit, project, env)
    argv = [audit, "build", host[:12]]
    print(f"\n$ {' '.join(argv)}", flush=True)
    built = subprocess.run(argv, cwd=project, env=env, check=True, stdout=subprocess.PIPE,
                           text=True).stdout
    print(built, end="", flush=True)
    found = re.match(r"docker (\S+) \(", built)
    if found is None:
        raise subprocess.CalledProcessError(1, argv, built)
    return found.group(1)


def _run_id(audit: str, project: Path, env: dict[str, str]) -> str:
    out = subprocess.run([audit, "--json", "list", "--limit", "1"], cwd=project, env=env,
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["id"])


def main() -> int:
    """Run the demo; a failed step ends it with one line, not a traceback."""
    try:
        return _demo()
    except subprocess.CalledProcessError as exc:
        argv = exc.cmd if isinstance(exc.cmd, list | tuple) else [str(exc.cmd)]
        name = " ".join(Path(str(a)).name if i == 0 else str(a) for i, a in enumerate(argv[:3]))
        print(f"\nerror: the demo stopped: `{name} …` exited {exc.returncode} (see above)",
              file=sys.stderr)
        return 1


def _demo() -> int:
    project = prepare()
    audit = str(Path(sys.executable).parent / "audit")
    env = _environment()
    backend: list[str] = []
    script = ["train_mlp.py", "--data", "data/blobs.csv", "--epochs", "6"]
    train = [training_python(env), *script]
    if _engine_answers():
        sh(audit, "base-image", "build", cwd=project, env=env)  # reused when present
        env["AUDITOR_BASE_IMAGE"] = "auditor-base:bookworm"
        # from here on the example runs in its pinned image, with the image's python
        train = ["--in-image", pinned_image(audit, project, env, train), "--", "python", *script]
    else:
        print("\nno docker engine answers: verification uses the venv backend (weaker "
              "isolation; start dockerd for containers)")
        backend = ["--backend", "venv"]
        train = ["--", *train]
    sh(audit, "record", "--name", "mlp-demo", "--input", "data/blobs.csv", *train,
       "--seed", "42", cwd=project, env=env)
    rid = _run_id(audit, project, env)
    sh(audit, "list", cwd=project, env=env)
    sh(audit, "show", rid[:12], cwd=project, env=env)
    sh(audit, "keys", "generate", "--dir", str(OUT / "keys"), cwd=project, env=env)
    report = OUT / "report.html"
    sh(audit, "verify", rid[:12], *backend, "--sign-key", str(OUT / "keys" / "auditor.key"),
       "--certificate", str(OUT / "model.cert.json"), "--html", str(report), cwd=project, env=env)
    gate_policy: list[str] = []
    if backend:  # a venv-level certificate: the default gate demands container isolation
        policy = OUT / "gate-venv.toml"
        policy.write_text('min_isolation = "venv"\n')
        print(f"\nno docker engine: the gate accepts venv-level isolation only because "
              f"{policy} says min_isolation = \"venv\" (the default gate requires a container)")
        gate_policy = ["--policy", str(policy)]
    from auditor.rerun.bwrap import find_bwrap

    bwrap, no_bwrap = find_bwrap() if backend else (None, "")  # probed only for a venv
    unisolated = bool(backend) and bwrap is None
    code = sh(audit, "gate", "outputs/model.safetensors", "--key",
              str(OUT / "keys" / "auditor.pub"), *gate_policy, cwd=project, env=env,
              check=not unisolated)
    if unisolated:  # no engine, no bubblewrap: the rerun ran as a plain host process
        if code != 1:
            print(f"\nerror: the demo stopped: the gate passed an unisolated rerun (exit "
                  f"{code}, not 1)", file=sys.stderr)
            return 1
        print(f"\n(exit 1: the rerun was unisolated ({no_bwrap}), which no gate "
              "accepts, as expected; install bubblewrap or start dockerd to pass it)")
    print("\nNow a run that cannot reproduce: seeded from the clock.")
    sh(audit, "record", "--name", "mlp-clock", "--input", "data/blobs.csv", *train,
       "--seed", "clock", "--out", "outputs-clock", cwd=project, env=env)
    bad = _run_id(audit, project, env)
    code = sh(audit, "verify", bad[:12], *backend, "--html", str(OUT / "report-clock.html"),
              cwd=project, env=env, check=False)
    if code != 1:
        print(f"\nerror: the demo stopped: the clock-seeded run's verify exited {code}, "
              "not 1 (not-reproduced)", file=sys.stderr)
        return 1
    print("\n(exit 1: not reproduced, as expected)")
    print(f"\nHTML report: {report}")
    print(f"HTML report of the failing run: {OUT / 'report-clock.html'}")
    print(f"certificate: {OUT / 'model.cert.json'}   store: {OUT / 'store'}")
    comparison = OUT / "compare.html"
    sh(audit, "compare", rid[:12], bad[:12], "--html", str(comparison), cwd=project, env=env,
       check=False)
    print(f"\nstatic comparison page: {comparison}")
    print(f"dashboard: {audit} --store {OUT / 'store'} ui   (then open http://127.0.0.1:8765/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
