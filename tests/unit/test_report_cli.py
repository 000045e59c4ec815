"""The commands of issue 5 through the ``audit`` group: exit codes and one-line errors (T42)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from auditor.certify import log as certlog
from auditor.certify.certificate import (
    ReproductionPredicate,
    Subject,
    envelope_bytes,
    make_statement,
    seal,
)
from auditor.certify.verdict import VerifyResult
from auditor.cli.main import AuditGroup, main
from auditor.cli.release import COMMANDS, render_report_command
from auditor.core.keys import generate_keypair, load_private_key
from auditor.core.schema import ArtifactRef, new_run_id, record_sha256
from auditor.store import CertificateRow, open_store
from tests.factories import make_record

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"


def audit_tree() -> click.Group:
    root = AuditGroup(name="audit", callback=main.callback, params=list(main.params),
                      commands=dict(main.commands))
    for command in COMMANDS:
        root.add_command(command)
    return root


def audit(*args: str | Path) -> Result:
    return CliRunner().invoke(audit_tree(), [str(a) for a in args])


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# -- report ---------------------------------------------------------------------------------
def test_report_from_json_writes_all_three(tmp_path: Path) -> None:
    html, md, xml = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.xml"
    result = audit("report", "--from-json", FIXTURES / "not_reproduced.json", "--html", html,
                   "--markdown", md, "--junit", xml)
    assert result.exit_code == 0, result.output
    assert f"wrote {html}" in result.stdout
    assert html.read_text().count("<svg") == 5
    assert "❌ not reproduced" in md.read_text()
    assert "<testsuites" in xml.read_text()


def test_render_report_command_writes_only_what_is_asked(tmp_path: Path) -> None:
    result = VerifyResult.model_validate_json((FIXTURES / "bitwise.json").read_text())
    written = render_report_command(result, junit=tmp_path / "j.xml")
    assert written == [tmp_path / "j.xml"] and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["report", "--html", "x.html"], "give either a RUN id"),
    (["report", "--from-json", "f.json"], "nothing to write"),
    (["report", "--from-json", "missing.json", "--html", "x.html"], "not found"),
])
def test_report_bad_input_is_exit_2(tmp_path: Path, args: list[str], message: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = audit(*args)
    assert result.exit_code == 2
    assert message in one_error_line(result)


def test_report_from_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"original_run": 3}')
    result = audit("report", "--from-json", bad, "--html", tmp_path / "x.html")
    assert result.exit_code == 2
    assert "not a verification result" in one_error_line(result)


# -- gate -----------------------------------------------------------------------------------
@pytest.fixture
def released(tmp_path: Path) -> dict[str, Path]:
    """A store holding one recorded, certified model; the model, its key and store dir."""
    store_dir = tmp_path / "store"
    store = open_store(str(store_dir))
    key, pub = generate_keypair(tmp_path / "keys", "signer")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    sha, size = store.blobs.put_bytes(b"weights")
    run_id = new_run_id()
    store.put_record(make_record(
        id=run_id, status="finished", argv=("python", "t.py"),
        artifacts=(ArtifactRef(name="outputs/model.safetensors", sha256=sha, size=size,
                               kind="output"),)))
    issued = datetime.now(UTC) - timedelta(days=1)
    digest = record_sha256(store.get_record(run_id))
    statement = make_statement([Subject(name="outputs/model.safetensors",
                                        digest={"sha256": sha})],
                               ReproductionPredicate(verdict="reproduced-bitwise",
                                                     original_run=run_id,
                                                     original_record_sha256=digest,
                                                     isolation="container",
                                                     issued_at=issued, auditor_version="0.1.0"))
    data = envelope_bytes(seal(statement, load_private_key(key)))
    cert_sha, _ = store.blobs.put_bytes(data)
    store.put_certificate(CertificateRow(cert_sha, run_id, None, "reproduced-bitwise", issued,
                                         (sha,)))
    certlog.append(store_dir / "log", cert_sha, run_id, load_private_key(key))
    store.close()
    cert = tmp_path / "cert.dsse.json"
    cert.write_bytes(data)
    return {"store": store_dir, "model": model, "pub": pub, "cert": cert, "tmp": tmp_path}


def gate(released: dict[str, Path], *args: str | Path) -> Result:
    return audit("--store", released["store"], "gate", *args)


def test_gate_passes_with_exit_0(released: dict[str, Path]) -> None:
    result = gate(released, released["model"], "--key", released["pub"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("PASS ")


def test_gate_json_output(released: dict[str, Path]) -> None:
    result = audit("--store", released["store"], "--json", "gate", released["model"], "--key",
                   released["pub"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)[0]["level"] == "reproduced-bitwise"


def test_gate_failure_is_exit_1_naming_the_requirement(released: dict[str, Path]) -> None:
    other = released["tmp"] / "other.bin"
    other.write_bytes(b"unknown")
    result = gate(released, released["model"], other, "--key", released["pub"])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "gate failed for 1 of 2 artifacts" in line and ": registered:" in line
    assert result.stdout.splitlines()[1].startswith("FAIL ")


def test_gate_policy_from_file(released: dict[str, Path]) -> None:
    policy = released["tmp"] / "gate.toml"
    policy.write_text('min_level = "reproduced-bitwise"\ntrusted_keys = ["keys/signer.pub"]\n')
    assert gate(released, released["model"], "--policy", policy).exit_code == 0


@pytest.mark.parametrize(("policy_text", "message"), [
    ("min_levle = 'reproduced-bitwise'\n", "unknown key 'min_levle'"),
    ("max_age_days = \n", "invalid TOML"),
])
def test_bad_policy_is_exit_2(released: dict[str, Path], policy_text: str,
                              message: str) -> None:
    policy = released["tmp"] / "gate.toml"
    policy.write_text(policy_text)
    result = gate(released, released["model"], "--policy", policy)
    assert result.exit_code == 2 and message in one_error_line(result)


def test_missing_artifact_and_missing_key_are_exit_2(released: dict[str, Path]) -> None:
    result = gate(released, released["tmp"] / "nope.bin", "--key", released["pub"])
    assert result.exit_code == 2 and "artifact not found" in one_error_line(result)
    result = gate(released, released["model"])
    assert result.exit_code == 2 and "no trusted public key" in one_error_line(result)
    result = gate(released, released["model"], "--key", released["tmp"] / "none.pub")
    assert result.exit_code == 2 and "key file not found" in one_error_line(result)


def test_gate_on_a_flipped_certificate_byte_is_exit_3(released: dict[str, Path]) -> None:
    objects = sorted((released["store"] / "objects").rglob("*"))
    certs = [p for p in objects if p.is_file() and p.read_bytes().startswith(b"{")]
    certs[0].chmod(0o644)
    certs[0].write_bytes(certs[0].read_bytes().replace(b"payload", b"paYload"))
    result = gate(released, released["model"], "--key", released["pub"])
    assert result.exit_code == 3 and "altered" in one_error_line(result)


# -- keys and certificates ----------------------------------------------------------------------
def test_keys_generate_prints_both_paths(tmp_path: Path) -> None:
    result = audit("keys", "generate", "--dir", tmp_path / "k", "--name", "ci")
    assert result.exit_code == 0
    assert str(tmp_path / "k" / "ci.key") in result.stdout
    assert str(tmp_path / "k" / "ci.pub") in result.stdout
    again = audit("keys", "generate", "--dir", tmp_path / "k", "--name", "ci")
    assert again.exit_code == 2 and "already exists" in one_error_line(again)


def certificate_verify(released: dict[str, Path], *args: str | Path) -> Result:
    return audit("certificate", "verify", *args)


def test_certificate_verify_valid_is_exit_0(released: dict[str, Path]) -> None:
    result = certificate_verify(released, released["cert"], "--key", released["pub"],
                                "--artifact", released["model"])
    assert result.exit_code == 0, result.output
    assert "reproduced-bitwise" in result.stdout and "matches" in result.stdout


def tampered(cert: Path, edit: Sequence[tuple[str, str]]) -> bytes:
    envelope = json.loads(cert.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for key, value in edit:
        statement["predicate"][key] = value
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(envelope).encode()


def test_certificate_verify_tampered_is_exit_3(released: dict[str, Path]) -> None:
    bad = released["tmp"] / "bad.json"
    bad.write_bytes(tampered(released["cert"], [("verdict", "reproduced-within-tolerance")]))
    result = certificate_verify(released, bad, "--key", released["pub"])
    assert result.exit_code == 3 and "signature does not verify" in one_error_line(result)
    envelope = json.loads(released["cert"].read_bytes())
    envelope["payloadType"] = "text/plain"
    bad.write_text(json.dumps(envelope))
    result = certificate_verify(released, bad, "--key", released["pub"])
    assert result.exit_code == 3 and "payloadType" in one_error_line(result)


def test_certificate_verify_other_file_is_exit_3(released: dict[str, Path]) -> None:
    other = released["tmp"] / "other.bin"
    other.write_bytes(b"x")
    result = certificate_verify(released, released["cert"], "--key", released["pub"],
                                "--artifact", other)
    assert result.exit_code == 3 and "is not a subject" in one_error_line(result)


def test_certificate_verify_unknown_format_is_exit_2(released: dict[str, Path]) -> None:
    junk = released["tmp"] / "junk.json"
    junk.write_text("[1, 2]")
    result = certificate_verify(released, junk, "--key", released["pub"])
    assert result.exit_code == 2 and "unknown certificate format" in one_error_line(result)


def test_report_of_a_stored_run_is_one_line_when_it_cannot_load(tmp_path: Path) -> None:
    open_store(str(tmp_path / "store")).close()
    result = audit("--store", tmp_path / "store", "report", "01jd0x8k6m",
                   "--html", tmp_path / "r.html")
    assert result.exit_code == 2
    one_error_line(result)
    assert not (tmp_path / "r.html").exists()
