"""The HTML report: one self-contained file that opens offline.

Contract:

- ``render_html(result)`` renders ``templates/report.html.j2`` with jinja2, autoescape
  on and ``StrictUndefined``; every user-supplied string (run names, metric and tensor
  names, notes, cause explanations) reaches the page only through autoescaping, and a
  value that looks like template syntax (``{{ 7*7 }}``) stays literal text.
- Plots are inline SVG made by ``report.plots`` from numbers; they are marked safe only
  after ``plots.check_svg`` has parsed them and found no active content. A plot that
  fails that check is left out and the page says so.
- No network: CSS is inline, no scripts, no fonts or images fetched.
- Links to the original and rerun runs are kept only for http(s), file or relative
  URLs (never ``javascript:``).
- Python computes and orders every value; the template only loops and prints.
- Order: the verdict banner, then the policy loosenings (``loosen.shown_loosenings``:
  never the default policy's own settings) when there are any, then "also noted": the
  environment changes by name when no likely cause names them (a bitwise verdict) and
  logs that differed without counting (the default policy's note), the runs by name and
  id, the counts in words (``grouping.summary_rows``), the likely causes (the first
  ``MAX_CAUSES``), the metric curves and tensor chart, and only then the long tables
  (differences by comparer, many package changes folded into one row; details; notes).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from auditor.certify.loosen import log_notes, shown_loosenings
from auditor.certify.verdict import Cause, VerifyResult
from auditor.compare.difference import Difference
from auditor.core.version import __version__
from auditor.report import plots
from auditor.report.grouping import (
    SEGMENT_HEADER,
    check_line,
    environment_line,
    grouped,
    segment_rows,
    summary_rows,
)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"  # shipped in the wheel
TEMPLATE_NAME = "report.html.j2"
MAX_METRIC_PLOTS = 12
MAX_ROWS_PER_TABLE = 200
MAX_CAUSES = 8  # the rest are counted: the curves come before long tables
MAX_CELL = 300
SAFE_SCHEMES = frozenset({"", "http", "https", "file"})

LEVEL_VIEW: dict[str, tuple[str, str]] = {  # level -> (css class, headline)
    "reproduced-bitwise": ("bitwise", "Reproduced: bit-identical"),
    "reproduced-within-tolerance": ("tolerance", "Reproduced within tolerance"),
    "not-reproduced": ("failed", "Not reproduced"),
    "could-not-verify": ("error", "Could not verify"),
}
_STEP = re.compile(r"^metrics/(?P<name>.+)@step (?P<step>-?\d+)$")


def render_html(result: VerifyResult, *, original_url: str | None = None,
                rerun_url: str | None = None) -> str:
    """The whole report page for one verification."""
    template = _environment().get_template(TEMPLATE_NAME)
    return template.render(report_context(result, original_url, rerun_url))


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def report_context(result: VerifyResult, original_url: str | None,
                   rerun_url: str | None) -> dict[str, Any]:
    """Every value the template prints, computed and ordered here."""
    verdict = result.verdict
    css, headline = LEVEL_VIEW[verdict.level]
    metric_plots, plot_notes = _metric_plots(result)
    tensor_svg, tensor_prefix, tensor_notes = _tensor_plot(result)
    return {
        "title": f"auditor: {result.original_name} ({result.original_run})",
        "level": verdict.level, "level_class": css, "headline": headline,
        "exit_code": verdict.exit_code, "first_divergence": verdict.first_divergence,
        "loosenings": shown_loosenings(verdict), "log_notes": log_notes(verdict),
        "environment": None if verdict.causes
        else environment_line(verdict.differences.get("environment", [])),
        "runs": _runs(result, original_url, rerun_url), "facts": _facts(result),
        "summary": summary_rows(verdict.summary),
        "timings": [(stage, f"{sec:.1f} s") for stage, sec in result.seconds.items()],
        "causes": [_cause_row(c) for c in verdict.causes[:MAX_CAUSES]],
        "more_causes": max(0, len(verdict.causes) - MAX_CAUSES),
        "metric_plots": metric_plots, "tensor_svg": tensor_svg, "tensor_prefix": tensor_prefix,
        "tables": _tables(verdict.differences),
        "notes": [*verdict.notes, *plot_notes, *tensor_notes],
        "version": __version__,
        "check": check_line(result), "segment_header": SEGMENT_HEADER,
        "segment_rows": [tuple(clip(c) for c in row) for row in segment_rows(result)],
        "restored": result.spot_check.restored if result.spot_check else [],
    }


def _runs(result: VerifyResult, original_url: str | None,
          rerun_url: str | None) -> list[dict[str, str | None]]:
    rows = [{"role": "original", "name": result.original_name, "id": result.original_run,
             "url": safe_url(original_url)}]
    rows.append({"role": "rerun", "name": result.rerun_name or "", "id": result.rerun_run or
                 "(none)", "url": safe_url(rerun_url) if result.rerun_run else None})
    return rows


def safe_url(url: str | None) -> str | None:
    """``url`` when its scheme is harmless in an ``href`` (http, https, file, relative)."""
    if not url:
        return None
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    return url.strip() if scheme in SAFE_SCHEMES else None


def _facts(result: VerifyResult) -> list[tuple[str, str]]:
    facts = [("name", result.original_name), ("started", result.started_at.isoformat()),
             ("backend", result.backend), ("image", result.image),
             ("environment sha256", result.environment_sha256),
             ("certificate", result.certificate_path),
             ("certificate sha256", result.certificate_sha256)]
    facts += [(f"policy {k}", clip(json.dumps(v, sort_keys=True, default=str)))
              for k, v in sorted(result.policy.items())]
    return [(k, str(v)) for k, v in facts if v not in (None, "")]


def _cause_row(cause: Cause) -> dict[str, str]:
    return {"category": cause.category, "what": cause.what, "left": clip(cause.left or ""),
            "right": clip(cause.right or ""), "score": f"{cause.score:.2f}",
            "explanation": clip(cause.explanation)}


def clip(text: str, limit: int = MAX_CELL) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- plots --------------------------------------------------------------------------------
def divergence_steps(result: VerifyResult) -> dict[str, int]:
    """First diverging step per metric: ``stats["first_step"]`` of each metric difference
    (``metrics/<key>``), or a ``metrics/<key>@step N`` location, and the verdict's."""
    found = [_step_of(d.where, d.stats.get("first_step"))
             for d in result.verdict.differences.get("metrics", [])]
    found.append(_step_of(result.verdict.first_divergence or "", None))
    steps: dict[str, int] = {}
    for name, step in (pair for pair in found if pair is not None):
        steps[name] = min(step, steps.get(name, step))
    return steps


def _step_of(where: str, first_step: object) -> tuple[str, int] | None:
    if located := _STEP.match(where):
        return located.group("name"), int(located.group("step"))
    if where.startswith("metrics/") and type(first_step) is int:
        return where.removeprefix("metrics/"), first_step
    return None


def _metric_plots(result: VerifyResult) -> tuple[list[dict[str, Any]], list[str]]:
    original = result.metric_series.get("original", {})
    rerun = result.metric_series.get("rerun", {})
    steps = divergence_steps(result)
    first = _STEP.match(result.verdict.first_divergence or "")
    lead = first.group("name") if first else None
    names = sorted(set(original) | set(rerun),
                   key=lambda n: (n != lead, n not in steps, steps.get(n, 0), n))
    notes = []
    if len(names) > MAX_METRIC_PLOTS:
        notes.append(f"{len(names) - MAX_METRIC_PLOTS} more metrics not plotted "
                     f"(the first {MAX_METRIC_PLOTS}, diverging first, are shown)")
    shown = []
    for index, name in enumerate(names[:MAX_METRIC_PLOTS]):
        make = partial(plots.metric_curves_svg, original.get(name, []), rerun.get(name, []),
                       steps.get(name), salt=f"m{index}")
        svg, note = _safe_plot(make, name)
        notes += note
        shown.append({"name": name, "svg": svg, "divergence": steps.get(name),
                      "points": (len(original.get(name, [])), len(rerun.get(name, [])))})
    return shown, notes


def _tensor_plot(result: VerifyResult) -> tuple[Markup | str, str, list[str]]:
    bars = [bar for d in _walk(result.verdict.differences.get("weights", []))
            if (bar := _tensor_bar(d)) is not None]
    if not bars:
        return "", "", []
    prefix = common_folder([b.name for b in bars]) if len(bars) > 1 else ""
    bars = [plots.TensorBar(b.name.removeprefix(prefix), b.max_abs, b.max_ulp) for b in bars]
    notes = [f"{len(bars) - plots.MAX_BARS} more differing tensors not charted"] \
        if len(bars) > plots.MAX_BARS else []
    svg, note = _safe_plot(partial(plots.tensor_bars_svg, bars, salt="t0"), "tensor chart")
    return svg, prefix, notes + note


def common_folder(names: Sequence[str]) -> str:
    """The longest ``a/b/`` prefix shared by every name ("" when none)."""
    shared: list[str] = []
    for column in zip(*(name.split("/")[:-1] for name in names), strict=False):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return "".join(f"{part}/" for part in shared)


def _tensor_bar(diff: Difference) -> plots.TensorBar | None:
    max_abs, max_ulp = _number(diff.stats.get("max_abs")), _number(diff.stats.get("max_ulp"))
    if max_abs is None and max_ulp is None:
        return None
    return plots.TensorBar(diff.where.removeprefix("weights/"), max_abs, max_ulp)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _safe_plot(make: Callable[[], str], what: str) -> tuple[Markup | str, list[str]]:
    try:
        svg = make()
    except plots.UnsafeSvg as exc:
        return "", [f"plot of {clip(what, 80)} left out: {exc}"]
    # Safe to mark: matplotlib drew it from numbers, XML-escaped its text, and
    # plots.check_svg found no active content in it.
    return (Markup(svg) if svg else ""), []


# -- difference tables ----------------------------------------------------------------------
def _walk(diffs: Sequence[Difference]) -> Iterator[Difference]:
    for diff in diffs:
        yield diff
        yield from _walk(diff.details)


def _flatten(diffs: Sequence[Difference], depth: int = 0) -> Iterator[tuple[int, Difference]]:
    for diff in diffs:
        yield depth, diff
        yield from _flatten(diff.details, depth + 1)


def _tables(differences: dict[str, list[Difference]]) -> list[dict[str, Any]]:
    tables = []
    for comparer, found in differences.items():
        diffs = grouped(found)
        ordered = sorted(diffs, key=lambda d: d.within_tolerance)  # beyond tolerance first
        rows = [_diff_row(depth, d) for depth, d in _flatten(ordered)]
        beyond = sum(not d.within_tolerance for d in diffs)
        counts = (f"{plural(len(diffs), 'difference')}, {beyond} beyond tolerance"
                  if diffs else "identical")
        tables.append({"comparer": comparer, "rows": rows[:MAX_ROWS_PER_TABLE],
                       "hidden": max(0, len(rows) - MAX_ROWS_PER_TABLE), "counts": counts})
    return tables


def plural(count: int, noun: str) -> str:
    """``1 difference``, ``2 differences``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _diff_row(depth: int, diff: Difference) -> dict[str, Any]:
    stats = ", ".join(f"{k}={v}" for k, v in sorted(diff.stats.items()))
    return {"depth": depth, "where": clip(diff.where), "kind": diff.kind,
            "left": clip(diff.left or ""), "right": clip(diff.right or ""),
            "magnitude": "" if diff.magnitude is None else f"{diff.magnitude:.4g}",
            "within": diff.within_tolerance,
            "comments": clip("; ".join([*diff.comments, stats] if stats else diff.comments))}
