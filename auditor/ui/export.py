"""``audit compare RUN RUN [RUN…] --html FILE``: the comparison page as one file.

The page holds its data, styles and scripts inline (scripts allowed by their sha256 in a
CSP meta tag), so it opens offline from disk, in a pull request artifact or a chat.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from auditor.core.errors import InputError
from auditor.store.base import RunStore
from auditor.store.query import latest_verdicts
from auditor.ui.pages import compare_page
from auditor.ui.views import MAX_COMPARE, compare_view


def export_comparison(store: RunStore, runs: Sequence[str], path: Path,
                      metric: str | None = None) -> Path:
    """Write the self-contained comparison of ``runs`` to ``path`` (atomically)."""
    if len(runs) < 2:
        raise InputError("--html needs at least two runs")
    if len(runs) > MAX_COMPARE:
        raise InputError(f"at most {MAX_COMPARE} runs can be compared at once")
    ids = list(dict.fromkeys(store.resolve(r) for r in runs))
    html = compare_page(compare_view(store, ids, metric, latest_verdicts(store)), inline=True)
    path = path.expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a directory: name the HTML file to write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".compare-", suffix=".html", dir=path.parent or ".")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except FileNotFoundError:
        raise InputError(f"cannot write {path}: its folder does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None
    return path
