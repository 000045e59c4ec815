"""The report formats in one table: name -> renderer of a list of results to text.

``FORMATS`` holds the file formats (``html`` for one result, ``markdown`` and ``junit``
for any number); the terminal format is ``report.terminal`` (it prints, it writes no
file). ``write_reports(results, targets)`` checks every target before rendering anything
(nothing half-written), renders each requested format once and writes it through
``core.safefile.write_target`` (``-``: stdout; links and special files refused).
``audit verify`` and ``audit report`` both write through it. Renderers
are imported when used (the HTML one pulls in matplotlib).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor.certify.verdict import VerifyResult
from auditor.core.errors import InputError
from auditor.core.safefile import check_target, write_target


@dataclass(frozen=True)
class Links:
    """Where the HTML report links the run ids (``--original-url``, ``--rerun-url``)."""

    original_url: str | None = None
    rerun_url: str | None = None


def _html(results: Sequence[VerifyResult], links: Links) -> str:
    from auditor.report.html import render_html

    if len(results) != 1:
        raise InputError(f"the HTML report shows one verification ({len(results)} given)",
                         hint="write one page per run with --report-dir")
    return render_html(results[0], original_url=links.original_url, rerun_url=links.rerun_url)


def _markdown(results: Sequence[VerifyResult], _links: Links) -> str:
    from auditor.report.markdown import render_markdown

    return render_markdown(results)


def _junit(results: Sequence[VerifyResult], _links: Links) -> str:
    from auditor.report.junit import render_junit

    return render_junit(results)


Renderer = Callable[[Sequence[VerifyResult], Links], str]
FORMATS: dict[str, Renderer] = {"html": _html, "markdown": _markdown, "junit": _junit}


def write_reports(results: Sequence[VerifyResult], targets: Mapping[str, Path],
                  links: Links = Links()) -> list[Path]:
    """Write each ``format -> path`` of ``targets``; return the paths written, in order."""
    unknown = sorted(set(targets) - set(FORMATS))
    if unknown:
        raise InputError(f"unknown report format {unknown[0]!r}",
                         hint="known: " + ", ".join(FORMATS))
    for target in targets.values():
        check_target(target)  # before any rendering: nothing half-written
    rendered = [(path, FORMATS[fmt](results, links)) for fmt, path in targets.items()]
    for path, text in rendered:
        write_target(path, text.encode("utf-8"))
    return [path for path, _ in rendered]
