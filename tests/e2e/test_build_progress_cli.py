"""Issue 17 end to end: a failed build says its cause in one line and names the file that
keeps its whole log; progress in a log (not a terminal) is one line per stage with its
time; ``-q`` silences it. A real `audit build` of a recorded run against the real package
index, without the CA bundle of the proxy in front of it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import audit

pytestmark = [pytest.mark.docker, pytest.mark.slow]



SCRIPT = 'import json\nprint(json.dumps({"step": 0, "loss": 1.0}))\n'


def test_untrusted_index_certificate_fails_in_one_line_naming_ca_bundle_and_the_log(
        make_repo: Any, tmp_path: Path, docker_client: Any, base_image: tuple[str, str]
) -> None:
    """A lock without hashes installs from the index inside the build, where the proxy's
    CA is unknown unless --ca-bundle passes it: today's 3,000 characters of docker log
    become one line saying so, and the log is kept in a file the line names."""
    repo = make_repo({"train.py": SCRIPT, "requirements.lock": "six==1.17.0\n"})
    env = {"AUDITOR_STORE": str(tmp_path / "store"), "AUDITOR_CACHE": str(tmp_path / "cache"),
           "AUDITOR_CA_BUNDLE": ""}
    res = audit("--json", "record", "--", sys.executable, "train.py", cwd=repo, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    flags = ["--base-image", base_image[0], "--no-cache", "--allow-unhashed"]
    res = audit("build", run_id, *flags, cwd=repo, env=env, timeout=900)
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
             if line.startswith("· building the image: failed after")]
    assert len(stage) == 1 and re.search(r"failed after \d+\.\d s$", stage[0]), res.stderr
    quiet = audit("-q", "build", run_id, *flags, cwd=repo, env=env, timeout=900)
    assert quiet.returncode == 3
    assert [line for line in quiet.stderr.splitlines() if line.strip()] == [
        line for line in quiet.stderr.splitlines() if line.startswith("error:")], quiet.stderr
