"""The interpreter that trains (not auditor's own): version, build, packages, lockfile.

The training interpreter is found from the wrapped argv (``python …``, ``python3.11 …``,
a script's shebang, ``-m module``); packages come from ``<python> -m pip inspect`` (richer
than ``pip freeze``), falling back to ``importlib.metadata`` when pip is absent. The
``pip inspect`` report is stored (secrets redacted) as an artifact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from auditor.core.schema import ArtifactRef, PythonEnv
from auditor.record.capture.secrets import redact_text, strip_url_credentials

_PY_NAME = re.compile(r"^(?:python|pypy)[0-9.]*(?:\.exe)?$")
_INFO = (
    "import json, platform, sys; print(json.dumps({'version': platform.python_version(),"
    " 'implementation': platform.python_implementation(), 'build': ' '.join("
    "platform.python_build()) + ' ' + platform.python_compiler(), 'executable': "
    "sys.executable}))"
)
_PACKAGES = (
    "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: "
    "d.version for d in m.distributions() if d.metadata['Name']}))"
)


def normalize(name: str) -> str:
    """PEP 503 normalised package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def training_interpreter(argv: list[str], path_env: str | None = None) -> tuple[str, str | None]:
    """(interpreter path, note) for a wrapped command; auditor's own with a note otherwise."""
    if not argv:
        return sys.executable, "no command"
    first = shutil.which(argv[0], path=path_env) or argv[0]
    if _PY_NAME.match(Path(argv[0]).name):
        return first, None
    shebang = _shebang(Path(first))
    if shebang:
        return shebang, None
    return sys.executable, f"{argv[0]} is not a Python interpreter; recorded auditor's own"


def image_interpreter(argv: list[str]) -> tuple[str, str | None]:
    """(interpreter, note) for a command run in an image: its ``python…`` as the image's
    PATH finds it, a script's shebang (read here: the tree is mounted at the same path),
    else the image's ``python`` with a note."""
    if argv and _PY_NAME.match(Path(argv[0]).name):
        return argv[0], None
    shebang = _shebang(Path(argv[0]), which=lambda name: name) if argv else None
    if shebang:
        return shebang, None
    first = argv[0] if argv else "no command"
    return "python", f"{first} is not a Python interpreter; recorded the image's python"


def _shebang(path: Path, which: Callable[[str], str | None] = shutil.which) -> str | None:
    try:
        with open(path, "rb") as fh:
            line = fh.readline(256).decode(errors="replace").strip()
    except OSError:
        return None
    if not line.startswith("#!"):
        return None
    parts = line[2:].split()
    if parts and Path(parts[0]).name == "env" and len(parts) > 1:
        return which(parts[1])
    return parts[0] if parts and _PY_NAME.match(Path(parts[0]).name) else None


def _run_json(python: str, *args: str, env: Mapping[str, str] | None = None,
              prefix: Sequence[str] = ()) -> object | None:
    try:
        out = subprocess.run(
            [*prefix, python, *args], capture_output=True, text=True, timeout=120, check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        parsed: object = json.loads(out.stdout)
    except json.JSONDecodeError:
        return None
    return parsed


def capture_python(
    python: str,
    put_bytes: Callable[[bytes], tuple[str, int]],
    *,
    inside: Sequence[str] = (),
    inside_env: Mapping[str, str] | None = None,
    executable: str | None = None,
) -> tuple[PythonEnv | None, list[ArtifactRef], str | None]:
    """(PythonEnv, artifacts, reason-if-not-captured) for the interpreter at ``python``.

    ``inside`` is an argv prefix that runs it elsewhere (``docker run … IMAGE``; then
    ``inside_env`` is that command's own environment, and ``executable`` how the record
    names the interpreter, ``python in docker <id>``)."""
    env = dict(inside_env or {}) if inside else {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = f"{python} in {inside[-1]}" if inside else python
    info = _run_json(python, "-I", "-c", _INFO, env=env, prefix=inside)
    if not isinstance(info, dict):
        return None, [], f"{where} did not run: cannot read the interpreter's version"
    artifacts: list[ArtifactRef] = []
    report = _run_json(
        python, "-m", "pip", "--disable-pip-version-check", "inspect", "--local", env=env,
        prefix=inside,
    )
    packages: dict[str, str]
    if isinstance(report, dict) and isinstance(report.get("installed"), list):
        packages = {
            normalize(p["metadata"]["name"]): p["metadata"]["version"]
            for p in report["installed"]
            if "metadata" in p
        }
        local = tuple(sorted(normalize(p["metadata"]["name"]) for p in report["installed"]
                             if "metadata" in p and _is_local(p.get("direct_url"))))
        text = redact_text(json.dumps(_trim_report(report), sort_keys=True, indent=1))
        sha, size = put_bytes(text.encode())
        artifacts.append(
            ArtifactRef(name="env/pip-inspect.json", sha256=sha, size=size, kind="env")
        )
    else:
        local = ()
        found = _run_json(python, "-I", "-c", _PACKAGES, env=env, prefix=inside)
        packages = (
            {normalize(k): str(v) for k, v in (found or {}).items()}
            if isinstance(found, dict)
            else {}
        )
    py = PythonEnv(
        executable=executable or str(info["executable"]),
        version=str(info["version"]),
        implementation=str(info["implementation"]),
        build=str(info["build"]),
        packages=dict(sorted(packages.items())),
        local=local,
        inspect_artifact="env/pip-inspect.json" if artifacts else None,
    )
    return py, artifacts, None


def _is_local(direct: object) -> bool:
    """Installed from a directory (editable or not) or a local file: no index serves it."""
    if not isinstance(direct, dict):
        return False
    return "dir_info" in direct or str(direct.get("url", "")).startswith("file:")


def _trim_report(report: dict[str, object]) -> dict[str, object]:
    """What matters of ``pip inspect``: per package its name, version, requirements,
    installer and origin (direct URL, credentials stripped); not the long descriptions."""
    keep = ("name", "version", "requires_dist", "requires_python")
    installed = []
    entries = report.get("installed", [])
    for entry in entries if isinstance(entries, list) else []:
        meta = entry.get("metadata", {})
        item = {"metadata": {k: meta[k] for k in keep if k in meta},
                "installer": entry.get("installer"), "requested": entry.get("requested")}
        direct = entry.get("direct_url")
        if isinstance(direct, dict):
            item["direct_url"] = {**direct, "url": strip_url_credentials(str(direct.get("url")))}
        installed.append(item)
    return {"version": report.get("version"), "pip_version": report.get("pip_version"),
            "environment": report.get("environment"), "installed": installed}


def pinned_requirements(packages: dict[str, str], local: tuple[str, ...] = ()) -> str:
    """The installed set as ``name==version`` lines (a derived, unhashed lock), without
    the installer's own tools and without packages no index can serve (``local``)."""
    skip = {"pip", "setuptools", "wheel", "distribute", *local}
    lines = [f"{n}=={v}" for n, v in sorted(packages.items()) if n not in skip]
    return (
        "# derived by auditor from the training interpreter's installed packages\n"
        + "\n".join(lines)
        + "\n"
    )
