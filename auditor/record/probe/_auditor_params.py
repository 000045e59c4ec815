"""The probe's params capture: argparse's parsed namespace, inside the training process.

Standard library only (it runs under any interpreter). ``install()`` wraps
``argparse.ArgumentParser.parse_known_args`` (which ``parse_args`` calls): the first parse
of the process's own command line (``args`` not given: an explicit list, as in
``p.parse_args(["--x", "1"])``, is not the command line) is kept, every destination of the
parser with its value and where it came from: ``typed`` (an option string, its unique
abbreviation or a positional given on the command line), ``config`` (set through
``set_defaults``, as scripts load a config file, or held by a namespace handed to the
parse), or ``default`` (the default given to ``add_argument``). Later parses of the command
line are ignored. Names are argparse's destinations (``--batch-size`` is ``batch_size``).

Bounded: at most ``MAX_PARAMS`` destinations, text values cut to ``MAX_TEXT`` characters
(with their length and a hash, so two long values that differ still differ); a path is
kept as its text; other values that are not JSON are kept as their ``repr`` without memory
addresses (a function given through ``set_defaults(func=...)`` has the same text in every
run).

At exit the capture is written to ``$AUDITOR_PROBE_DIR/params-<pid>.json`` with the pid,
the parent's pid, the words the parse left (``parse_known_args``), when it happened and
whether the parser was a launcher's (it has an ``argparse.REMAINDER`` argument that took
words: ``torchrun``, ``accelerate launch``), so the recorder can pick the training's own
parse among several processes (``record/params.py``). A failure never reaches the training.
"""

import atexit
import json
import os
import sys
import time

MYPY = False
if MYPY:
    from typing import Any

MAX_PARAMS = 1_000  # destinations kept from one parser
MAX_TEXT = 512  # characters kept of one text value
MAX_ITEMS = 100  # items kept of one list value

_SEEN: "dict[str, Any]" = {}
_CONFIGURED: "dict[int, set[str]]" = {}  # id(parser) -> dests set through set_defaults


def _text(value: str) -> str:
    if len(value) <= MAX_TEXT:
        return value
    import hashlib

    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{value[:MAX_TEXT]}… ({len(value)} characters, sha256 {digest})"


def _plain(value: "Any", depth: int = 0) -> "Any":
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 1 << 63 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if value - value == 0 else repr(value)  # nan and inf are not JSON
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, os.PathLike):  # `type=Path`: the path, not `PosixPath('out')`
        path = os.fspath(value)
        return _text(path if isinstance(path, str) else repr(path))
    if isinstance(value, (list, tuple)) and depth == 0:
        items = [_plain(v, 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"… ({len(value)} items)")
        return items
    import re

    return _text(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)))


def _given(action: "Any", parser: "Any", longs: "list[str]", argv: "list[str]") -> bool:
    """Whether the command line names ``action`` (``longs``: the parser's long options)."""
    for word in argv:
        if word == "--":
            return False
        name = word.split("=", 1)[0]
        if name in action.option_strings:
            return True
        if name.startswith("--") and getattr(parser, "allow_abbrev", True):
            matches = [o for o in longs if o.startswith(name)]
            if len(matches) == 1 and matches[0] in action.option_strings:
                return True
        elif (len(word) > 2 and word[0] in parser.prefix_chars and word[1] != word[0]
              and word[:2] in action.option_strings):
            return True  # -b64, -vq
    return False


def _parsers(parser: "Any", namespace: "Any", argv: "list[str]", depth: int = 0
             ) -> "list[Any]":
    """The parser and the sub-parsers the command line chose (``train --lr 1``): by the
    namespace when the sub-parsers have a ``dest``, else the first name on the line."""
    import argparse

    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and depth < 8:
            picked = getattr(namespace, action.dest, None)
            names = [picked] if picked in action.choices else [w for w in argv
                                                             if w in action.choices][:1]
            for name in names:
                found += _parsers(action.choices[name], namespace, argv, depth + 1)
    return found


def _capture(parser: "Any", namespace: "Any", argv: "list[str]", preset: "set[str]",
             extras: "Any") -> None:
    import argparse

    params: dict[str, Any] = {}
    sources: dict[str, str] = {}
    launcher = False
    dropped = 0
    chosen = _parsers(parser, namespace, argv)
    configured = set(preset)
    for each in chosen:
        configured |= _CONFIGURED.get(id(each), set())
    skip = (argparse._HelpAction, argparse._VersionAction)
    covered: set[str] = set()  # every destination an action of a chosen parser has
    for each in chosen:
        longs = [o for a in each._actions for o in a.option_strings if o.startswith("--")]
        for action in each._actions:
            dest = action.dest
            covered.add(dest)
            if (isinstance(action, skip) or dest == argparse.SUPPRESS
                    or not hasattr(namespace, dest) or dest in params):
                continue
            if len(params) >= MAX_PARAMS:
                dropped += 1
                continue
            value = getattr(namespace, dest)
            if action.nargs == argparse.REMAINDER and value:
                launcher = True
            params[dest] = _plain(value)
            if action.option_strings:
                typed = _given(action, each, longs, argv)
            else:  # a positional is typed unless optional and left at its default
                typed = action.nargs not in ("?", "*") or value != action.default
            if typed:
                sources[dest] = "typed"
            elif dest in configured:
                sources[dest] = "config"
            else:
                sources[dest] = "default"
    for dest, value in sorted(vars(namespace).items()):  # set_defaults(func=...) alone
        if dest in params or dest in covered:
            continue
        if len(params) >= MAX_PARAMS:
            dropped += 1
            continue
        params[dest] = _plain(value)
        sources[dest] = "config" if dest in configured else "default"
    left = [_text(w) for w in extras[:MAX_PARAMS] if isinstance(w, str)]
    _SEEN.update(params=params, sources=sources, launcher=launcher, dropped=dropped, extras=left,
                 pid=os.getpid(), ppid=os.getppid(), at=time.time_ns())


def install() -> None:
    """Capture the process's own command line at its first parse: argparse is wrapped now
    when already imported, else as soon as its module has loaded (importing it here would
    cost every Python process of the run the import)."""
    module = sys.modules.get("argparse")
    if module is not None:
        _wrap(module)
    else:
        sys.meta_path.insert(0, _ArgparseFinder)
    atexit.register(_dump)


def _wrap(argparse: "Any") -> None:
    parser = argparse.ArgumentParser
    original = parser.parse_known_args
    if getattr(original, "_auditor", False):
        return

    def parse_known_args(self: "Any", args: "Any" = None, namespace: "Any" = None) -> "Any":
        mine = args is None and not _SEEN
        preset: set[str] = set()
        if mine and namespace is not None:
            try:
                preset = set(vars(namespace))
            except Exception:  # noqa: BLE001 - the probe must never break the training
                preset = set()
        result = original(self, args, namespace)
        if mine and not _SEEN:
            try:
                _capture(self, result[0], list(sys.argv[1:]), preset, result[1])
            except Exception:  # noqa: BLE001 - the probe must never break the training
                _SEEN.clear()
        return result

    set_defaults = parser.set_defaults

    def configured(self: "Any", **kwargs: "Any") -> "Any":
        try:  # noqa: SIM105 - contextlib is not imported at start-up
            _CONFIGURED.setdefault(id(self), set()).update(kwargs)
        except Exception:  # noqa: BLE001 - the probe must never break the training
            pass
        return set_defaults(self, **kwargs)

    for name in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(parse_known_args, name, getattr(original, name, None))
        setattr(configured, name, getattr(set_defaults, name, None))
    parse_known_args._auditor = True  # type: ignore[attr-defined]
    parser.parse_known_args = parse_known_args
    parser.set_defaults = configured


class _ArgparseFinder:
    """Wraps argparse as its module finishes loading, then steps aside."""

    @staticmethod
    def find_spec(name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if name != "argparse":
            return None
        try:  # noqa: SIM105 - contextlib is not imported at start-up
            sys.meta_path.remove(_ArgparseFinder)
        except ValueError:
            pass
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        run = getattr(spec.loader, "exec_module", None)
        if run is None:
            return spec

        def exec_module(module: "Any") -> None:
            run(module)
            try:  # noqa: SIM105 - contextlib is not imported at start-up
                _wrap(module)
            except Exception:  # noqa: BLE001 - the probe must never break the training
                pass

        try:
            setattr(spec.loader, "exec_module", exec_module)  # noqa: B010 - a method, patched
        except (AttributeError, TypeError):
            return spec
        return spec


def _dump() -> None:
    folder = os.environ.get("AUDITOR_PROBE_DIR")
    if not folder or not _SEEN or _SEEN.get("pid") != os.getpid():
        return  # nothing parsed here, or a forked child holding its parent's parse
    path = os.path.join(folder, f"params-{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w") as fh:
            json.dump(_SEEN, fh)
        os.replace(path + ".tmp", path)
    except Exception:  # noqa: BLE001 - best effort by design
        pass
