"""Fixtures the unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.compare import Evidence
from tests.factories import EvidencePair, file_evidence


@pytest.fixture
def pair(tmp_path: Path) -> EvidencePair:
    """Factory: (left, right) Evidence from name -> bytes tables, as real files."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def make(left: dict[str, bytes], right: dict[str, bytes],
             logs: tuple[str, ...] = ()) -> tuple[Evidence, Evidence]:
        return (file_evidence(tmp_path / "a", left, logs),
                file_evidence(tmp_path / "b", right, logs))

    return make
