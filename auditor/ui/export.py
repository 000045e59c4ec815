"""``audit compare RUN RUN [RUN…] --html FILE``: the comparison page as one file.

The page holds its data, styles and scripts inline (scripts allowed by their sha256 in a
CSP meta tag), so it opens offline from disk, in a pull request artifact or a chat. It is
written by ``core.safefile`` (a link, FIFO, device or folder there is refused, exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from auditor.core.errors import InputError
from auditor.core.safefile import check_target, write_target
from auditor.store.base import EvidenceReader
from auditor.store.query import latest_verdicts
from auditor.ui.pages import compare_page
from auditor.ui.views import MAX_COMPARE, compare_view


def export_comparison(store: EvidenceReader, runs: Sequence[str], path: Path,
                      metric: str | None = None) -> Path:
    """Write the self-contained comparison of ``runs`` to ``path`` (atomically)."""
    if len(runs) < 2:
        raise InputError("--html needs at least two runs")
    if len(runs) > MAX_COMPARE:
        raise InputError(f"at most {MAX_COMPARE} runs can be compared at once")
    ids = list(dict.fromkeys(store.resolve(r) for r in runs))
    path = path.expanduser()
    check_target(path, stdout=False)  # before the page is built: nothing replaced
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: its folder does not exist")
    html = compare_page(compare_view(store, ids, metric, latest_verdicts(store)), inline=True)
    write_target(path, html.encode("utf-8"), stdout=False)
    return path
