"""`audit show` of a run recorded with --in-image: where it ran is shown with the Python it
ran, not under "not captured" (it was captured)."""

from __future__ import annotations

import pytest

from auditor.core.schema import Environment, PythonEnv
from auditor.report.records import print_record
from tests.factories import make_record


def test_the_image_a_run_was_recorded_in_is_shown_with_its_python(
    capsys: pytest.CaptureFixture[str],
) -> None:
    note = "recorded in docker image sha256:abc (demo:latest): network none, uid 0:0"
    rec = make_record(
        environment=Environment(python=PythonEnv(
            executable="python in docker sha256:abc", version="3.11.2",
            implementation="CPython", build="main", packages={"numpy": "2.2.6"})),
        not_captured={"recorded_in": note, "determinism": "not observed"},
    )
    print_record(rec)
    out = capsys.readouterr().out
    lines = out.splitlines()
    shown = [line for line in lines if line.strip().startswith("recorded in ")]
    assert len(shown) == 1 and shown[0].endswith(note)
    assert lines.index(shown[0]) < lines.index("not captured")  # in the python section
    assert "recorded_in" not in out and "determinism" in out
