"""Terminal rendering with rich: run tables and readable records.

Tables go to stdout, progress and notices to stderr. Colour is off when stdout is not a
terminal or ``NO_COLOR`` is set (rich honours both), so CI logs carry no escapes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditor.store.base import RunSummary

if TYPE_CHECKING:
    from auditor.core.schema import RunRecord


def console(*, err: bool = False) -> Console:
    """A console for stdout or stderr that respects NO_COLOR, non-TTY output and a
    ``COLUMNS`` the user set."""
    stream = sys.stderr if err else sys.stdout
    wide = None if stream.isatty() else 240  # never cut columns in pipes and CI logs
    if os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) >= 40:
        wide = int(os.environ["COLUMNS"])
    return Console(
        stderr=err,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        highlight=False,
        soft_wrap=True,
        width=wide,
        height=None if wide is None else 50,
    )


def shown(value: object) -> Text:
    """``value`` as plain text for the terminal: control characters (C0, DEL, C1), line
    and paragraph separators and bidirectional controls as visible escapes (``\\x1b``,
    ``\\u202e``), and no rich markup (``[red]`` stays literal)."""
    text = str(value)
    if text.isprintable():  # bidi controls are format characters: not printable either
        return Text(text)
    return Text("".join(ch if ch.isprintable() else _escape(ch) for ch in text))


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def fmt_float(value: float) -> str:
    """Short, exact-enough display of a metric value (nan/inf spelled out)."""
    return f"{value:.6g}"


def value_of(r: RunSummary, column: str) -> str:
    """A ``params.NAME`` or ``metrics.NAME`` cell of a run ("-" when it lacks it)."""
    if column.startswith("metrics."):
        v = r.final_metrics.get(column[8:])
        return "-" if v is None else fmt_float(v)
    value = (r.params or {}).get(column[7:], None) if column.startswith("params.") else None
    if isinstance(value, float):
        return fmt_float(value)
    return "-" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def nest_reruns(runs: Sequence[RunSummary]) -> list[tuple[RunSummary, bool]]:
    """Runs in order with each rerun moved right under its original (when listed):
    (run, is a rerun)."""
    listed = {r.id for r in runs}
    under: dict[str, list[RunSummary]] = {}
    for r in runs:
        if r.reproduces in listed:
            under.setdefault(r.reproduces or "", []).append(r)
    out: list[tuple[RunSummary, bool]] = []
    for r in runs:
        if r.reproduces in listed:
            continue
        out.append((r, bool(r.reproduces)))
        out.extend((x, True) for x in under.get(r.id, []))
    return out


def print_runs(runs: Sequence[RunSummary], columns: Sequence[str] = ()) -> None:
    """The ``audit list`` table: fits 80 columns (ids cut to 12 characters, which any
    command accepts, when the terminal is narrower than 120); ``columns`` (``params.X``,
    ``metrics.Y``) replace the metrics summary; reruns are nested under their originals."""
    out = console()
    narrow = out.width < 120
    table = Table(box=None, header_style="bold", pad_edge=False)
    heads = ["id", "started (UTC)", "status", "name", "commit", *(columns or ["metrics"])]
    for col in heads:
        table.add_column(col.split(".", 1)[-1] if col in columns else col,
                         no_wrap=col not in ("metrics", "name"),
                         overflow="fold" if col in ("metrics", "name") else "ellipsis")
    for r, rerun in nest_reruns(runs):
        commit = (r.commit or "-")[:8 if narrow else 10] + ("*" if r.dirty else "")
        rid = r.id[:12] if narrow else r.id
        cells = [value_of(r, c) for c in columns] if columns else [
            "  ".join(f"{k}={fmt_float(v)}" for k, v in list(r.final_metrics.items())[:3])]
        table.add_row(shown(("↳ " if rerun else "") + rid),
                      r.started_at.strftime("%m-%d %H:%M" if narrow else "%Y-%m-%d %H:%M:%S"),
                      shown(r.status), shown(r.name), shown(commit), *map(shown, cells))
    out.print(table)
    lacks = {r.id: r.lacks for r in runs}  # summaries and `--where` rows alike
    imported = [i for i, why in lacks.items() if why]
    if imported:
        listed = ", ".join(i[:10] for i in imported[:5]) + (" …" if len(imported) > 5 else "")
        out.print(shown(f"{len(imported)} imported run(s) cannot be verified ({listed}): "
                        f"{lacks[imported[0]]} (see `audit show`)"), highlight=False)
    if not runs:
        out.print("no runs recorded yet: try `audit record -- python train.py`")


def _section(out: Console, title: str, rows: Sequence[tuple[str, object]]) -> None:
    out.print(Text.assemble(shown(title), style="bold"))
    for key, value in rows:
        if value not in (None, "", (), [], {}):
            out.print(Text.assemble("  ", shown(f"{key:<22}"), " ", shown(value)))


def _untracked_rows(rec: RunRecord) -> list[tuple[str, object]]:
    """Each untracked file captured as source, with its size."""
    assert rec.code is not None
    rows: list[tuple[str, object]] = []
    for name in rec.code.untracked_artifacts:
        ref = rec.artifact(name)
        rows.append((name.removeprefix("code/untracked/"), f"{ref.size} B" if ref else "?"))
    return rows


def print_record(rec: RunRecord) -> None:
    """The ``audit show`` view: each section a few lines, full detail in ``--json``."""
    out = console()
    ident, env = rec.identity, rec.environment
    _section(
        out,
        f"run {ident.id}",
        [
            ("name", ident.name),
            ("status", f"{ident.status} (exit {ident.exit_code})"),
            ("user@host", f"{ident.user}@{ident.host}"),
            ("started", ident.started_at.isoformat()),
            ("duration", f"{ident.duration_s:.2f} s" if ident.duration_s is not None else None),
            ("reproduces", ident.reproduces),
            ("tags", ", ".join(ident.tags)),
        ],
    )
    _section(
        out,
        "command",
        [
            ("argv", " ".join(rec.command.argv)),
            ("cwd", rec.command.cwd),
            ("outside the tree", "; ".join(rec.command.outside_tree)),
        ],
    )
    if rec.code:
        c = rec.code
        _section(
            out,
            "code",
            [
                ("vcs", c.vcs),
                ("commit", c.commit),
                ("branch", c.branch),
                ("remote", c.remote),
                ("dirty", c.dirty),
                ("untracked files", len(c.untracked_artifacts)),
                ("tree sha256", c.tree_sha256),
                ("left out", ", ".join(c.excluded)),
            ],
        )
        _section(out, "untracked files (stored as code)", _untracked_rows(rec))
    _section(out, "params", sorted(rec.params.items()))
    s = rec.seeds
    _section(
        out,
        "seeds",
        [
            ("seed", s.seed),
            ("seeded", ", ".join(s.seeded)),
            ("PYTHONHASHSEED", s.pythonhashseed),
            ("torch initial seed", s.torch_initial_seed),
        ],
    )
    if rec.determinism:
        _section(
            out,
            f"determinism ({rec.determinism.source})",
            [(k, v) for k, v in rec.determinism.model_dump().items() if k != "source"],
        )
    py = env.python
    if py:
        lock = py.lock
        _section(
            out,
            "python",
            [
                ("version", f"{py.version} ({py.implementation})"),
                ("executable", py.executable),
                ("recorded in", rec.not_captured.get("recorded_in")),  # audit record --in-image
                ("packages", len(py.packages)),
                (
                    "lockfile",
                    f"{lock.artifact} ({lock.origin}, sha256 {lock.sha256[:12]}…)"
                    if lock
                    else None,
                ),
                ("lock drift", "; ".join(lock.drift) if lock else None),
            ],
        )
    if env.system:
        sy = env.system
        _section(
            out,
            "system",
            [
                ("os", sy.os),
                ("kernel", sy.kernel),
                ("glibc", sy.glibc),
                ("cpu", f"{sy.cpu_model} x{sy.cpu_count}"),
                ("ram", f"{(sy.ram_bytes or 0) / 2**30:.1f} GiB"),
            ],
        )
    if env.accelerators:
        acc = env.accelerators
        gpus = ", ".join(f"{g.name} (cc {g.compute_capability})" for g in acc.gpus)
        _section(
            out,
            "gpus",
            [
                ("gpus", gpus or "none"),
                ("driver", acc.driver_version),
                ("cuda", acc.torch_cuda),
                ("cudnn", acc.cudnn),
            ],
        )
    _section(
        out,
        "data",
        [
            (d.path, f"{d.kind} {d.size} B sha256 {d.sha256[:16]}…"
             + (" (untracked in the repository: fingerprinted as data)"
                if d.origin == "untracked" else ""))
            for d in rec.data
        ],
    )
    _section(out, "metrics (final)", [(k, fmt_float(v)) for k, v in rec.metrics.final.items()])
    _section(
        out,
        "artifacts",
        [
            (a.name, f"{a.kind} {a.size} B {a.sha256[:12]}…")
            for a in rec.artifacts
            if a.kind in ("output", "log")
        ],
    )
    _section(out, "not captured",
             sorted((k, v) for k, v in rec.not_captured.items() if k != "recorded_in"))
