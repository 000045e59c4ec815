"""Attestations other tools verify, beside auditor's own certificate.

Contract:

- ``model_digest(files)`` is the digest OpenSSF model signing (``model_signing``, its
  ``https://model_signing/signature/v1.0`` predicate, file serialization, sha256) signs as
  the subject of a model folder: sha256 over the per-file sha256 digests, concatenated in
  the order of the files' relative names. ``tests/integration/test_attest.py`` checks it
  against the library's own manifest of a real folder.
- ``model_folder(outputs)`` is the folder of a run a certificate names as its model: the
  deepest folder holding every weights output (``compare.weights.WEIGHT_SUFFIXES``), never
  the repository root; ``None`` when there is no such folder. ``model_subject`` certifies
  it only when every output under it was compared (an output the policy did not compare
  would otherwise ride in on the model digest): the subject is ``model:<folder>`` with
  that digest, so a pipeline that checks a ``model_signing`` signature of the folder and
  then our certificate gates both on one digest.
- ``folder_files(path)`` reads a model folder the way ``model_signing`` does (its git
  files left out) and refuses, one line each (``InputError``, exit 2), a folder holding a
  symbolic link or anything but regular files and folders.
- ``vsa_statement(...)`` expresses a certificate as a SLSA Verification Summary
  Attestation (``https://slsa.dev/verification_summary/v1``): same subjects, the
  certificate itself as the one input attestation (by sha256), ``PASSED`` for a reproduced
  verdict (``verifiedLevels``: ``AUDITOR_REPRODUCED_BITWISE`` or
  ``AUDITOR_REPRODUCED_WITHIN_TOLERANCE``), ``FAILED`` otherwise. ``certificate_of_vsa``
  reads one back: the certificate it summarises, which a gate then checks in full.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from auditor.certify.certificate import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    Envelope,
    Statement,
    Subject,
    canonical_json,
    parse_envelope,
    sign_payload,
    verify_envelope,
)
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import PrivateKey, PublicKey
from auditor.core.schema import ArtifactRef
from auditor.core.version import __version__

VSA_PREDICATE = "https://slsa.dev/verification_summary/v1"
VERIFIER_ID = "https://auditor.dev/verifier/v1"
CERTIFICATE_URI = "auditor:certificate/"
LEVELS = {"reproduced-bitwise": "AUDITOR_REPRODUCED_BITWISE",
          "reproduced-within-tolerance": "AUDITOR_REPRODUCED_WITHIN_TOLERANCE"}
MODEL_PREFIX = "model:"
# what model_signing leaves out of a folder by default (its ignore_git_paths)
GIT_NAMES = frozenset({".git", ".gitattributes", ".github", ".gitignore"})


def model_digest(files: Iterable[tuple[str, str]]) -> str:
    """model_signing's subject digest of (relative name, sha256 hex) pairs."""
    hasher = hashlib.sha256()
    for _, digest in sorted(files, key=lambda item: PurePosixPath(item[0])):
        hasher.update(bytes.fromhex(digest))
    return hasher.hexdigest()


def model_folder(outputs: Sequence[ArtifactRef]) -> str | None:
    """The deepest folder holding every weights output of a run, or None."""
    from auditor.compare.weights import WEIGHT_SUFFIXES  # numpy: not for every user of this

    weights = [PurePosixPath(a.name) for a in outputs
               if PurePosixPath(a.name).suffix.lower() in WEIGHT_SUFFIXES]
    if not weights:
        return None
    common = os.path.commonpath([str(w.parent) for w in weights])
    return None if common in ("", ".") else common


def in_folder(outputs: Sequence[ArtifactRef], folder: str) -> list[tuple[str, ArtifactRef]]:
    """(name relative to ``folder``, output) of each output under it, git files left out."""
    found = []
    for art in outputs:
        path = PurePosixPath(art.name)
        try:
            rel = path.relative_to(folder)
        except ValueError:
            continue
        if rel.parts[0] not in GIT_NAMES:
            found.append((str(rel), art))
    return found


def model_subject(outputs: Sequence[ArtifactRef],
                  certified: Sequence[ArtifactRef]) -> Subject | None:
    """The ``model:<folder>`` subject of a certificate, or None (see the module contract)."""
    folder = model_folder(certified)
    if folder is None:
        return None
    members = in_folder(outputs, folder)
    counted = {a.name for a in certified}
    if not members or any(art.name not in counted for _, art in members):
        return None
    digest = model_digest((rel, art.sha256) for rel, art in members)
    return Subject(name=f"{MODEL_PREFIX}{folder}", digest={"sha256": digest})


def folder_files(path: Path) -> list[tuple[str, Path]]:
    """(relative name, file) of every file of a model folder, as model_signing reads it."""
    found: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(path, followlinks=False):
        here = Path(root)
        for name in sorted(dirs):
            if here == path and name in GIT_NAMES:
                dirs.remove(name)
                continue
            if (here / name).is_symlink():
                raise InputError(f"{here / name}: a symbolic link in the model folder",
                                 hint="a model folder must hold its files itself; copy what "
                                      "the link points at into it")
        for name in names:
            if here == path and name in GIT_NAMES:
                continue
            file = here / name
            mode = file.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InputError(f"{file}: a symbolic link in the model folder",
                                 hint="a model folder must hold its files itself; copy what "
                                      "the link points at into it")
            if not stat.S_ISREG(mode):
                raise InputError(f"{file}: not a regular file (a FIFO, socket or device) in "
                                 "the model folder", hint="remove it from the folder")
            found.append((file.relative_to(path).as_posix(), file))
    if not found:
        raise InputError(f"{path}: the model folder holds no files")
    return found


def vsa_statement(certificate: Statement, certificate_sha256: str,
                  time_verified: datetime) -> dict[str, Any]:
    """The SLSA VSA v1 statement summarising a certificate (see the module contract)."""
    pred = certificate.predicate
    level = LEVELS.get(pred.verdict)
    policy_sha = hashlib.sha256(canonical_json(dict(pred.policy))).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [s.model_dump(mode="json") for s in certificate.subject],
        "predicateType": VSA_PREDICATE,
        "predicate": {
            "verifier": {"id": VERIFIER_ID, "version": {"auditor": __version__}},
            "timeVerified": time_verified.isoformat().replace("+00:00", "Z"),
            "resourceUri": f"auditor:run/{pred.original_run}",
            "policy": {"uri": "auditor:verify-policy", "digest": {"sha256": policy_sha}},
            "inputAttestations": [{"uri": f"{CERTIFICATE_URI}{certificate_sha256}",
                                   "digest": {"sha256": certificate_sha256}}],
            "verificationResult": "PASSED" if level else "FAILED",
            "verifiedLevels": [level] if level else [],
            "slsaVersion": "1.0",
        },
    }


def seal_vsa(statement: dict[str, Any], key: PrivateKey) -> Envelope:
    """The VSA in a DSSE envelope signed with ``key`` (Ed25519 or ECDSA)."""
    return sign_payload(canonical_json(statement), PAYLOAD_TYPE, key)


def is_vsa(envelope_bytes: bytes) -> bool:
    """True when the envelope's payload is a statement of the VSA predicate type."""
    try:
        envelope = parse_envelope(envelope_bytes, "attestation")
        data = json.loads(base64.b64decode(envelope.payload))
    except (InputError, ValueError):
        return False
    return isinstance(data, dict) and data.get("predicateType") == VSA_PREDICATE


def certificate_of_vsa(envelope_bytes: bytes, trusted: list[PublicKey], source: str) -> str:
    """The sha256 of the certificate a signed VSA summarises (signature checked first)."""
    envelope = parse_envelope(envelope_bytes, source)
    payload = verify_envelope(envelope, PAYLOAD_TYPE, trusted or None,
                              require_signature=True, source=source)
    try:
        data = json.loads(payload)
        pred = data["predicate"]
        inputs = pred["inputAttestations"]
        result = pred["verificationResult"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{source}: not a SLSA verification summary") from None
    if data.get("predicateType") != VSA_PREDICATE:
        raise InputError(f"{source}: predicateType {data.get('predicateType')!r} is not "
                         f"{VSA_PREDICATE!r}")
    if result != "PASSED":
        raise IntegrityError(f"{source}: the verification summary says {result!r}",
                             hint="only a PASSED summary can pass a gate")
    shas = [i.get("digest", {}).get("sha256", "") for i in inputs
            if isinstance(i, dict) and str(i.get("uri", "")).startswith(CERTIFICATE_URI)]
    if len(shas) != 1 or len(shas[0]) != 64:
        raise InputError(f"{source}: the verification summary names no auditor certificate",
                         hint="export it with `audit certificate export --vsa`")
    return str(shas[0])
