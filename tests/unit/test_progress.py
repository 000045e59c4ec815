"""Progress reporters (issue 17): in a log, one line per stage with its time and one
summary line per counter; under -q nothing; a plain callable still works as ``say``."""

from __future__ import annotations

import io
import re

import pytest

from auditor.core.progress import Reporter, counter, stage
from auditor.report.progress import PlainReporter, TerminalReporter, reporter_for


def test_a_log_gets_one_line_per_stage_with_its_time() -> None:
    out = io.StringIO()
    say = reporter_for(quiet=False, stream=out)
    assert isinstance(say, PlainReporter)
    say("building the environment (12 locked packages)")
    with stage(say, "fetching 3 package(s) into the wheel cache"):
        shown = counter(say, "fetching", 3, 300)
        for name in ("a", "b", "c"):
            shown.advance(current=name, nbytes=1_500_000)
        shown.close()
    with pytest.raises(RuntimeError), stage(say, "building the image"):
        raise RuntimeError("boom")
    lines = out.getvalue().splitlines()
    assert lines[0] == "· building the environment (12 locked packages)"
    assert lines[1] == "· fetching: 3/3 packages, 4.5 MB"
    assert re.fullmatch(r"· fetching 3 package\(s\) into the wheel cache: \d+\.\d s", lines[2])
    assert re.fullmatch(r"· building the image: failed after \d+\.\d s", lines[3])
    assert len(lines) == 4 and "\r" not in out.getvalue()


def test_quiet_prints_nothing() -> None:
    say = reporter_for(quiet=True, stream=io.StringIO())
    say("anything")
    with stage(say, "a stage"):
        counter(say, "x", 2).advance(current="y")
    assert type(say) is Reporter


def test_a_terminal_gets_bars_and_a_plain_callable_still_works() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    say = reporter_for(quiet=False, stream=out)
    assert isinstance(say, TerminalReporter)
    with stage(say, "environment"), stage(say, "building the image"):  # stages nest
        shown = counter(say, "installing", 2, 2_000_000)
        shown.advance(current="torch", nbytes=1_000_000)
        shown.close()
        steps = counter(say, "rerun", 200, unit="steps", eta_s=100.0)
        steps.update(done=120)
        steps.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "✓ building the image" in text and "✓ environment" in text
    assert "installing" in text and "120/200" in text and "ETA 40 s" in text, text
    lines: list[str] = []
    with stage(lines.append, "silent"):  # a plain callable: no stage lines, no error
        counter(lines.append, "x", 1).advance()
    assert lines == []
