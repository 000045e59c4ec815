"""Release gating: an artifact ships only with a trusted, recent, good-enough certificate.

Contract of ``check_artifacts(store, paths, policy)``: every path must be a file
(``InputError``, exit 2, before anything is checked) and trusted keys must be given when
signatures are required (``InputError``). The certificate log must then be intact (chain
and, when signatures are required, the signed head) and the certificates table must hold
exactly what it logged (``tamper.index_problems``; else ``IntegrityError``, exit 3).
Each artifact then gets one ``GateFinding``, checked in this order, the first failed
requirement named (a certificate whose signature verifies must also match the store: its
run's record and every subject re-hash to the signed digests, else ``IntegrityError``):

1. ``registered``: its sha256 is an artifact of a recorded run (``require_registered``).
2. ``certificate``: a certificate in the store names that sha256 as a subject
   (``no certificate for sha256:<hex>``; when the verification's policy ignored that
   output, the message says so: an ignored output is never a subject).
3. ``signature``: the envelope (read from the blob store by the certificate's sha256,
   so a flipped byte there raises ``IntegrityError``, exit 3) verifies under a trusted
   key, or is at least well formed when ``require_signature`` is off.
4. ``subject``: the *signed* statement names the artifact's sha256 (the index alone is
   not trusted; a certificate for v1 presented for v2 fails here).
5. ``level``: the signed verdict ranks at least ``min_level`` (``LEVEL_RANK``); for a
   spot-check that verdict is the worst replayed segment's. ``check``: the certificate's
   check is a full rerun, or a spot-check when ``accept_spot_check`` is on and its chance
   of catching a run with 10% bad segments (``partial.catch_tenth``) is at least
   ``min_catch_chance``; a resume-equivalence check (it replays from a checkpoint the run
   itself wrote) never passes.
   ``isolation``: the rerun was isolated at least as ``min_isolation`` says
   (``ISOLATION_RANK``; default ``container``; a venv-level, unstated or unknown level
   fails with what to do; ``none``, a venv rerun without bubblewrap, fails every gate).
   ``loosening``: the verification policy the certificate signed loosened nothing the gate
   policy does not allow by name. The gate reads the signed ``policy`` table with this
   auditor's ``Policy`` and ``loosenings`` (so every loosening this auditor knows is seen,
   whatever the issuer listed; a table it cannot read is refused), and each loosening's
   kind (``auditor.certify.loosen.kind_of``; an unknown one is ``other``) must be in
   ``allowed_loosenings`` (default: none, so the default gate accepts only certificates
   issued under the default policy). A loosened tolerance must also stay within
   ``max_rtol``/``max_atol``, which allowing ``tolerance`` requires. A certificate without
   a policy table (an older auditor) is judged by the loosenings it lists.
6. ``age``: issued no more than ``max_age_days`` ago (0: no limit) and not in the future.
7. ``latest``: with ``latest_only``, no newer certificate of the same original run has a
   verdict below ``min_level`` (the run was re-certified as failing later).

Certificates are tried newest first; the first that meets every requirement passes the
artifact, otherwise the newest one's failure is reported. ``GateReport.passed`` is true
when every artifact passed. ``verify_certificate_file`` is the check behind
``audit certificate verify``: signature, statement fields, and the given files as subjects.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from auditor.certify.certificate import (
    Statement,
    file_sha256,
    open_envelope,
    read_certificate,
)
from auditor.certify.loosen import KINDS, kind_of
from auditor.certify.verdict import LEVEL_RANK
from auditor.core.capped import POLICY_LIMIT, read_capped
from auditor.core.errors import InputError, IntegrityError
from auditor.core.keys import PublicKey, keyid, load_public_key
from auditor.core.policy import (
    DEFAULT_POLICY,
    DTYPE_TOLERANCES,
    EXACT,
    Policy,
    Tolerance,
    loosenings,
)
from auditor.release.tamper import evidence_problems, index_problems, raise_first
from auditor.store.base import CertificateReader, CertificateRow, CertifiedRuns, EvidenceReader

CLOCK_SKEW = timedelta(minutes=5)
REQUIREMENTS = ("registered", "certificate", "signature", "subject", "level", "check",
                "isolation", "loosening", "age", "latest")
# how well each isolation level a certificate may state keeps the rerun from the host;
# a level not listed here (unstated, or one this gate does not know) ranks 0: it fails
ISOLATION_RANK = {"container": 2, "venv": 1}


class GatePolicy(BaseModel):
    """What a certificate must show for an artifact to pass the gate."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_level: Literal["reproduced-within-tolerance", "reproduced-bitwise"] = \
        "reproduced-within-tolerance"
    max_age_days: Annotated[float, Field(ge=0, strict=True)] = 90  # 0: no limit
    require_signature: StrictBool = True
    trusted_keys: tuple[Path, ...] = ()
    latest_only: StrictBool = True
    require_registered: StrictBool = True
    # "container": only reruns isolated in a container count; "venv" also accepts reruns
    # in a venv on the verifying host (weaker: the script could read that host's files)
    min_isolation: Literal["container", "venv"] = "container"
    # kinds of verification-policy loosening a certificate may carry, by name
    # (auditor.certify.loosen.KINDS); () accepts only the default policy
    allowed_loosenings: tuple[str, ...] = ()
    # with "tolerance" allowed (and only then): the widest loosened rtol and atol accepted
    max_rtol: Annotated[float, Field(ge=0, strict=True)] | None = None
    max_atol: Annotated[float, Field(ge=0, strict=True)] | None = None
    # a spot-check certificate (sampled segments replayed between recorded checkpoints)
    # passes only with accept_spot_check, and only when its chance of catching a run with
    # 10% bad segments is at least min_catch_chance
    accept_spot_check: StrictBool = False
    min_catch_chance: Annotated[float, Field(ge=0, le=1, strict=True)] = 0.0

    @field_validator("allowed_loosenings")
    @classmethod
    def _known_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [kind for kind in value if kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown loosening {unknown[0]!r} (known: {', '.join(KINDS)})")
        return value

    @model_validator(mode="after")
    def _caps_with_tolerance(self) -> GatePolicy:
        capped = self.max_rtol is not None or self.max_atol is not None
        if "tolerance" in self.allowed_loosenings and (
                self.max_rtol is None or self.max_atol is None):
            raise ValueError('allowing "tolerance" needs max_rtol and max_atol (the widest '
                             "loosened tolerance a certificate may carry)")
        if capped and "tolerance" not in self.allowed_loosenings:
            raise ValueError('max_rtol and max_atol cap an allowed "tolerance" loosening: '
                             'add "tolerance" to allowed_loosenings, or leave them out')
        return self


def load_gate_policy(path: Path) -> GatePolicy:
    """The policy in a TOML file; key paths are relative to the file's folder."""
    if not path.exists():
        raise InputError(f"{path}: gate policy not found",
                         hint="copy templates/gate.toml or leave out --policy")
    try:
        data = tomllib.loads(read_capped(path, POLICY_LIMIT, "gate policy").decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read gate policy: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML: {exc}") from None
    try:
        policy = GatePolicy.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {_policy_error(exc)}") from None
    keys = tuple(k if k.is_absolute() else path.parent / k for k in policy.trusted_keys)
    return policy.model_copy(update={"trusted_keys": keys})


def _policy_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    if first["type"] == "extra_forbidden":
        known = ", ".join(GatePolicy.model_fields)
        return f"unknown key {where!r} (known keys: {known})"
    return f"{where}: {first['msg']}"


@dataclass(frozen=True)
class GateFinding:
    """The gate's conclusion for one artifact."""

    artifact: Path
    sha256: str
    passed: bool
    requirement: str = ""  # the first requirement that failed ("" when passed)
    message: str = ""
    certificate: str | None = None  # sha256 of the certificate that passed or failed
    level: str | None = None
    run_id: str | None = None

    def line(self) -> str:
        """One line for the terminal."""
        if self.passed:
            return (f"PASS {self.artifact}: {self.message}")
        return f"FAIL {self.artifact}: {self.requirement}: {self.message}"

    def as_json(self) -> dict[str, object]:
        """The finding as plain JSON values."""
        return {"artifact": str(self.artifact), "sha256": self.sha256, "passed": self.passed,
                "requirement": self.requirement or None, "message": self.message,
                "certificate": self.certificate, "level": self.level, "run_id": self.run_id}


@dataclass(frozen=True)
class GateReport:
    """Findings for every artifact given to the gate."""

    findings: tuple[GateFinding, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """True when every artifact passed."""
        return all(f.passed for f in self.findings)

    def first_failure(self) -> GateFinding | None:
        """The first artifact that failed, if any."""
        return next((f for f in self.findings if not f.passed), None)


def trusted_keys(policy: GatePolicy, extra: Sequence[Path] = ()) -> list[PublicKey]:
    """The policy's keys and the extra ones, loaded; ``InputError`` when one is unusable."""
    keys = [load_public_key(Path(p)) for p in (*policy.trusted_keys, *extra)]
    if policy.require_signature and not keys:
        raise InputError("no trusted public key: the gate requires signed certificates",
                         hint="list trusted_keys in the gate policy or pass --key KEY.pub")
    return keys


def check_artifacts(store: EvidenceReader, paths: Sequence[Path], policy: GatePolicy, *,
                    extra_keys: Sequence[Path] = (), now: datetime | None = None,
                    attestations: Sequence[Path] = ()) -> GateReport:
    """Check every artifact against the store's certificates (see the module contract).

    An artifact may be a model folder (its ``model_signing`` digest is looked for among the
    subjects). With ``attestations`` (certificate files, or signed SLSA VSAs naming one),
    only the certificates they stand for may pass an artifact; each still passes every
    check above against the store."""
    if not paths:
        raise InputError("no artifact given", hint="audit gate FILE...")
    for path in paths:
        if not Path(path).is_file() and not Path(path).is_dir():
            raise InputError(f"{path}: artifact not found", hint="give the file to be released")
    keys = trusted_keys(policy, extra_keys)
    only = _attested(attestations, keys) if attestations else None
    raise_first(index_problems(store, keys if policy.require_signature else None),
                "certificate log")
    when = _aware(now or datetime.now(UTC))
    return GateReport(tuple(_check_one(store, Path(p), policy, keys, when, only)
                            for p in paths))


def _attested(paths: Sequence[Path], keys: list[PublicKey]) -> set[str]:
    """The sha256 of the certificate each attestation file stands for (signatures checked)."""
    from auditor.release.export import attestation_certificate

    if not keys:
        raise InputError("an attestation is checked only against trusted keys",
                         hint="pass --key KEY.pub")
    return {attestation_certificate(read_certificate(p), keys, str(p)) for p in paths}


def _artifact_digest(path: Path) -> tuple[str, list[str]]:
    """(the digest certificates name, the file digests that must be registered)."""
    if not path.is_dir():
        sha = file_sha256(path)
        return sha, [sha]
    from auditor.certify.attest import folder_files, model_digest

    files = [(rel, file_sha256(file)) for rel, file in folder_files(path)]
    return model_digest(files), [sha for _, sha in files]


def _check_one(store: EvidenceReader, path: Path, policy: GatePolicy,
               keys: list[PublicKey], now: datetime, only: set[str] | None) -> GateFinding:
    sha, files = _artifact_digest(path)
    unregistered = [f for f in files if not store.runs_with_artifact(f)]
    if policy.require_registered and unregistered:
        return GateFinding(path, sha, False, "registered", f"sha256:{unregistered[0]} belongs "
                           "to no recorded run: every result must be recorded before it is "
                           "shared")
    rows = [r for r in store.certificates(subject=sha) if sha in r.subjects]
    if only is not None:
        rows = [r for r in rows if r.sha256 in only]
        if not rows:
            return GateFinding(path, sha, False, "certificate", "none of the given "
                               f"attestations certifies sha256:{sha} in this store")
    if not rows:
        return GateFinding(path, sha, False, "certificate", f"no certificate for sha256:{sha}"
                           + _not_compared(store, sha))
    findings = [_check_certificate(store, row, path, sha, policy, keys, now) for row in rows]
    return next((f for f in findings if f.passed), findings[0])


def _not_compared(store: CertifiedRuns, sha: str) -> str:
    """Why an output of a certified run is not a subject: its policy did not compare it."""
    for run_id, name in store.runs_with_artifact(sha):
        for row in store.certificates(run_id=run_id):
            data = store.blobs.read_bytes(row.sha256, f"certificate {row.sha256[:12]}")
            pred = open_envelope(data, None, require_signature=False).predicate
            if any(s.digest.get("sha256") == sha for s in pred.not_compared):
                return (f": it is {name} of run {run_id}, which the verification did not "
                        "compare as evidence (ignored by its policy, or a log whose "
                        f"differences did not count; certificate {row.sha256[:12]}…): an "
                        "ignored output is never certified")
    return ""


def _check_certificate(store: EvidenceReader, row: CertificateRow, path: Path, sha: str,
                       policy: GatePolicy, keys: list[PublicKey],
                       now: datetime) -> GateFinding:
    data = store.blobs.read_bytes(row.sha256, f"certificate {row.sha256[:12]}")
    source = f"certificate sha256:{row.sha256[:12]}…"
    try:
        statement = open_envelope(data, keys or None, require_signature=policy.require_signature,
                                  source=source)
    except (IntegrityError, InputError) as exc:
        return GateFinding(path, sha, False, "signature", str(exc), row.sha256, None, row.run_id)
    raise_first(evidence_problems(store, statement, source), "gate")
    failed = _statement_failure(store, statement, sha, policy, now)
    pred = statement.predicate
    if failed:
        return GateFinding(path, sha, False, failed[0], f"{source}: {failed[1]}", row.sha256,
                           pred.verdict, pred.original_run)
    kind = "" if pred.check == "full" else f" by {pred.check}"
    message = (f"{pred.verdict}{kind} (run {pred.original_run}, certificate "
               f"{row.sha256[:12]}…, issued {pred.issued_at:%Y-%m-%d})")
    return GateFinding(path, sha, True, "", message, row.sha256, pred.verdict, pred.original_run)


def _statement_failure(store: EvidenceReader, statement: Statement, sha: str, policy: GatePolicy,
                       now: datetime) -> tuple[str, str] | None:
    pred = statement.predicate
    if not any(s.digest.get("sha256", "").lower() == sha for s in statement.subject):
        names = ", ".join(f"{s.name} (sha256:{s.digest.get('sha256', '?')[:12]}…)"
                          for s in statement.subject)
        return "subject", (f"the signed statement does not certify sha256:{sha}; it certifies "
                           f"{names} (a certificate of another file: replay?)")
    if LEVEL_RANK[pred.verdict] < LEVEL_RANK[policy.min_level]:
        return "level", f"verdict {pred.verdict} is below the policy's {policy.min_level}"
    return (_check_failure(statement, policy) or _isolation_failure(statement, policy)
            or _loosening_failure(statement, policy) or _age_failure(pred.issued_at, policy, now)
            or _latest_failure(store, statement, policy))


def _check_failure(statement: Statement, policy: GatePolicy) -> tuple[str, str] | None:
    """A partial check where the gate wants a full rerun (see the module contract)."""
    pred = statement.predicate
    if pred.check == "full":
        return None
    partial = pred.partial
    if pred.check == "resume" or partial is None:
        return "check", (f"a {pred.check} check (it replays from a checkpoint the run wrote) "
                         "is no release evidence: verify the run in full, or with --segments")
    what = (f"a spot-check ({len(partial.chosen)} of {partial.segments_total} segments, "
            f"{partial.fraction:.1%} of the training replayed)")
    if not policy.accept_spot_check:
        return "check", (f"{what}; the gate requires a full rerun (accept_spot_check = true "
                         "in the gate policy accepts spot-checks)")
    chance = partial.catch_tenth or 0.0
    if chance < policy.min_catch_chance:
        return "check", (f"{what} had a {chance:.1%} chance to catch a run with "
                         f"{partial.catch_tenth_k} bad segment(s); the gate requires "
                         f"{policy.min_catch_chance:.1%} (min_catch_chance): replay more "
                         "segments")
    return None


def _isolation_failure(statement: Statement, policy: GatePolicy) -> tuple[str, str] | None:
    level: str | None = statement.predicate.isolation
    if ISOLATION_RANK.get(level or "", 0) >= ISOLATION_RANK[policy.min_isolation]:
        return None
    if level == "none":  # no gate policy accepts it
        return "isolation", ("the rerun was unisolated (a venv without bubblewrap: the "
                             "training script ran as a host process and could read that "
                             "host's files); re-verify with a docker engine, or with "
                             "bubblewrap (bwrap) installed and min_isolation = \"venv\"")
    said = {"venv": "in a venv on the verifying host (weaker isolation: in bubblewrap, but "
                    "with that host's kernel and system libraries)",
            None: "without stating its isolation level (issued by an older auditor?)"}.get(
        level, f"isolated at level {level!r}, which ranks below what the gate requires")
    fix = "re-verify with a docker engine" + (
        ', or set min_isolation = "venv" in the gate policy to accept it'
        if level == "venv" else "")
    return "isolation", (f"the rerun was {said}; the gate requires {policy.min_isolation} "
                         f"isolation ({fix})")


def _loosening_failure(statement: Statement, policy: GatePolicy) -> tuple[str, str] | None:
    try:
        made = policy_loosenings(statement)
    except ValueError as exc:
        return "loosening", str(exc)
    allowed = ", ".join(policy.allowed_loosenings) or "none"
    for kind, detail in made:
        if kind not in policy.allowed_loosenings:
            return "loosening", (f"the verification policy loosened {kind}: {detail}; the "
                                 f"gate allows {allowed} (allowed_loosenings in the gate "
                                 "policy names what may be loosened)")
    return _tolerance_failure(statement, policy) if "tolerance" in dict(made) else None


def policy_loosenings(statement: Statement) -> list[tuple[str, str]]:
    """(kind, line) of every loosening of the certificate: its signed verification policy's,
    as this auditor judges that policy (``ValueError`` when it cannot read it), then those it
    lists of any other kind. Logs that differed without counting under a policy that
    compares them are that policy's doing (its ``compare_logs`` note), not a loosening."""
    pred = statement.predicate
    listed = [(lo.kind, lo.detail) for lo in pred.loosenings]
    if not pred.policy:  # an older certificate: what it lists is all there is to judge
        return listed
    signed = _signed_policy(statement)
    made = [(kind_of(line), line) for line in loosenings(signed)]
    seen = {kind for kind, _ in made}
    if signed.compare.compare_logs != "off":
        seen.add("compare_logs")
    return made + [(kind, line) for kind, line in listed if kind not in seen]


def _signed_policy(statement: Statement) -> Policy:
    try:
        return Policy.from_table(dict(statement.predicate.policy))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ValueError(f"the certificate's verification policy cannot be read by this gate "
                         f"({where}: {first['msg']}; issued by a newer auditor?): its "
                         "loosenings cannot be judged") from None


def _tolerance_failure(statement: Statement, policy: GatePolicy) -> tuple[str, str] | None:
    """A loosened rtol or atol beyond the gate's ``max_rtol``/``max_atol``."""
    if not statement.predicate.policy:
        return "loosening", ("the certificate lists a tolerance loosening but no policy "
                             "table, so its tolerances cannot be checked against max_rtol "
                             "and max_atol")
    caps = {"rtol": policy.max_rtol or 0.0, "atol": policy.max_atol or 0.0}
    for key, tol, default in _tolerances(_signed_policy(statement)):
        for part, cap in caps.items():
            value, base = getattr(tol, part), getattr(default, part)
            if value > base and value > cap:
                return "loosening", (f"the verification policy's {key} {part} {value:g} is "
                                     f"wider than the gate's max_{part} {cap:g}")
    return None


def _tolerances(signed: Policy) -> list[tuple[str, Tolerance, Tolerance]]:
    """(policy key, tolerance, the default it loosens) of every tolerance of a policy."""
    compare = signed.compare
    if compare.bitwise:
        return []
    metric = DEFAULT_POLICY.compare.metric_tolerance
    return [("metric_tolerance", compare.metric_tolerance, metric),
            *((f"dtype_tolerances.{d}", t, DTYPE_TOLERANCES.get(d, EXACT))
              for d, t in sorted(compare.dtype_tolerances.items())),
            *((f"tensors.{g!r}", t, DTYPE_TOLERANCES["float32"])
              for g, t in sorted(compare.tensors.items())),
            *((f"metrics.{g!r}", t, metric) for g, t in sorted(compare.metrics.items()))]


def _age_failure(issued: datetime, policy: GatePolicy, now: datetime) -> tuple[str, str] | None:
    if issued > now + CLOCK_SKEW:
        return "age", f"issued in the future ({issued.isoformat()}); check the signer's clock"
    if policy.max_age_days and now - issued > timedelta(days=policy.max_age_days):
        days = (now - issued).days
        return "age", (f"issued {issued:%Y-%m-%d}, {days} days ago; the policy allows "
                       f"{policy.max_age_days:g} days (re-verify the run: audit verify)")
    return None


def _latest_failure(store: CertificateReader, statement: Statement,
                    policy: GatePolicy) -> tuple[str, str] | None:
    if not policy.latest_only:
        return None
    pred = statement.predicate
    floor = LEVEL_RANK[policy.min_level]
    for row in store.certificates(run_id=pred.original_run):  # newest first
        if _aware(row.issued_at) > pred.issued_at and LEVEL_RANK.get(row.verdict, 0) < floor:
            return "latest", (f"run {pred.original_run} was re-certified {row.verdict} on "
                              f"{row.issued_at:%Y-%m-%d} (certificate {row.sha256[:12]}…); "
                              "this certificate is superseded")
    return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- audit certificate verify -----------------------------------------------------------
@dataclass(frozen=True)
class CertificateCheck:
    """A certificate file that verified: its statement, signers and matched files."""

    path: Path
    statement: Statement
    signers: tuple[str, ...]  # keyids of the trusted keys given
    artifacts: tuple[tuple[Path, str], ...]  # (file, sha256) found among the subjects


def verify_certificate_file(path: Path, keys: Sequence[Path], artifacts: Sequence[Path] = (),
                            *, now: datetime | None = None) -> CertificateCheck:
    """Check a certificate's signature, statement fields and subjects (see module doc).

    ``InputError`` (exit 2) for a file that is not a certificate or no key;
    ``IntegrityError`` (exit 3) for a bad signature, a changed payload type, a statement
    issued in the future, or a given file that is not one of its subjects.
    """
    public = [load_public_key(Path(k)) for k in keys]
    statement = open_envelope(read_certificate(path), public or None, require_signature=True,
                              source=str(path))
    issued = statement.predicate.issued_at
    if issued > _aware(now or datetime.now(UTC)) + CLOCK_SKEW:
        raise IntegrityError(f"{path}: issued in the future ({issued.isoformat()})",
                             hint="do not trust it")
    return CertificateCheck(path, statement, tuple(keyid(k) for k in public),
                            tuple(_matched_subject(path, statement, Path(a)) for a in artifacts))


def _matched_subject(cert: Path, statement: Statement, artifact: Path) -> tuple[Path, str]:
    digest = file_sha256(artifact)
    if not any(s.digest.get("sha256", "").lower() == digest for s in statement.subject):
        raise IntegrityError(f"{artifact}: sha256:{digest} is not a subject of {cert}",
                             hint="this certificate is for other files; do not ship this one "
                                  "on its strength")
    return artifact, digest
