"""Certificates other tools verify, end to end (issue 20 item 5): a real torch script writes
its model folder, `audit verify` reruns it in docker and signs with an ECDSA P-256 key,
`audit certificate export` writes a SLSA VSA and an OpenSSF model signature, and the real
`model_signing verify key` CLI accepts the folder, then refuses it after one byte of the
weights changes. The certificate's `model:` subject is the digest model_signing signs, and
`audit gate` passes the folder, or a file on the strength of the VSA, and nothing else."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, audit, git

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]
MODEL_SIGNING = str(Path(sys.executable).parent / "model_signing")
SCRIPT = """\
import json, os, torch
from safetensors.torch import save_file
torch.manual_seed(0)
os.makedirs("model", exist_ok=True)
w = torch.nn.Linear(8, 4)
for step in range(3):
    loss = w(torch.randn(16, 8)).pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in w.parameters():
            p -= 0.1 * p.grad
            p.grad = None
    print(json.dumps({"step": step, "loss": loss.item()}))
save_file({k: v.contiguous() for k, v in w.state_dict().items()}, "model/weights.safetensors")
with open("model/config.json", "w") as f:
    json.dump({"in": 8, "out": 4}, f)
"""


def payload(path: Path) -> dict[str, Any]:
    envelope = json.loads(path.read_text())
    return json.loads(base64.b64decode(envelope["payload"]))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_image: tuple[str, str],
          ca_bundle: Path, torch_wheelhouse: Path) -> Iterator[dict[str, Any]]:
    top = tmp_path_factory.mktemp("attest")
    root = top / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "train.py").write_text(SCRIPT)
    shutil.copy(FIXTURES / "train" / "requirements.lock", root)  # the cached test image
    (root / ".gitignore").write_text("model/\n.auditor/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "attest")
    env = {"AUDITOR_STORE": str(top / "store"), "AUDITOR_BASE_IMAGE": base_image[0],
           "AUDITOR_WHEELHOUSE": str(torch_wheelhouse), "AUDITOR_CA_BUNDLE": str(ca_bundle)}
    for kind, name in (("ecdsa-p256", "ec"), ("ed25519", "ed")):
        res = audit("keys", "generate", "--dir", str(top / "keys"), "--name", name,
                    "--type", kind, cwd=root)
        assert res.returncode == 0, res.stderr
    res = audit("--json", "record", "--", sys.executable, "train.py", cwd=root, env=env)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["id"]
    cert = top / "cert.json"
    res = audit("verify", run_id, "--sign-key", str(top / "keys" / "ec.key"), "--certificate",
                str(cert), cwd=root, env=env, timeout=900)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    yield {"top": top, "root": root, "env": env, "run": run_id, "cert": cert,
           "ec": top / "keys" / "ec", "ed": top / "keys" / "ed"}


def test_model_signing_verifies_the_exported_signature(world: dict[str, Any]) -> None:
    top, root = world["top"], world["root"]
    res = audit("--json", "certificate", "export", world["run"], "--key", f"{world['ec']}.key",
                "--trust", f"{world['ec']}.pub", "--vsa", str(top / "vsa.json"),
                "--model-signature", str(top / "model.sig"), cwd=root, env=world["env"])
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    assert done["model_subject"] == "model:outputs/model"
    # our certificate's model subject is the digest model_signing signed
    subjects = {s["name"]: s["digest"]["sha256"] for s in payload(world["cert"])["subject"]}
    assert subjects["model:outputs/model"] == done["model_sha256"]
    bundle = json.loads((top / "model.sig").read_text())
    signed = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert signed["subject"][0]["digest"]["sha256"] == done["model_sha256"]
    assert signed["predicateType"] == "https://model_signing/signature/v1.0"
    ok = _model_signing(root / "model", top / "model.sig", f"{world['ec']}.pub")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # one byte of the weights changed: model_signing refuses the folder
    changed = top / "changed" / "model"
    shutil.copytree(root / "model", changed)
    data = bytearray((changed / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "weights.safetensors").write_bytes(bytes(data))
    bad = _model_signing(changed, top / "model.sig", f"{world['ec']}.pub")
    assert bad.returncode != 0
    assert "weights.safetensors" in bad.stdout + bad.stderr


def _model_signing(model: Path, sig: Path, pub: str) -> Any:
    import subprocess

    return subprocess.run([MODEL_SIGNING, "verify", "key", str(model), "--signature", str(sig),
                           "--public_key", pub], capture_output=True, text=True, check=False,
                          env={**os.environ, "HOME": str(sig.parent)})


def test_the_gate_passes_the_folder_and_the_vsa_and_nothing_else(world: dict[str, Any]) -> None:
    top, root, env = world["top"], world["root"], world["env"]
    pub = f"{world['ec']}.pub"
    vsa = top / "gate-vsa.json"
    res = audit("certificate", "export", world["run"], "--key", f"{world['ec']}.key",
                "--vsa", str(vsa), cwd=root, env=env)
    assert res.returncode == 0, res.stderr
    pred = payload(vsa)["predicate"]
    assert pred["verificationResult"] == "PASSED"
    assert pred["verifiedLevels"] == ["AUDITOR_REPRODUCED_BITWISE"]
    res = audit("gate", "model", "--key", pub, cwd=root, env=env)  # the model folder
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("PASS model")
    res = audit("gate", "model/weights.safetensors", "--key", pub, "--attestation", str(vsa),
                cwd=root, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = audit("gate", "model/weights.safetensors", "--key", pub, "--attestation",
                str(world["cert"]), cwd=root, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    # a VSA whose subject was rewritten no longer verifies: exit 3, nothing passes
    forged = json.loads(vsa.read_text())
    statement = json.loads(base64.b64decode(forged["payload"]))
    statement["predicate"]["verifiedLevels"] = ["AUDITOR_REPRODUCED_BITWISE", "SLSA_LEVEL_4"]
    forged["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (top / "forged.json").write_text(json.dumps(forged))
    res = audit("gate", "model/weights.safetensors", "--key", pub, "--attestation",
                str(top / "forged.json"), cwd=root, env=env)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "signature does not verify" in res.stderr
    # the VSA checked against a key that did not sign it
    res = audit("gate", "model/weights.safetensors", "--key", f"{world['ed']}.pub",
                "--attestation", str(vsa), cwd=root, env=env)
    assert res.returncode == 3, res.stdout + res.stderr
    # a file added to the folder after the run: not recorded, so the folder fails
    extra = top / "extra" / "model"
    shutil.copytree(root / "model", extra)
    (extra / "notes.txt").write_text("added later\n")
    res = audit("gate", str(extra), "--key", pub, cwd=root, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "registered" in res.stdout
    # a link in the folder: one line, exit 2
    (extra / "notes.txt").unlink()
    (extra / "leak").symlink_to("/etc")
    res = audit("gate", str(extra), "--key", pub, cwd=root, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "symbolic link in the model folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2 and "Traceback" not in res.stderr


def test_bad_keys_for_export_are_one_line(world: dict[str, Any]) -> None:
    top, root, env = world["top"], world["root"], world["env"]
    res = audit("certificate", "export", world["run"], "--key", f"{world['ed']}.key",
                "--model-signature", str(top / "ed.sig"), cwd=root, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "only ECDSA" in res.stderr and "Traceback" not in res.stderr
    assert not (top / "ed.sig").exists()
    res = audit("certificate", "export", "no-such-run", "--key", f"{world['ec']}.key",
                "--vsa", str(top / "x.json"), cwd=root, env=env)
    assert res.returncode == 2 and "no certificate for 'no-such-run'" in res.stderr
    res = audit("certificate", "export", world["run"], "--key", f"{world['ec']}.key",
                "--vsa", "/dev/full", cwd=root, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
