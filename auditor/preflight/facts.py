"""What the command's local source says, read with ``ast`` (never run): ``scan(files)``
collects ``Facts``: seeding calls, determinism settings, CUDA use, ``DataLoader`` calls
with their workers (``**kwargs`` followed through dicts the same scope builds), argparse
options and their defaults, string paths handed to calls, and downloads at run time.

It is a reading of the code, not of the run: a seed set in a branch the run never takes
still counts as set, and names are matched through the file's import aliases
(``import torch.backends.cudnn as cudnn``; ``np`` for ``numpy``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from auditor.preflight.source import read_tree

SEED_NAMES = frozenset({"torch.manual_seed", "torch.cuda.manual_seed",
                        "torch.cuda.manual_seed_all", "random.seed", "numpy.random.seed",
                        "numpy.random.default_rng", "numpy.random.RandomState",
                        "tensorflow.random.set_seed", "jax.random.PRNGKey", "jax.random.key",
                        "keras.utils.set_random_seed", "mindspore.set_seed"})
SEED_SUFFIXES = ("seed_everything", "set_seed", "manual_seed")
CLOCK_SEEDS = frozenset({"random.seed", "numpy.random.seed", "numpy.random.default_rng",
                         "numpy.random.RandomState"})  # no argument: seeded from the OS
_CLOCK_CALL = re.compile(r"^(?:time\.(?:time|time_ns|perf_counter|perf_counter_ns|monotonic)|"
                         r"datetime\.datetime\.now|datetime\.now|os\.urandom|os\.getpid|"
                         r"uuid\.uuid4|secrets\.\w+)$")
USE_DETERMINISTIC = "torch.use_deterministic_algorithms"
CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
# Calls that write or make a path: their literal is no input.
WRITERS = frozenset({"save", "save_file", "mkdir", "makedirs", "savez", "savetxt", "to_csv",
                     "to_parquet", "save_pretrained", "SummaryWriter", "rmtree", "remove",
                     "unlink", "copy", "copyfile", "move", "rename", "replace", "join"})


@dataclass(frozen=True)
class Site:
    """A place in the source: the file (as given) and its line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Option:
    """One argparse option: its flags, destination, default (a literal or None) and where."""

    flags: tuple[str, ...]
    dest: str
    default: object
    has_default: bool
    site: Site


@dataclass
class Facts:
    """What the code says, file by file (every list in source order)."""

    seeds: list[Site] = field(default_factory=list)
    clock_seeds: list[Site] = field(default_factory=list)
    seed_options: list[tuple[Site, str]] = field(default_factory=list)  # seed from args.<dest>
    benchmark_on: list[Site] = field(default_factory=list)
    deterministic_off: list[Site] = field(default_factory=list)
    deterministic_on: list[Site] = field(default_factory=list)
    cublas_set: list[Site] = field(default_factory=list)
    cuda: list[Site] = field(default_factory=list)
    loaders: list[tuple[Site, str]] = field(default_factory=list)  # unseeded, with why
    workers_seeded: list[Site] = field(default_factory=list)  # seed_everything(workers=True)
    options: list[Option] = field(default_factory=list)
    paths: list[tuple[Site, str]] = field(default_factory=list)  # literal paths given to calls
    downloads: list[tuple[Site, str | None]] = field(default_factory=list)  # (where, root)
    unparsed: list[str] = field(default_factory=list)




def scan(files: Iterable[Path], label: dict[Path, str] | None = None) -> Facts:
    """Collect the facts of every file (``label`` names each in the findings)."""
    facts = Facts()
    for path in files:
        tree = read_tree(path)
        name = (label or {}).get(path, str(path))
        if tree is None:
            facts.unparsed.append(name)
            continue
        try:
            _Scanner(name, _aliases(tree), facts).visit(tree)
        except RecursionError:  # nested deeper than the visitor goes: named, not read
            facts.unparsed.append(name)
    return facts


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for (``np`` -> ``numpy``)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``torch.backends.cudnn.benchmark`` for the expression, aliases expanded."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _const(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else ...


class _Scanner(ast.NodeVisitor):
    """One file's facts; ``dicts`` follows dict literals per scope for ``**kwargs``."""

    def __init__(self, name: str, aliases: dict[str, str], facts: Facts) -> None:
        self.name, self.aliases, self.facts = name, aliases, facts
        self.scopes: list[dict[str, dict[str, ast.AST]]] = [{}]

    def site(self, node: ast.AST) -> Site:
        return Site(self.name, getattr(node, "lineno", 0))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append(_dicts_in(node))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Module(self, node: ast.Module) -> None:
        self.scopes = [_dicts_in(node)]
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            name = dotted(target, self.aliases) or ""
            value = _const(node.value)
            if name.endswith(".benchmark") and name.split(".")[-2] == "cudnn" and value is True:
                self.facts.benchmark_on.append(self.site(node))
            if name.endswith(".deterministic") and name.split(".")[-2] == "cudnn":
                (self.facts.deterministic_off if value is False
                 else self.facts.deterministic_on).append(self.site(node))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if node.value == CUBLAS:
            self.facts.cublas_set.append(self.site(node))
        if isinstance(node.value, str) and re.fullmatch(r"cuda(?::\d+)?", node.value):
            self.facts.cuda.append(self.site(node))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "cuda" or (dotted(node, self.aliases) or "").startswith(
                "torch.accelerator"):
            self.facts.cuda.append(self.site(node))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = dotted(node.func, self.aliases) or (
            node.func.attr if isinstance(node.func, ast.Attribute) else "")
        kwargs = self.keywords(node)
        self.seeding(node, name, kwargs)
        self.determinism(node, name, kwargs)
        last = name.rsplit(".", 1)[-1]
        if last == "DataLoader":
            self.loader(node, kwargs)
        elif last == "add_argument":
            self.option(node, kwargs)
        self.path_args(node, name, last, kwargs)
        self.generic_visit(node)

    def keywords(self, node: ast.Call) -> dict[str, ast.AST]:
        """The call's keywords, ``**name`` expanded from a dict the scope builds; the key
        ``**`` when some could not be read."""
        found: dict[str, ast.AST] = {}
        for kw in node.keywords:
            if kw.arg is not None:
                found[kw.arg] = kw.value
            elif isinstance(kw.value, ast.Name) and kw.value.id in self.scopes[-1]:
                found.update(self.scopes[-1][kw.value.id])
            elif isinstance(kw.value, ast.Dict):
                found.update(_dict_items(kw.value))
            else:
                found["**"] = kw.value
        return found

    def seeding(self, node: ast.Call, name: str, kwargs: dict[str, ast.AST]) -> None:
        last = name.rsplit(".", 1)[-1]
        if name in SEED_NAMES or last in SEED_SUFFIXES or (
                last == "start_run" and "seed" in kwargs):
            if not node.args and "seed" not in kwargs and name in CLOCK_SEEDS:
                self.facts.clock_seeds.append(self.site(node))
                return
            arg = node.args[0] if node.args else kwargs.get("seed")
            if arg is not None and any(_CLOCK_CALL.match(dotted(c.func, self.aliases) or "")
                                       for c in ast.walk(arg) if isinstance(c, ast.Call)):
                self.facts.clock_seeds.append(self.site(node))
                return
            self.facts.seeds.append(self.site(node))
            if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                self.facts.seed_options.append((self.site(node), arg.attr))
            if last == "seed_everything" and _const(kwargs.get("workers")) is True:
                self.facts.workers_seeded.append(self.site(node))

    def determinism(self, node: ast.Call, name: str, kwargs: dict[str, ast.AST]) -> None:
        site = self.site(node)
        if name == USE_DETERMINISTIC:
            flag = _const(node.args[0] if node.args else kwargs.get("mode"))
            (self.facts.deterministic_off if flag is False
             else self.facts.deterministic_on).append(site)
        elif name == "auditor.seed_everything" and _const(kwargs.get("deterministic")) \
                is not False:  # auditor's sets both (record/attached.py)
            self.facts.deterministic_on.append(site)
            self.facts.cublas_set.append(site)
        elif _deterministic_framework(name.rsplit(".", 1)[-1], kwargs):
            self.facts.deterministic_on.append(site)

    def loader(self, node: ast.Call, kwargs: dict[str, ast.AST]) -> None:
        workers = kwargs.get("num_workers")
        if workers is None and len(node.args) > 5:  # DataLoader(ds, bs, shuffle, sampler,
            workers = node.args[5]                  # batch_sampler, num_workers, ...)
        if workers is None or _const(workers) == 0:
            return
        if "generator" in kwargs or "worker_init_fn" in kwargs:
            return
        shown = ast.unparse(workers)
        self.facts.loaders.append((self.site(node), f"num_workers={shown}"))

    def option(self, node: ast.Call, kwargs: dict[str, ast.AST]) -> None:
        flags = tuple(_const(a) for a in node.args)
        if not flags or not all(isinstance(f, str) for f in flags):
            return
        names = tuple(str(f) for f in flags)
        dest = _const(kwargs.get("dest"))
        if not isinstance(dest, str):
            longs = [f for f in names if f.startswith("--")] or list(names)
            dest = longs[0].lstrip("-").replace("-", "_")
        default = kwargs.get("default")
        value = _path_literal(default, self.aliases) if default is not None else None
        self.facts.options.append(Option(names, dest, value if value is not None
                                         else _const(default), default is not None,
                                         self.site(node)))

    def path_args(self, node: ast.Call, name: str, last: str,
                  kwargs: dict[str, ast.AST]) -> None:
        if last in WRITERS or (last == "open" and _writes(node, kwargs)):
            return
        first = node.args[0] if node.args else kwargs.get("root")
        literal = _path_literal(first, self.aliases) if first is not None else None
        if _const(kwargs.get("download")) is True:
            self.facts.downloads.append((self.site(node), literal))
        if literal is not None and name not in ("pathlib.Path", "Path"):
            self.facts.paths.append((self.site(node), literal))


def _deterministic_framework(last: str, kwargs: dict[str, ast.AST]) -> bool:
    """Lightning's ``Trainer(deterministic=True)``, HF's ``TrainingArguments(
    full_determinism=True)``."""
    if last == "Trainer":
        return _const(kwargs.get("deterministic")) in (True, "warn")
    return last == "TrainingArguments" and _const(kwargs.get("full_determinism")) is True


def _writes(node: ast.Call, kwargs: dict[str, ast.AST]) -> bool:
    mode = _const(node.args[1] if len(node.args) > 1 else kwargs.get("mode"))
    return isinstance(mode, str) and bool(set(mode) & set("wax+"))


def _path_literal(node: ast.AST | None, aliases: dict[str, str]) -> str | None:
    """A string that looks like a path (``"data/x.csv"``, ``Path("data")``), else None."""
    if isinstance(node, ast.Call) and (dotted(node.func, aliases) or "").endswith("Path") \
            and node.args:
        node = node.args[0]
    value = _const(node)
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return None
    if "://" in value or not re.search(r"[/.]", value) or value.startswith("-"):
        return None
    return value


def _dict_items(node: ast.Dict) -> dict[str, ast.AST]:
    return {k.value: v for k, v in zip(node.keys, node.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _dicts_in(scope: ast.AST) -> dict[str, dict[str, ast.AST]]:
    """Dicts a scope builds by name: literals, ``dict(k=v)``, ``.update(...)``, ``d[k] = v``
    (flow-insensitive: every key any branch adds)."""
    found: dict[str, dict[str, ast.AST]] = {}
    for node in _own_nodes(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict):
                found.setdefault(target.id, {}).update(_dict_items(node.value))
            elif isinstance(target, ast.Name) and isinstance(node.value, ast.Call) and \
                    isinstance(node.value.func, ast.Name) and node.value.func.id == "dict":
                found.setdefault(target.id, {}).update(
                    {k.arg: k.value for k in node.value.keywords if k.arg})
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                    and isinstance(_const(target.slice), str):
                found.setdefault(target.value.id, {})[str(_const(target.slice))] = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "update" and isinstance(node.func.value, ast.Name):
            into = found.setdefault(node.func.value.id, {})
            for arg in node.args:
                if isinstance(arg, ast.Dict):
                    into.update(_dict_items(arg))
                elif isinstance(arg, ast.Name):
                    into.update(found.get(arg.id, {}))
            into.update({k.arg: k.value for k in node.keywords if k.arg})
    return found


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes of ``scope`` in source order, not descending into nested functions/classes."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef |
                          ast.Lambda):
            yield from _own_nodes(child)
