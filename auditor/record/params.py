"""A wrapped run's params, complete and named one way.

The command line gives only what was typed (``--lr 0.1``); the probe
(``probe/_auditor_params.py``) saw argparse's whole parsed namespace inside the process:
defaults included, each value with its source (``typed``, ``default``, ``config``). Names
follow argparse (``--batch-size`` is ``batch_size``), as ``vars(args)`` handed to the API
does, so one setting is one column whichever way it was recorded.

Which process's parse is the run's, when several wrote one (``choose``): launchers (a parser
whose ``argparse.REMAINDER`` argument took the rest of the command line: ``torchrun``,
``accelerate launch``) only when nothing else parsed; then the outermost process (one whose
parent did not parse too: a script that starts a helper keeps its own params); then the
earliest parse, then the lowest pid. The rule reads only the files, so a rerun (other pids,
another pid namespace) picks the same process as its original did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PARAMS_FILE = 1 << 20  # one probe params file (the probe writes well under this)
MAX_FILES = 1_000  # params files read from one probe folder
MAX_PARAMS = 1_000  # params taken from one file (the probe's own bound)
SOURCES = ("typed", "default", "config")


@dataclass(frozen=True)
class ProbeParams:
    """One process's parse as the probe wrote it, its fields checked."""

    params: dict[str, Any]
    sources: dict[str, str]
    extras: tuple[str, ...] = ()  # words the parse left (parse_known_args)
    dropped: int = 0  # destinations beyond the probe's bound
    pid: int = 0
    ppid: int = 0
    at: int = 0  # when it parsed (ns)
    launcher: bool = False


def argparse_name(flag: str) -> str:
    """``--batch-size`` → ``batch_size`` (argparse's ``dest`` of ``--batch-size``)."""
    return flag.lstrip("-").replace("-", "_")


def normalised(params: dict[str, Any]) -> dict[str, Any]:
    """Command-line params under argparse's names (the first of two spellings wins)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        out.setdefault(argparse_name(key), value)
    return out


def _value(value: Any) -> tuple[bool, Any]:
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, list) and all(
            v is None or isinstance(v, bool | int | float | str) for v in value):
        return True, value
    return False, None


def clean(data: Any) -> ProbeParams | None:
    """The well-typed part of one params file's JSON, or None when it holds no parse (or
    one of nothing)."""
    if not isinstance(data, dict):
        return None
    params, sources = data.get("params"), data.get("sources")
    if not isinstance(params, dict) or not isinstance(sources, dict):
        return None
    keep: dict[str, Any] = {}
    for key, value in list(params.items())[:MAX_PARAMS]:
        ok, plain = _value(value)
        if ok and isinstance(key, str) and key:
            keep[key] = plain
    where = {k: str(sources.get(k)) if sources.get(k) in SOURCES else "default" for k in keep}
    extras = data.get("extras")
    left = tuple(w for w in extras[:MAX_PARAMS] if isinstance(w, str)) if isinstance(
        extras, list) else ()
    if not keep and not left:
        return None  # a parser without arguments: the command line's params say more

    def number(name: str) -> int:
        got = data.get(name)
        return got if isinstance(got, int) and not isinstance(got, bool) else 0

    return ProbeParams(
        params=keep, sources=where, extras=left,
        dropped=number("dropped") + len(params) - len(keep),
        pid=number("pid"), ppid=number("ppid"), at=number("at"),
        launcher=data.get("launcher") is True)


def read_probe_params(probe: Path) -> ProbeParams | None:
    """The run's parse among those the probe wrote (``choose``), or None when none."""
    found: list[ProbeParams] = []
    for path in sorted(probe.glob("params-*.json"))[:MAX_FILES]:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_PARAMS_FILE:
                continue
            got = clean(json.loads(path.read_text(encoding="utf-8", errors="replace")))
        except (OSError, ValueError, RecursionError):
            continue
        if got is not None:
            found.append(got)
    return choose(found)


def choose(found: list[ProbeParams]) -> ProbeParams | None:
    """The run's own parse: see the module's docstring."""
    candidates = [p for p in found if not p.launcher] or found
    pids = {p.pid for p in candidates}
    outer = [p for p in candidates if p.ppid not in pids] or candidates
    return min(outer, key=lambda p: (p.at, p.pid)) if outer else None


def sources_note(sources: dict[str, str]) -> str:
    """``default: batch_size, optimizer; typed: lr``: where each value came from."""
    by: dict[str, list[str]] = {}
    for name, source in sorted(sources.items()):
        by.setdefault(source, []).append(name)
    return "; ".join(f"{source}: {', '.join(names)}" for source, names in sorted(by.items()))


def combined(found: ProbeParams | None, typed: dict[str, Any],
             extras: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The record's params and the note of their sources.

    ``typed`` is the command line's params (normalised), used when the probe saw no parse;
    ``extras`` the params of the words the parse left unparsed (normalised), recorded as
    typed beside the namespace (a namespace value wins)."""
    if found is None:
        return typed, None
    params = {**extras, **found.params}
    sources = {**{k: "typed" for k in extras}, **found.sources}
    note = sources_note(sources)
    if found.dropped:
        note += f"; not recorded: {found.dropped} more (over the bound of {MAX_PARAMS})"
    return params, note
