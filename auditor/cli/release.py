"""Commands for reports, certificates, keys, release gates and CI: ``audit report``,
``audit gate``, ``audit keys generate``, ``audit certificate verify``, ``audit ci init``.

Each command parses, calls one function of ``report``, ``gate``, ``keys`` or ``ci``,
prints, and leaves failures to the ``AuditorError`` tree (one line, exit code per class):
a failed gate raises ``NotReproduced`` (exit 1), bad input ``InputError`` (2), a
tampered certificate ``IntegrityError`` (3). ``cli/main.py`` lists these commands; the
store, ``--json`` and ``-q`` come from the root context's ``Ctx`` (``cli/options.py``).
The report formats are one table, ``report.formats.FORMATS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from auditor.cli.options import (
    FileArg,
    OutFile,
    OutFolder,
    hint,
    quiet_option,
    report_options,
    report_targets,
    store_of,
    wants_json,
)
from auditor.core.errors import InputError, NotReproduced

if TYPE_CHECKING:  # imported where used: `audit build` and `lock` need no comparers
    from auditor.certify.verdict import VerifyResult

PathType = FileArg
RESULT_LIMIT = 256 * 1024 * 1024


# -- audit report --------------------------------------------------------------------------
def load_result_json(path: Path) -> VerifyResult:
    """A ``VerifyResult`` saved as JSON; ``InputError`` with one line otherwise."""
    from pydantic import ValidationError

    from auditor.certify.verdict import VerifyResult
    from auditor.core.capped import read_capped

    try:
        return VerifyResult.model_validate_json(
            read_capped(path, RESULT_LIMIT, "verification result"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise InputError(f"{path}: not a verification result: {where}: {first['msg']}") from None


def render_report_command(result: VerifyResult, *, html: Path | None = None,
                          markdown: Path | None = None, junit: Path | None = None,
                          original_url: str | None = None,
                          rerun_url: str | None = None) -> list[Path]:
    """Write the requested reports of one verification atomically; return their paths."""
    from auditor.report.formats import Links, write_reports

    targets = {fmt: path for fmt, path in (("html", html), ("markdown", markdown),
                                           ("junit", junit)) if path is not None}
    return write_reports([result], targets, Links(original_url, rerun_url))


def _stored_result(ctx: click.Context, run_or_cert: str, keys: tuple[Path, ...]) -> VerifyResult:
    from auditor.verify import _looks_like_file, load_verify_result  # lazily: heavy import

    if not _looks_like_file(run_or_cert):
        return load_verify_result(store_of(ctx), run_or_cert)
    path = Path(run_or_cert)
    _check_certificate_file(path, keys)
    result = load_verify_result(store_of(ctx), run_or_cert)
    _check_same_certificate(path, result)
    return result


def _check_certificate_file(path: Path, keys: tuple[Path, ...]) -> None:
    """Never render a certificate's claims as if they were checked: verify or warn."""
    from auditor.certify.certificate import read_certificate
    from auditor.release.gate import verify_certificate_file

    if keys:
        verify_certificate_file(path, keys)  # IntegrityError (exit 3) when it does not verify
        return
    read_certificate(path)  # a missing file is one error line, before any warning
    click.echo(f"warning: {path}: signature NOT checked (no --key): this report shows what "
               "the certificate claims, not that a trusted key signed it", err=True)


def _check_same_certificate(path: Path, result: VerifyResult) -> None:
    from auditor.certify.certificate import file_sha256

    if result.certificate_sha256 and result.certificate_sha256 != file_sha256(path):
        click.echo(f"warning: {path} is not the certificate of the stored verification shown "
                   f"(that one is sha256:{result.certificate_sha256[:12]}…)", err=True)


@click.command("report")
@click.argument("run_or_cert", metavar="RUN|CERT", required=False)
@click.option("--from-json", "from_json", type=PathType,
              help="Render a saved VerifyResult JSON file instead of a stored verification.")
@report_options
@click.option("--original-url", help="Link the original run's id to this URL in the HTML.")
@click.option("--rerun-url", help="Link the rerun's id to this URL in the HTML.")
@click.option("--key", "keys", multiple=True, type=PathType,
              help="Trusted public key to check a CERT's signature with; repeatable.")
@quiet_option
@click.pass_context
def report(ctx: click.Context, /, run_or_cert: str | None, from_json: Path | None,
           original_url: str | None, rerun_url: str | None, keys: tuple[Path, ...],
           **kw: Any) -> None:
    """Write the reports of a past verification (RUN id or CERT file): HTML, Markdown, JUnit."""
    from auditor.report.formats import Links, write_reports

    targets = report_targets(kw)
    if (run_or_cert is None) == (from_json is None):
        raise InputError("give either a RUN id / certificate or --from-json FILE")
    if not targets:
        raise InputError("nothing to write", hint="pass --html, --markdown or --junit")
    from auditor.core.safefile import check_target

    for target in targets.values():
        check_target(target)  # before any store or certificate is read
    result = (load_result_json(from_json) if from_json
              else _stored_result(ctx, str(run_or_cert), keys))
    written = write_reports([result], targets, Links(original_url, rerun_url))
    for path in written:
        if path != Path("-") and Path("-") in written:
            hint(ctx, f"wrote {path}")
        elif path != Path("-"):
            click.echo(f"wrote {path}")


# -- audit gate ----------------------------------------------------------------------------
@click.command("gate")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--policy", "policy_path", type=PathType,
              help="Gate policy TOML (see templates/gate.toml); default: built-in defaults.")
@click.option("--key", "keys", multiple=True, type=PathType,
              help="Trusted public key (.pub); repeatable, added to the policy's keys.")
@click.option("--attestation", "attestations", multiple=True, type=PathType,
              help="Pass only on this certificate, or the certificate this signed SLSA "
                   "verification summary (VSA) stands for; repeatable.")
@quiet_option
@click.pass_context
def gate(ctx: click.Context, artifacts: tuple[Path, ...], policy_path: Path | None,
         keys: tuple[Path, ...], attestations: tuple[Path, ...]) -> None:
    """Pass (exit 0) only when every ARTIFACT has a trusted, recent, good-enough certificate.

    An ARTIFACT may be a model folder: it passes on a certificate whose `model:` subject is
    the folder's digest (the one OpenSSF model signing signs)."""
    from auditor.release.gate import GatePolicy, check_artifacts, load_gate_policy

    policy = load_gate_policy(policy_path) if policy_path else GatePolicy()
    result = check_artifacts(store_of(ctx), artifacts, policy, extra_keys=keys,
                             attestations=attestations)
    if wants_json(ctx):
        click.echo(json.dumps([f.as_json() for f in result.findings], indent=1))
    else:
        for finding in result.findings:
            click.echo(finding.line())
    failed = result.first_failure()
    if failed is not None:
        count = sum(not f.passed for f in result.findings)
        raise NotReproduced(f"gate failed for {count} of {len(result.findings)} artifacts; "
                            f"first: {failed.artifact}: {failed.requirement}: {failed.message}")


# -- audit keys ----------------------------------------------------------------------------
@click.group("keys")
def keys() -> None:
    """Signing keys for certificates (Ed25519, or ECDSA for OpenSSF model signing)."""


@keys.command("generate")
@click.option("--dir", "directory", default=Path("keys"), show_default=True,
              type=OutFolder, help="Folder for the key pair.")
@click.option("--name", default="auditor", show_default=True, help="File name of the pair.")
@click.option("--type", "key_type", default="ed25519", show_default=True,
              type=click.Choice(["ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"]),
              help="Key type. An ECDSA key also signs model folders in OpenSSF model_signing's "
                   "format (`audit certificate export --model-signature`), which accepts only "
                   "EC keys.")
@quiet_option
def generate(directory: Path, name: str, key_type: str) -> None:
    """Create NAME.key (private, 0600) and NAME.pub; never overwrites."""
    from auditor.core.keys import generate_keypair

    private, public = generate_keypair(directory, name, key_type)
    click.echo(f"private key: {private}  (keep it secret: audit verify RUN --sign-key {private})")
    click.echo(f"public key:  {public}  (share it: audit gate --key {public}, or trusted_keys "
               "in gate.toml)")


# -- audit certificate ---------------------------------------------------------------------
@click.group("certificate")
def certificate() -> None:
    """Inspect and check certificates."""


@certificate.command("verify")
@click.argument("cert", type=PathType)
@click.option("--key", "keys", multiple=True, type=PathType,
              help="Trusted public key (.pub); repeatable.")
@click.option("--artifact", "artifacts", multiple=True, type=PathType,
              help="A file that must be one of the certificate's subjects; repeatable.")
@quiet_option
@click.pass_context
def verify_certificate(ctx: click.Context, cert: Path, keys: tuple[Path, ...],
                       artifacts: tuple[Path, ...]) -> None:
    """Check CERT's signature, statement and subjects (exit 0 valid, 3 tampered, 2 bad input)."""
    from auditor.release.gate import verify_certificate_file

    check = verify_certificate_file(cert, keys, artifacts)
    if wants_json(ctx):
        click.echo(json.dumps(_check_json(check), indent=1))
        return
    for label, value in _check_lines(check):
        click.echo(f"{label:<16} {value}")


@certificate.command("export")
@click.argument("ref", metavar="RUN_OR_CERT")
@click.option("--key", "key", type=PathType,
              help="Private key that signs the VSA and the model signature (ECDSA for the "
                   "model signature).")
@click.option("--trust", "trust", multiple=True, type=PathType,
              help="Public key the stored certificate must be signed with; repeatable.")
@click.option("--certificate", "cert_out", type=OutFile,
              help="Write the certificate (DSSE envelope) as stored.")
@click.option("--vsa", "vsa_out", type=OutFile,
              help="Write a SLSA Verification Summary Attestation, signed with --key.")
@click.option("--model-signature", "model_out", type=OutFile,
              help="Write an OpenSSF model_signing signature of the certified model folder "
                   "(`model_signing verify key FOLDER --signature FILE --public_key KEY.pub`).")
@quiet_option
@click.pass_context
def export_certificate(ctx: click.Context, ref: str, key: Path | None, trust: tuple[Path, ...],
                       cert_out: Path | None, vsa_out: Path | None,
                       model_out: Path | None) -> None:
    """Export the newest certificate of RUN (or the certificate CERT) for other verifiers."""
    from auditor.core.keys import load_public_key
    from auditor.release.export import export

    done = export(store_of(ctx), ref, key, [load_public_key(k) for k in trust],
                  certificate=cert_out, vsa=vsa_out, model_signature=model_out)
    if wants_json(ctx):
        click.echo(json.dumps({"certificate_sha256": done.certificate_sha256,
                               "run_id": done.run_id, "verdict": done.verdict,
                               "model_subject": done.model_subject,
                               "model_sha256": done.model_sha256,
                               "written": {kind: str(p) for kind, p in done.written}}, indent=1))
        return
    click.echo(f"certificate {done.certificate_sha256[:16]}… of run {done.run_id}: {done.verdict}")
    if done.model_subject:
        click.echo(f"model       {done.model_subject} sha256:{done.model_sha256}")
    for kind, path in done.written:
        click.echo(f"wrote {kind}: {path}")


def _check_json(check: Any) -> dict[str, object]:
    pred = check.statement.predicate
    return {"valid": True, "certificate": str(check.path), "verdict": pred.verdict,
            "original_run": pred.original_run, "rerun_run": pred.rerun_run,
            "issued_at": pred.issued_at.isoformat(), "trusted_keys": list(check.signers),
            "isolation": pred.isolation, "isolation_notes": pred.isolation_notes,
            "loosenings": [lo.model_dump() for lo in pred.loosenings],
            "not_compared": [{"name": s.name, "digest": s.digest} for s in pred.not_compared],
            "subjects": [{"name": s.name, "digest": s.digest} for s in check.statement.subject],
            "artifacts": [{"path": str(p), "sha256": d} for p, d in check.artifacts]}


def _check_lines(check: Any) -> list[tuple[str, str]]:
    pred = check.statement.predicate
    lines = [("valid", str(check.path)), ("verdict", pred.verdict),
             ("original run", pred.original_run), ("rerun run", pred.rerun_run or "-"),
             ("issued", pred.issued_at.isoformat()),
             ("trusted key", ", ".join(k[:16] + "…" for k in check.signers)),
             ("isolation", pred.isolation or "not stated")]
    lines += [("loosened", f"{lo.kind}: {lo.detail}") for lo in pred.loosenings]
    lines += [("not compared", f"{s.name} sha256:{s.digest.get('sha256', '?')}")
              for s in pred.not_compared]
    lines += [("subject", f"{s.name} sha256:{s.digest.get('sha256', '?')}")
              for s in check.statement.subject]
    lines += [("matches", f"{p} sha256:{d}") for p, d in check.artifacts]
    return lines


# -- audit ci ------------------------------------------------------------------------------
@click.group("ci")
def ci() -> None:
    """Scheduled reproducibility checks in CI."""


@ci.command("init")
@click.argument("provider", type=click.Choice(["github", "gitlab", "kubernetes"]),
                default="github")
@click.option("--output", type=OutFile,
              help="Where to write (default .github/workflows/audit.yml, .gitlab-ci.yml or "
              "k8s/audit-verify.yaml).")
@click.option("--schedule", default=None, metavar="CRON",
              help='Cron schedule in UTC (default "17 3 * * *": nightly).')
@click.option("--auditor", "pip_spec", default=None, metavar="SPEC",
              help="The pip requirement the jobs install (default auditor[team]==<this "
              "version>; e.g. 'auditor[team] @ https://host/auditor-X-py3-none-any.whl').")
@click.option("--shards", default=None, type=int, metavar="N",
              help="Parallel verify jobs of the scheduled batch (default 4).")
@click.option("--models", default=None, metavar="GLOB",
              help="The model files the release gate checks and whose changes in a pull "
              "request trigger it (default models/*.safetensors).")
@click.option("--branch", "branches", multiple=True, metavar="NAME",
              help="Protected branch whose pushes are gated (repeatable; default main).")
@click.option("--runner-tag", default=None, metavar="TAG",
              help="GitLab: the tag of a shell-executor runner with docker (default docker).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--image", default=None, help="kubernetes: the image with auditor installed.")
@quiet_option
@click.pass_context
def ci_init(ctx: click.Context, provider: str, output: Path | None, schedule: str | None,
            pip_spec: str | None, shards: int | None, models: str | None,
            branches: tuple[str, ...], runner_tag: str | None, force: bool,
            image: str | None) -> None:
    """Write a CI workflow: scheduled sharded verification, one report, a release gate."""
    from auditor.release import ci as ci_module

    default = ci_module.CiSettings()
    if provider == "kubernetes":  # a CronJob of an Indexed Job (auditor/executors/kubernetes)
        from auditor.executors.kubernetes import write_cronjob

        path = write_cronjob(output, force=force, image=image,
                             shards=default.shards if shards is None else shards,
                             schedule=schedule or default.schedule)
        click.echo(f"wrote {path}")
        return
    settings = ci_module.CiSettings(
        schedule=schedule or default.schedule, pip_spec=pip_spec or default.pip_spec,
        shards=default.shards if shards is None else shards,
        models=models or default.models, branches=branches or default.branches,
        runner_tag=runner_tag or default.runner_tag)
    path = ci_module.write_workflow(provider, settings, output=output, force=force)
    click.echo(f"wrote {path}")
    secrets = "repository secrets" if provider == "github" else "CI/CD variables"
    hint(ctx, f"next: set the {secrets} AUDITOR_STORE, AUDITOR_BLOBS, the artifact "
         "credentials, AUDITOR_SIGNING_KEY and AUDITOR_PUBLIC_KEY (see the file's header)")
    if provider == "gitlab":
        hint(ctx, "next: create a pipeline schedule (Build > Pipeline schedules) with cron "
             f"{settings.schedule!r}")


COMMANDS: tuple[click.Command, ...] = (report, gate, keys, certificate, ci)
"""What ``cli.py`` adds to ``main`` (``for c in COMMANDS: main.add_command(c)``)."""
