"""Issue 17 end to end: a failed build says its cause in one line and names the file that
keeps its whole log; progress in a log (not a terminal) is one line per stage with its
time; ``-q`` silences it. A real `audit build` of a recorded run against the real package
index, with a CA bundle that does not trust the index's certificate."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import audit

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def untrusted_ca(path: Path) -> Path:
    """A real, valid CA certificate that signed nothing the index serves."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditor test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_untrusted_index_certificate_fails_in_one_line_naming_ca_bundle_and_the_log(
        train_repo: Path, tmp_path: Path, docker_client: Any, base_image: tuple[str, str]
) -> None:
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_CACHE": str(tmp_path / "cache"),
           # the index alone, as on a machine without local mirrors; fail fast
           "PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0",
           "AUDITOR_WHEELHOUSE": "", "AUDITOR_CA_BUNDLE": ""}
    res = audit("--json", "record", "--", sys.executable, "train_mlp.py", "--epochs", "1",
                cwd=train_repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    flags = ["--base-image", base_image[0], "--ca-bundle",
             str(untrusted_ca(tmp_path / "other-ca.pem"))]
    res = audit("build", run_id, *flags, cwd=train_repo, env=env, timeout=600)
    assert res.returncode == 3, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    error = errors[0]
    assert "TLS certificate is not trusted" in error and "--ca-bundle" in error, error
    assert len(error) < 400 and " | " not in error, error
    log = Path(re.search(r"full log: (\S+?)\)?$", error).group(1))  # type: ignore[union-attr]
    assert log.is_file() and "CERTIFICATE_VERIFY_FAILED" in log.read_text()
    # not a terminal: one line per stage, with its time
    stage = [line for line in res.stderr.splitlines()
             if "into the wheel cache: failed after" in line]
    assert len(stage) == 1 and re.search(r"failed after \d+\.\d s$", stage[0]), res.stderr
    quiet = audit("-q", "build", run_id, *flags, cwd=train_repo, env=env, timeout=600)
    assert quiet.returncode == 3
    assert [line for line in quiet.stderr.splitlines() if line.strip()] == [
        line for line in quiet.stderr.splitlines() if line.startswith("error:")], quiet.stderr
