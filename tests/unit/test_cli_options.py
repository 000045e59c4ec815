"""The thin CLI: one ``-q`` every command honours, one policy loader (``audit rerun`` reads
the repo's auditor.toml as ``verify`` and ``compare`` do), the ``--all`` selection in the
store's query module, the lock lookups in ``env/lock.py``, one report-format table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from auditor.cli.main import main
from auditor.cli.options import QUIET_HELP, policy_from
from auditor.core.errors import InputError
from auditor.env.lock import lock_source
from auditor.report.formats import FORMATS, write_reports
from auditor.store import SqlStore
from auditor.store.query import parse_age, verifiable_runs
from tests.factories import make_record


def _leaves(group: click.Group, ctx: click.Context,
            path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _leaves(command, ctx, f"{path}{name} ")
        else:
            yield f"{path}{name}", command


def test_every_command_takes_the_one_quiet_option() -> None:
    ctx = click.Context(main)
    leaves = dict(_leaves(main, ctx))
    assert {"verify", "rerun", "compare", "record", "list", "report",
            "store upgrade"} <= set(leaves)
    for name, command in leaves.items():
        quiet = [p for p in command.params if "-q" in getattr(p, "opts", ())]
        assert len(quiet) == 1, f"audit {name} lacks -q"
        assert quiet[0].help == QUIET_HELP, f"audit {name} defines its own -q"


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_drops_hints_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    args = ["ci", "init", "gitlab", "--output", str(tmp_path / "ci.yml")]
    loud = CliRunner().invoke(main, args)
    assert loud.exit_code == 0 and "next: create a pipeline schedule" in loud.output
    (tmp_path / "ci.yml").unlink()
    quiet_args = ["-q", *args] if where == "before" else [*args, "-q"]
    quiet = CliRunner().invoke(main, quiet_args)
    assert quiet.exit_code == 0, quiet.output
    assert "next:" not in quiet.output and "wrote" in quiet.output  # the result stays


@pytest.mark.parametrize("command", ["rerun", "verify", "compare"])
def test_rerun_verify_and_compare_read_the_repos_auditor_toml(
    tmp_path: Path, store: SqlStore, command: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = make_record()
    store.put_record(rec)
    (tmp_path / "auditor.toml").write_text('[verify]\npass_envv = ["HF_TOKEN"]\n')
    monkeypatch.chdir(tmp_path)
    runs = [rec.identity.id] * (2 if command == "compare" else 1)
    result = CliRunner().invoke(main, ["--store", str(tmp_path / "store"), command, *runs])
    assert result.exit_code == 2, result.output
    assert "auditor.toml: policy key 'pass_envv'" in result.output


def test_the_policy_loader_takes_the_switches_on_top(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "auditor.toml").write_text('[verify]\npass_env = ["HF_TOKEN"]\n')
    monkeypatch.chdir(tmp_path)
    kw: dict[str, object] = {"policy_path": None, "bitwise": True, "allow_gpu_mismatch": True}
    policy = policy_from(kw)
    assert kw == {}  # taken out: the options reach no other function
    assert policy.rerun.pass_env == ("HF_TOKEN",) and policy.rerun.allow_gpu_mismatch
    assert policy.compare.bitwise
    other = tmp_path / "other.toml"
    other.write_text("[verify]\n")
    assert policy_from({"policy_path": other}).rerun.pass_env == ()


def test_verify_all_selects_finished_originals(store: SqlStore) -> None:
    now = datetime.now(UTC)
    hour, days = now - timedelta(hours=1), now - timedelta(days=9)
    done, night = "finished", ("nightly",)
    keep = make_record(name="mlp-a", status=done, tags=night, started_at=hour)
    old = make_record(name="mlp-b", status=done, tags=night, started_at=days)
    other = make_record(name="cnn", status=done, tags=night, started_at=hour)
    failed = make_record(name="mlp-c", status="failed", started_at=now)
    rerun = make_record(name="mlp-d", status=done, reproduces=keep.identity.id, started_at=now)
    for r in (keep, old, other, failed, rerun):
        store.put_record(r)
    assert set(verifiable_runs(store)) == {keep.identity.id, old.identity.id, other.identity.id}
    assert verifiable_runs(store, since="7d", tags=("nightly",), name="mlp-*") == [
        keep.identity.id]
    assert verifiable_runs(store, tags=("none",)) == []
    assert parse_age("2w") == timedelta(weeks=2)
    with pytest.raises(InputError, match="expected a number and a unit"):
        parse_age("soon")


def test_lock_source_prefers_requirements_in(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to lock"):
        lock_source(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert lock_source(tmp_path) == tmp_path / "pyproject.toml"
    (tmp_path / "requirements.in").write_text("six\n")
    assert lock_source(tmp_path) == tmp_path / "requirements.in"


def test_one_report_format_table(tmp_path: Path) -> None:
    assert list(FORMATS) == ["html", "markdown", "junit"]
    with pytest.raises(InputError, match="unknown report format 'pdf'"):
        write_reports([], {"pdf": tmp_path / "r.pdf"})
    with pytest.raises(InputError, match="one verification"):
        write_reports([], {"html": tmp_path / "r.html"})
    assert not (tmp_path / "r.html").exists()
    written = write_reports([], {"markdown": tmp_path / "r.md", "junit": tmp_path / "r.xml"})
    assert written == [tmp_path / "r.md", tmp_path / "r.xml"]
    assert (tmp_path / "r.xml").read_text().startswith("<?xml")
