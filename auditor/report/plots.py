"""Plots for the HTML report: matplotlib (Agg) figures rendered to inline SVG strings.

Contract:

- Every function takes plain numbers and names and returns one ``<svg>…</svg>`` element
  (no XML prologue, no DOCTYPE, no metadata) or ``""`` when there is nothing to draw.
- Text is written as SVG ``<text>`` (``svg.fonttype = "none"``): files stay small and
  matplotlib XML-escapes every string it writes. Names never reach mathtext
  (``parse_math=False``), so a ``$`` in a metric or tensor name cannot raise. Labels are
  cut to ``MAX_LABEL`` characters and stripped of control characters first.
- ``check_svg`` parses the output and refuses active content (``script`` or
  ``foreignObject`` elements, ``on…`` handler attributes, ``javascript:`` links) before
  anyone marks it safe; user text inside ``<text>`` is inert and allowed.
- Element ids differ between figures (a per-figure ``svg.hashsalt``), so several SVGs
  inlined into one page never share clip-path ids.
- Non-finite values (NaN, ±Inf) are gaps in a curve, marked with an ``x`` under the
  axis and counted in the legend; series longer than ``MAX_POINTS`` are thinned evenly
  (first and last point kept). Log-scale bars start a decade below the smallest value.
- Uses ``matplotlib.figure.Figure`` directly: no pyplot, no GUI backend, no global
  figure state (rc settings only inside ``rc_context``).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

MAX_POINTS = 2000
MAX_LABEL = 60
MAX_BARS = 30
ORIGINAL_COLOR = "#1f77b4"
RERUN_COLOR = "#d62728"
DIVERGENCE_COLOR = "#444444"

_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_ACTIVE_TAGS = frozenset({"script", "foreignobject", "iframe", "object", "embed"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Point = tuple[int, float]


@dataclass(frozen=True)
class TensorBar:
    """One tensor's divergence: largest absolute difference and largest ULP distance."""

    name: str
    max_abs: float | None
    max_ulp: float | None


class UnsafeSvg(ValueError):
    """The SVG carried active content; it is never embedded."""


def label(text: str) -> str:
    """A short, printable version of a user-supplied name for a plot."""
    clean = _CONTROL.sub("?", text)
    return clean if len(clean) <= MAX_LABEL else clean[: MAX_LABEL - 1] + "…"


def finite_points(points: Sequence[Point]) -> tuple[list[int], list[float], int]:
    """Steps and values with NaN for every non-finite value (a gap in the curve), and
    how many values were not finite."""
    steps = [int(s) for s, _ in points]
    values = [float(v) if math.isfinite(v) else math.nan for _, v in points]
    return steps, values, sum(not math.isfinite(v) for _, v in points)


def thin(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    """At most ``MAX_POINTS`` evenly spaced points, first and last kept."""
    if len(steps) <= MAX_POINTS:
        return steps, values
    stride = (len(steps) - 1) / (MAX_POINTS - 1)
    picks = sorted({round(i * stride) for i in range(MAX_POINTS)})
    return [steps[i] for i in picks], [values[i] for i in picks]


def _settings(salt: str) -> Any:  # matplotlib types rc keys as a Literal of every name
    return {**_RC, "svg.hashsalt": salt}


def metric_curves_svg(original: Sequence[Point], rerun: Sequence[Point],
                      divergence_step: int | None, *, salt: str) -> str:
    """Original and rerun curves of one metric overlaid; the first divergence marked."""
    if not original and not rerun:
        return ""
    with mpl.rc_context(_settings(salt)):
        fig = Figure(figsize=(5.4, 2.4), layout="constrained")
        ax = fig.add_subplot()
        _curve(ax, original, "original", ORIGINAL_COLOR, "-")
        _curve(ax, rerun, "rerun", RERUN_COLOR, "--")
        if divergence_step is not None:
            _mark_divergence(ax, divergence_step)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(loc="best", frameon=False)
        return _to_svg(fig)


def _curve(ax: Axes, points: Sequence[Point], name: str, color: str, style: str) -> None:
    steps, values, dropped = finite_points(points)
    bad = [s for s, v in zip(steps, values, strict=True) if math.isnan(v)]
    steps, values = thin(steps, values)
    if any(math.isfinite(v) for v in values):
        ax.plot(steps, values, style, color=color, linewidth=1.4, label=name)
    if dropped:  # non-finite values: a gap in the curve and a mark under the axis
        ax.plot(bad[:MAX_POINTS], [0.0] * len(bad[:MAX_POINTS]), "x", color=color,
                transform=ax.get_xaxis_transform(), clip_on=False, markersize=5,
                label=f"{name}: {dropped} NaN/Inf")


def _mark_divergence(ax: Axes, step: int) -> None:
    ax.axvline(step, color=DIVERGENCE_COLOR, linestyle=":", linewidth=1.2)
    ax.annotate(f"first divergence: step {step}", xy=(step, 1.0),
                xycoords=("data", "axes fraction"), xytext=(4, -12),
                textcoords="offset points", fontsize=8, color=DIVERGENCE_COLOR,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none",
                      "alpha": 0.85})


def tensor_bars_svg(bars: Sequence[TensorBar], *, salt: str) -> str:
    """Per-tensor max |Δ| and max ULP side by side, log scale, largest first."""
    shown = sorted(bars, key=lambda b: -(b.max_abs or 0.0))[:MAX_BARS]
    if not any(_positive(b.max_abs) or _positive(b.max_ulp) for b in shown):
        return ""
    height = 1.2 + 0.28 * len(shown)
    with mpl.rc_context(_settings(salt)):
        fig = Figure(figsize=(8.0, height), layout="constrained")
        left, right = fig.subplots(1, 2, sharey=True)
        names = [label(b.name) for b in shown]
        _bars(left, names, [b.max_abs for b in shown], "max |original − rerun|", ORIGINAL_COLOR)
        _bars(right, names, [b.max_ulp for b in shown], "max ULP distance", RERUN_COLOR)
        left.set_yticks(range(len(names)), names, parse_math=False)
        left.invert_yaxis()
        return _to_svg(fig)


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _bars(ax: Axes, names: list[str], values: list[float | None], title: str,
          color: str) -> None:
    heights = [v if v is not None and _positive(v) else 0.0 for v in values]
    ax.barh(range(len(names)), heights, color=color)
    if positive := [h for h in heights if h > 0]:
        ax.set_xscale("log")  # bars start a decade below the smallest, so each is visible
        ax.set_xlim(left=10 ** (math.floor(math.log10(min(positive))) - 1))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def _to_svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = _METADATA.sub("", _PROLOGUE.sub("", buffer.getvalue(), count=1), count=1)
    return check_svg(svg.strip())


def check_svg(svg: str) -> str:
    """``svg`` unchanged when it is one inert ``<svg>`` element; ``UnsafeSvg`` otherwise."""
    if not svg.startswith("<svg") or not svg.endswith("</svg>"):
        raise UnsafeSvg("plot output is not a single <svg> element")
    try:
        root = ElementTree.fromstring(svg)
    except ElementTree.ParseError as exc:
        raise UnsafeSvg(f"plot output is not well-formed XML ({exc})") from None
    for element in root.iter():
        _check_element(element)
    return svg


def _check_element(element: ElementTree.Element) -> None:
    tag = element.tag.rsplit("}", 1)[-1].lower()
    if tag in _ACTIVE_TAGS:
        raise UnsafeSvg(f"plot output carries a <{tag}> element")
    for name, value in element.attrib.items():
        attr = name.rsplit("}", 1)[-1].lower()
        if attr.startswith("on") or "javascript:" in value.lower().replace(" ", ""):
            raise UnsafeSvg(f"plot output carries an active attribute {attr!r}")
