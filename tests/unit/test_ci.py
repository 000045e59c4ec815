"""``audit ci init``: valid YAML with a schedule, sharded verification, one aggregate
report, a release gate; secrets only by reference; hostile settings cannot add YAML; and
only real audit commands. (The files are validated against the published schemas and
their shell is run in ``tests/e2e/test_ci_run.py``.)"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from auditor.cli.main import main
from auditor.cli.release import ci_init
from auditor.core.errors import InputError
from auditor.core.version import __version__
from auditor.release.ci import (
    DEFAULT_SCHEDULE,
    JUNIT,
    STEPS,
    CiSettings,
    audit_commands,
    check_command,
    render_workflow,
    shell_steps,
    validate_cron,
    write_workflow,
)


def test_github_workflow_schedule_matrix_summary_and_gate() -> None:
    data = yaml.safe_load(render_workflow("github", CiSettings(schedule="0 4 * * 1",
                                                               shards=3)))
    assert data["on"]["schedule"] == [{"cron": "0 4 * * 1"}]
    assert data["on"]["push"]["tags"] == ["v*"] and data["on"]["push"]["branches"] == ["main"]
    assert data["on"]["pull_request"]["paths"] == ["models/*.safetensors"]
    verify = data["jobs"]["verify"]
    assert verify["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert data["env"]["AUDITOR_SHARDS"] == "3"
    assert data["env"]["AUDITOR_PIP_SPEC"] == f"auditor[team]=={__version__}"
    assert data["jobs"]["summary"]["needs"] == "verify"
    assert "always()" in data["jobs"]["summary"]["if"]
    assert data["jobs"]["gate"]["if"] == ("github.event_name == 'push' || "
                                          "github.event_name == 'pull_request'")


def test_gitlab_workflow_parallel_report_and_gate() -> None:
    data = yaml.safe_load(render_workflow("gitlab", CiSettings(schedule="*/30 2 * * *",
                                                               shards=5, runner_tag="gpu")))
    assert data["variables"]["AUDIT_SCHEDULE"] == "*/30 2 * * *"
    assert data["audit-verify"]["parallel"] == 5 and data["audit-verify"]["tags"] == ["gpu"]
    assert data["audit-report"]["artifacts"]["reports"]["junit"] == JUNIT
    assert all(r.get("when") == "always" for r in data["audit-report"]["rules"])
    gate_rules = data["audit-gate"]["rules"]
    assert gate_rules[0]["if"] == "$CI_COMMIT_TAG"
    assert gate_rules[2]["changes"] == ["models/*.safetensors"]
    assert "docker:dind" in render_workflow("gitlab")  # the file says why not


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_no_secret_is_inline_only_references(provider: str) -> None:
    text = render_workflow(provider)
    data = yaml.safe_load(text)
    if provider == "github":
        envs = [job.get("env", {}) for job in data["jobs"].values()]
        envs += [s.get("env", {}) for job in data["jobs"].values() for s in job["steps"]]
        secret_names = {"AUDITOR_STORE", "AUDITOR_BLOBS", "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY", "AUDITOR_SIGNING_KEY", "AUDITOR_PUBLIC_KEY"}
        values = {k: v for env in envs for k, v in env.items() if k in secret_names}
        assert set(values) == secret_names
        assert all(re.fullmatch(r"\$\{\{ secrets\.[A-Z0-9_]+ \}\}", v) for v in values.values())
    else:  # GitLab: CI/CD variables reach the job's environment; the file sets none of them
        assert not {"AUDITOR_STORE", "AWS_SECRET_ACCESS_KEY", "AUDITOR_SIGNING_KEY"} & set(
            data["variables"])
        shells = "\n".join(s.shell for s in shell_steps(provider, text))
        assert '--sign-key "$AUDITOR_SIGNING_KEY"' in shells  # a File variable: its path


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_steps_come_back_as_written(provider: str) -> None:
    steps = shell_steps(provider, render_workflow(provider))
    shells = "\n".join(s.shell for s in steps)
    for name, snippet in STEPS[provider].items():
        assert snippet.strip() in shells, name


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_workflow_commands_parse_with_the_real_cli(provider: str) -> None:
    commands = audit_commands(render_workflow(provider))
    assert {tuple(c[:2]) for c in commands} >= {("audit", "verify"), ("audit", "batch"),
                                                ("audit", "gate")}
    for argv in commands:
        check_command(main, argv)


@pytest.mark.parametrize("argv", [
    ["audit", "nope"],
    ["audit", "gate"],  # missing ARTIFACT
    ["audit", "gate", "m.bin", "--bogus"],
    ["audit", "keys"],  # missing subcommand
    ["audit", "ci", "init", "bitbucket"],
    ["audit", "verify", "--all", "--sincе", "7d"],  # Cyrillic е
    ["audit", "batch", "show"],  # missing BATCH
    ["python", "-m", "auditor"],
])
def test_check_command_rejects_what_would_fail(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        check_command(main, argv)


@pytest.mark.parametrize("argv", [
    ["audit", "--store", "s", "gate", "m.bin", "--policy", "gate.toml", "--key", "k.pub"],
    ["audit", "report", "01jd0x8k6m", "--html", "r.html", "--junit", "j.xml"],
    ["audit", "keys", "generate", "--dir", "keys"],
    ["audit", "certificate", "verify", "c.json", "--key", "k.pub", "--artifact", "m.bin"],
    ["audit", "ci", "init", "gitlab", "--schedule", "0 1 * * *", "--shards", "2"],
    ["audit", "verify", "--all", "--batch", "b1", "--shard", "1/2"],
    ["audit", "batch", "show", "b1", "--junit", "j.xml"],
])
def test_check_command_accepts_real_command_lines(argv: list[str]) -> None:
    check_command(main, argv)


def test_hostile_settings_cannot_add_yaml() -> None:
    hostile = 'auditor[team] @ https://x/a.whl # "}: {foo: [bar\\'
    data = yaml.safe_load(render_workflow("github", CiSettings(pip_spec=hostile)))
    assert data["env"]["AUDITOR_PIP_SPEC"] == hostile
    assert set(data) == {"name", "on", "permissions", "env", "jobs"}
    for bad in (CiSettings(pip_spec="a\nb"), CiSettings(models="m/*\nx: 1"),
                CiSettings(models="$(rm -rf /)"), CiSettings(branches=("main", "a b")),
                CiSettings(shards=0), CiSettings(shards=257), CiSettings(runner_tag="a:b")):
        with pytest.raises(InputError):
            render_workflow("gitlab", bad)


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
    assert "audit-verify" in out.read_text()


def test_ci_init_command_writes_the_default_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(ci_init, ["github", "--schedule", "5 1 * * *", "--shards", "2",
                                     "--branch", "main", "--branch", "release/*"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / ".github/workflows/audit.yml").read_text())
    assert data["on"]["schedule"] == [{"cron": "5 1 * * *"}]
    assert data["on"]["push"]["branches"] == ["main", "release/*"]
    result = runner.invoke(ci_init, ["gitlab"])
    assert result.exit_code == 0 and "pipeline schedule" in result.output
    assert (tmp_path / ".gitlab-ci.yml").is_file()
