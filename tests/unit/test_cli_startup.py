"""`audit --help` imports none of the heavy libraries, and its lines stay true: the help
of each lazy command comes from ``LAZY_HELP`` and must match the command's own docstring.
(Timings are measured by bench/bench_startup.py, not here.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from auditor.cli.main import LAZY_COMMANDS, LAZY_HELP, lazy_short_help

PROBE = """
import sys
from auditor.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
print(" ".join(m for m in ("sqlalchemy", "pydantic", "rich", "numpy", "auditor.store",
                           "auditor.cli.verify", "auditor.cli.release") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                          text=True, check=True)
    loaded = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    heavy = {"sqlalchemy", "pydantic", "numpy", "auditor.store"}
    assert not heavy & set(loaded.split()), loaded


def test_every_lazy_command_has_its_true_help_line() -> None:
    assert set(LAZY_HELP) == set(LAZY_COMMANDS)
    for name, ref in LAZY_COMMANDS.items():
        module, attr = ref.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        for limit in (45, 60, 200):
            assert command.get_short_help_str(limit) == lazy_short_help(name, limit), name
