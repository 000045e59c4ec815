"""The terminal summary (T47): no ANSI escapes in CI logs, NO_COLOR honoured on a TTY."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from auditor.certify.verdict import Verdict, VerifyResult
from auditor.report.terminal import print_result, print_summary, result_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"
SCRIPT = ("import sys; from pathlib import Path; from auditor.certify.verdict import VerifyResult; "
          "from auditor.report.terminal import print_result; "
          "print_result(VerifyResult.model_validate_json(Path(sys.argv[1]).read_text()))")
ANSI = re.compile(r"\x1b\[")
COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7]|38;)[0-9;]*m")


def load(name: str) -> VerifyResult:
    return VerifyResult.model_validate_json((FIXTURES / f"{name}.json").read_text())


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "CI")}
    return {**env, **extra}


def run_piped(**env: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(FIXTURES / "not_reproduced.json")],
                         capture_output=True, text=True, env=child_env(**env), check=True,
                         timeout=60)
    return out.stdout


def run_on_tty(**env: str) -> str:
    """Run the script with a real pseudo-terminal as stdout; return what it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(FIXTURES / "not_reproduced.json")],
                            stdout=slave, stderr=subprocess.DEVNULL, env=child_env(**env))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_ci_without_tty_prints_no_escapes() -> None:
    text = run_piped(CI="true")
    assert not ANSI.search(text)
    assert "not-reproduced (exit 1)" in text
    assert "1. PYTHONHASHSEED (seed): 0 → random" in text


def test_no_color_on_a_tty_prints_no_colour() -> None:
    coloured = run_on_tty(TERM="xterm-256color")
    assert COLOUR.search(coloured), "control: a TTY without NO_COLOR gets colour"
    plain = run_on_tty(TERM="xterm-256color", NO_COLOR="1")
    assert not COLOUR.search(plain)
    assert "not-reproduced (exit 1)" in plain


def test_the_summary_shows_the_five_second_facts() -> None:
    labels = [label for label, _ in result_rows(load("not_reproduced"))]
    assert labels[:5] == ["verdict", "original", "rerun", "compared", "first divergence"]
    assert labels.count("") == 2  # causes 2 and 3 under "likely causes"
    assert "certificate" in labels and "time" in labels


def test_rich_markup_in_names_prints_literally() -> None:
    result = load("bitwise").model_copy(update={"original_name": "[red]x[/] [/bogus]"})
    buffer = io.StringIO()
    print_result(result, out=Console(file=buffer, width=200))
    print_summary([result], out=Console(file=buffer, width=200))
    assert buffer.getvalue().count("[red]x[/] [/bogus]") == 2


def test_could_not_verify_has_no_causes_or_divergence() -> None:
    result = load("bitwise").model_copy(update={"verdict": Verdict(level="could-not-verify")})
    labels = [label for label, _ in result_rows(result)]
    assert "first divergence" not in labels and "likely causes" not in labels
