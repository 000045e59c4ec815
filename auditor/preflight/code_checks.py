"""The checks that read the command's code (statically, never running it): imported
source git ignores, data read but not declared, seeds, determinism switches, data
loaders. ``load_code`` fills the project's files and facts once; each check returns its
findings, or a ``Skip`` saying why it could not look."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from auditor.core.errors import InputError
from auditor.preflight.facts import scan
from auditor.preflight.model import Finding, Project
from auditor.preflight.source import Entry, entry_of, import_closure

_OUTPUT_NAME = re.compile(r"out|save|ckpt|checkpoint|log|result|dump|export|cache|tmp|dest",
                          re.IGNORECASE)
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__",
                        "site-packages", ".auditor", ".tox", ".mypy_cache"})
MAX_PROJECT_FILES = 5000


class Skip(Exception):  # a check's "could not look", not an error
    """A check that cannot look here, and why (it is listed as skipped, not failed)."""


def load_code(p: Project) -> None:
    """The local files the command imports (or, without a command, every Python file of
    the project) and what they say."""
    entry = p.entry = checked_entry(p.argv, p.cwd, p.env)
    if entry.script is None and entry.module is None:
        if p.argv:
            p.notes.append(f"{p.argv[0]} runs no Python script preflight can read: the code "
                           "checks read every Python file of the project")
        starts = _project_files(p)
    else:
        starts = [entry.script] if entry.script else []
    roots = [r.resolve() for r in entry.roots]
    if p.root is not None and entry.script is None:
        roots.append(p.root)
    p.files, broken = import_closure(starts, roots, [entry.module] if entry.module else [])
    for path in broken:
        p.notes.append(f"{p.label(path)} does not parse as Python: its facts are not read")
    p.facts = scan(p.files, {f: p.label(f) for f in p.files})


def checked_entry(argv: tuple[str, ...], cwd: Path, env: dict[str, str]) -> Entry:
    """What ``argv`` runs; ``InputError`` (exit 2) when its script does not exist."""
    entry = entry_of(argv, cwd, env)
    if entry.script is not None and not entry.script.is_file():
        raise InputError(f"the command's script {entry.script} does not exist",
                         hint="run it from the folder the training runs in")
    return entry


def _project_files(p: Project) -> list[Path]:
    if p.root is not None:
        done = p.git("ls-files", "-co", "--exclude-standard", "-z")
        names = [n.decode() for n in done.stdout.split(b"\0") if n.endswith(b".py")]
        return [p.root / n for n in names][:MAX_PROJECT_FILES]
    found: list[Path] = []
    for folder, dirs, files in os.walk(p.cwd):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".py")]
        if len(found) >= MAX_PROJECT_FILES:
            break
    return found[:MAX_PROJECT_FILES]


def _need_code(p: Project) -> None:
    if not p.files:
        raise Skip("no Python source to read")


# ---- the checks -----------------------------------------------------------------------


def ignored_sources(p: Project) -> list[Finding]:
    """Local source the command imports that the rebuilt tree will not have."""
    _need_code(p)
    if p.root is None:
        raise Skip("not a git repository: audit record snapshots the whole folder")
    out = [Finding(check="ignored-source", where=p.label(f),
                   problem=f"{p.label(f)} is imported by the command but lies outside the "
                   "repository: the rebuilt tree will not have it",
                   fix="move it into the repository, or install it as a package pinned "
                   "in the lockfile")
           for f in p.files if not f.is_relative_to(p.root)]
    for f in sorted(p.ignored(p.files)):
        rel = p.label(f)
        out.append(Finding(check="ignored-source", where=rel,
                           problem=f"{rel} is imported by the command but git ignores it: "
                           "the rebuilt tree will not have it",
                           fix=f"un-ignore it in .gitignore, or `git add -f {rel}`"))
    return out


def inputs(p: Project) -> list[Finding]:
    """Data the command reads that the rerun will not find: ignored by git or outside the
    tree, and not declared with --input; and data downloaded at run time."""
    declared = [d.resolve() for d in p.inputs]
    out: list[Finding] = []
    candidates = _candidates(p)
    ignored = p.ignored([c for c, _ in candidates]) if p.root is not None else set()
    base = p.root or p.cwd
    for path, origin in candidates:
        if any(path == d or path.is_relative_to(d) for d in declared):
            continue
        shown = os.path.relpath(path, p.cwd)
        if not path.is_relative_to(base):
            why = "lies outside the repository"
        elif path in ignored:
            why = "is ignored by git"
        else:
            continue
        out.append(Finding(check="inputs", where=origin,
                           problem=f"{shown} is read by the command ({origin}) but {why} and "
                           "not declared: the rerun will not find it",
                           fix=f"declare it: audit record --input {shown} -- …"))
    for site, root in p.facts.downloads:
        if root is not None and (p.cwd / root).exists():
            continue
        into = f" into {root}" if root else ""
        out.append(Finding(check="inputs", where=str(site),
                           problem=f"{site} downloads data at run time{into}: the rerun has "
                           "no network",
                           fix=f"download it once, then declare it: audit record --input "
                           f"{root or 'PATH'} -- …"))
    return out


def _candidates(p: Project) -> list[tuple[Path, str]]:
    """(resolved existing path, where it came from) the command may read."""
    found: dict[Path, str] = {}
    script = p.entry.script if p.entry else None

    def add(text: str, origin: str) -> None:
        path = Path(os.path.normpath(p.cwd / text))
        if path.exists() and path != script and path not in found:
            found[path] = origin

    words = list(p.argv)
    for i, word in enumerate(words[1:], start=1):
        flag, _, value = word.partition("=") if word.startswith("--") else ("", "", word)
        previous = flag or words[i - 1]
        if value and not value.startswith("-") and not (
                previous.startswith("-") and _OUTPUT_NAME.search(previous)):
            add(value, "command line")
    given = {w.split("=", 1)[0] for w in words if w.startswith("-")}
    for option in p.facts.options:
        if isinstance(option.default, str) and not _OUTPUT_NAME.search(option.dest) and \
                not given & set(option.flags):
            add(option.default, f"default of {option.flags[-1]}, {option.site}")
    for site, literal in p.facts.paths:
        add(literal, str(site))
    return list(found.items())


def seeds(p: Project) -> list[Finding]:
    """A seed set somewhere the run's code can be seen setting it, not from the clock."""
    _need_code(p)
    f = p.facts
    where = (f"{p.label(p.entry.script)} and the {len(p.files) - 1} local file(s) it imports"
             if p.entry and p.entry.script else f"the {len(p.files)} Python file(s) read")
    out = [Finding(check="seed", where=str(site),
                   problem=f"{site} seeds from the clock or the OS: every run differs",
                   fix="seed with a fixed number, e.g. from a --seed option")
           for site in f.clock_seeds]
    if not f.seeds and not f.clock_seeds:
        out.append(Finding(check="seed", problem=f"no seed is set in {where}",
                           fix="call torch.manual_seed(SEED) (or auditor.seed_everything(SEED)) "
                           "before the model and data loaders are built"))
    given = {w.split("=", 1)[0] for w in p.argv if w.startswith("-")}
    named: set[str] = set()
    for site, dest in f.seed_options if p.argv else []:
        option = next((o for o in f.options if o.dest == dest), None)
        if option is None or (option.has_default and option.default is not None) or \
                given & set(option.flags) or dest in named:
            continue
        named.add(dest)  # one finding per option, at its first seeding call
        out.append(Finding(check="seed", where=str(site),
                           problem=f"{site} seeds from {option.flags[-1]}, which defaults to "
                           "None and the command does not set: the run is unseeded",
                           fix=f"pass {option.flags[-1]} N on the command line"))
    return out


def determinism(p: Project) -> list[Finding]:
    """Switches that make GPU results differ between runs."""
    _need_code(p)
    f = p.facts
    out = [Finding(check="determinism", where=str(site),
                   problem=f"{site} turns cudnn.benchmark on: cuDNN then picks kernels by "
                   "timing them, so GPU results differ between runs",
                   fix="set torch.backends.cudnn.benchmark = False")
           for site in f.benchmark_on]
    out += [Finding(check="determinism", where=str(site),
                    problem=f"{site} turns deterministic algorithms off",
                    fix="torch.use_deterministic_algorithms(True) and "
                    "torch.backends.cudnn.deterministic = True")
            for site in f.deterministic_off]
    gpu = shutil.which("nvidia-smi", path=p.env.get("PATH")) is not None
    if not f.cuda and not gpu:
        p.notes.append("no CUDA use seen in the code and no GPU here: deterministic algorithms "
                       "and CUBLAS_WORKSPACE_CONFIG are not required on CPU")
        return out
    why = f"the code uses CUDA ({f.cuda[0]})" if f.cuda else "this host has a GPU"
    if not f.deterministic_on and not f.deterministic_off:
        out.append(Finding(check="determinism", problem=f"{why} but never turns on "
                           "deterministic algorithms: GPU kernels may differ between runs",
                           fix="torch.use_deterministic_algorithms(True) at the start (or "
                           "auditor.seed_everything(SEED))"))
    if not p.env.get("CUBLAS_WORKSPACE_CONFIG") and not f.cublas_set:
        out.append(Finding(check="determinism", problem=f"{why} but CUBLAS_WORKSPACE_CONFIG "
                           "is unset: cuBLAS results may differ between runs",
                           fix="export CUBLAS_WORKSPACE_CONFIG=:4096:8 before recording (the "
                           "rerun replays it)"))
    return out


def loaders(p: Project) -> list[Finding]:
    """DataLoaders whose worker processes draw from unseeded generators."""
    _need_code(p)
    if p.facts.workers_seeded:
        return []
    return [Finding(check="dataloader", where=str(site),
                    problem=f"{site} makes a DataLoader with {what} but neither a seeded "
                    "generator= nor worker_init_fn=: random draws in its workers "
                    "(augmentations, sampling) are not pinned to the run's seed",
                    fix="pass generator=torch.Generator().manual_seed(SEED) and a "
                    "worker_init_fn seeding numpy and random from torch.initial_seed()")
            for site, what in p.facts.loaders]
