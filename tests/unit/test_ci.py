"""``audit ci init``: valid YAML, the schedule, the reports, and only real audit commands."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from auditor.cli.main import AuditGroup, main
from auditor.cli.release import COMMANDS, ci_init
from auditor.core.errors import InputError
from auditor.release.ci import (
    DEFAULT_SCHEDULE,
    JUNIT,
    REPORT_DIR,
    SUMMARY,
    VERIFY_ARGV,
    audit_commands,
    check_command,
    render_workflow,
    validate_cron,
    write_workflow,
)


def audit_tree(*extra: click.Command) -> click.Group:
    """``audit`` as the lead wires it: main's commands plus this issue's commands."""
    root = AuditGroup(name="audit", callback=main.callback, params=list(main.params),
                      commands=dict(main.commands))
    for command in (*COMMANDS, *extra):
        if command.name not in root.commands:
            root.add_command(command)
    return root


@click.command("verify")
@click.argument("run", required=False)
@click.option("--all", "all_", is_flag=True)
@click.option("--since")
@click.option("--report-dir", type=click.Path())
@click.option("--markdown", type=click.Path())
@click.option("--junit", type=click.Path())
def verify_stand_in(**_: object) -> None:
    """Stand-in with the options issue 5 asks `audit verify` to have."""


def test_github_workflow_is_valid_yaml_with_schedule_and_reports() -> None:
    data = yaml.safe_load(render_workflow("github", schedule="0 4 * * 1"))
    assert data["on"]["schedule"] == [{"cron": "0 4 * * 1"}]
    steps = data["jobs"]["reproduce"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert "python -m pip install ." in runs
    assert any('>> "$GITHUB_STEP_SUMMARY"' in r and SUMMARY in r for r in runs)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == f"{REPORT_DIR}/" and upload["if"] == "always()"


def test_gitlab_workflow_is_valid_yaml_with_schedule_and_junit() -> None:
    data = yaml.safe_load(render_workflow("gitlab", schedule="*/30 2 * * *"))
    assert data["variables"]["AUDIT_SCHEDULE"] == "*/30 2 * * *"
    job = data["audit-reproduce"]
    assert any("schedule" in rule["if"] for rule in job["rules"])
    assert job["artifacts"]["reports"]["junit"] == JUNIT
    assert job["artifacts"]["when"] == "always"


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_workflow_runs_verify_all(provider: str) -> None:
    assert audit_commands(render_workflow(provider)) == [list(VERIFY_ARGV)]


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_workflow_commands_parse_with_the_audit_tree(provider: str) -> None:
    root = audit_tree(verify_stand_in)
    for argv in audit_commands(render_workflow(provider)):
        check_command(root, argv)


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_workflow_commands_parse_with_the_real_cli(provider: str) -> None:
    for argv in audit_commands(render_workflow(provider)):
        check_command(main, argv)


@pytest.mark.parametrize("argv", [
    ["audit", "nope"],
    ["audit", "gate"],  # missing ARTIFACT
    ["audit", "gate", "m.bin", "--bogus"],
    ["audit", "keys"],  # missing subcommand
    ["audit", "ci", "init", "bitbucket"],
    ["audit", "verify", "--all", "--sincе", "7d"],  # Cyrillic е
    ["python", "-m", "auditor"],
])
def test_check_command_rejects_what_would_fail(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        check_command(audit_tree(verify_stand_in), argv)


@pytest.mark.parametrize("argv", [
    ["audit", "--store", "s", "gate", "m.bin", "--policy", "gate.toml", "--key", "k.pub"],
    ["audit", "report", "01jd0x8k6m", "--html", "r.html", "--junit", "j.xml"],
    ["audit", "keys", "generate", "--dir", "keys"],
    ["audit", "certificate", "verify", "c.json", "--key", "k.pub", "--artifact", "m.bin"],
    ["audit", "ci", "init", "gitlab", "--schedule", "0 1 * * *"],
])
def test_check_command_accepts_real_command_lines(argv: list[str]) -> None:
    check_command(audit_tree(), argv)


def test_hostile_install_command_cannot_add_yaml() -> None:
    hostile = 'pip install . # "}: {foo: [bar\\'
    data = yaml.safe_load(render_workflow("github", install=hostile))
    assert data["jobs"]["reproduce"]["steps"][2]["run"] == hostile
    with pytest.raises(InputError):
        render_workflow("github", install="a\nb")


@pytest.mark.parametrize("bad", ["", "* * * *", "0 3 * * * *", "0 3 * * *; rm -rf /",
                                 '0 3 * * "', "0 3 * * *\nx: 1"])
def test_bad_cron_is_refused(bad: str) -> None:
    with pytest.raises(InputError, match="invalid cron"):
        validate_cron(bad)


def test_cron_names_and_steps_are_accepted() -> None:
    assert validate_cron("0 3 * * MON-FRI") == "0 3 * * MON-FRI"
    assert validate_cron(" 0,30  */2 1-5 JAN *") == "0,30 */2 1-5 JAN *"
    assert validate_cron(DEFAULT_SCHEDULE) == DEFAULT_SCHEDULE


def test_write_never_overwrites_without_force(tmp_path: Path) -> None:
    out = tmp_path / "wf.yml"
    assert write_workflow("github", output=out) == out
    with pytest.raises(InputError, match="already exists"):
        write_workflow("github", output=out)
    write_workflow("gitlab", output=out, force=True)
    assert "audit-reproduce" in out.read_text()


def test_ci_init_command_writes_the_default_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(ci_init, ["github", "--schedule", "5 1 * * *"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / ".github/workflows/audit.yml").read_text()
    assert '"5 1 * * *"' in text
    result = runner.invoke(ci_init, ["gitlab"])
    assert result.exit_code == 0 and "pipeline schedule" in result.output
    assert (tmp_path / ".gitlab-ci.yml").is_file()
