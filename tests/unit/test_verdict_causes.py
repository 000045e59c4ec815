"""Causes from the evidence (issue 9): a failed rerun leads with its stderr; differences that
cannot change results never lead; a variable kept by name only is a named cause with its
fix; 97 package changes are one line, not 97 (issue 10); our own gap is could-not-verify."""

from __future__ import annotations

from typing import Any

from auditor.certify.decide import decide
from auditor.compare import environment
from auditor.compare.difference import Difference
from auditor.core.policy import Policy
from auditor.core.schema import Environment, LockRef
from tests.unit.test_verdict import PY, metric, record


def with_env(packages: dict[str, str] | None = None, version: str = "3.11.7",
             env_vars: dict[str, str] | None = None, drift: tuple[str, ...] = ()) -> Any:
    lock = LockRef(artifact="lock/requirements.lock", sha256="b" * 64, origin="project",
                   drift=drift)
    py = PY.model_copy(update={"version": version, "packages": packages or dict(PY.packages),
                               "lock": lock})
    return record(environment=Environment(python=py, env_vars=env_vars or {}))


def causes(left: Any, right: Any, diffs: dict[str, list[Difference]] | None = None) -> list[Any]:
    found = {"metrics": [metric("loss", 0, False)], **(diffs or {})}
    found["environment"] = environment.compare_records(left, right)
    return decide(found, left, right, Policy()).causes


def test_a_failed_rerun_leads_with_its_stderr() -> None:
    crash = Difference(where="process/exit_code", kind="changed", left="0", right="1",
                       comments=("File \"train.py\", line 40, in <module>",
                                 "PermissionError: [Errno 13] Permission denied: 'model.pt'"))
    found = causes(with_env(version="3.11.7"), with_env(version="3.11.2"), {"process": [crash]})
    assert (found[0].category, found[0].what) == ("process", "exit_code")
    assert "Permission denied: 'model.pt'" in found[0].explanation
    assert all(c.what != "unexplained" for c in found)  # the crash explains it


def test_auditor_absent_from_the_image_is_never_a_cause() -> None:
    left = with_env(packages={**PY.packages, "auditor": "0.1.0"})
    found = causes(left, with_env())
    assert all(c.what != "auditor" for c in found)
    assert found[0].what == "unexplained"


def test_a_python_patch_release_never_leads() -> None:
    found = causes(with_env(version="3.11.7"), with_env(version="3.11.2"))
    assert [c.what for c in found] == ["unexplained", "version"]
    assert found[1].score < found[0].score
    assert "first divergence is at metrics/loss@step 0" in found[0].explanation
    minor = causes(with_env(version="3.11.7"), with_env(version="3.12.1"))
    assert minor[0].what == "version"  # another minor version can change results


def test_a_variable_kept_by_name_only_is_a_named_cause_with_the_fix() -> None:
    left = with_env(env_vars={"TRAIN_LR": "[REDACTED]", "SSH_AUTH_SOCK": "[REDACTED]",
                              "PIP_CERT": "[REDACTED]", "OMP_NUM_THREADS": "2"})
    right = with_env(env_vars={"OMP_NUM_THREADS": "2"})
    found = causes(left, right)
    assert (found[0].category, found[0].what, found[0].right) == ("env", "TRAIN_LR", "(not set)")
    assert "--env-allow TRAIN_LR" in found[0].explanation
    assert 'pass_env = ["TRAIN_LR"]' in found[0].explanation
    assert all(c.what not in ("SSH_AUTH_SOCK", "PIP_CERT") for c in found)


def test_a_passed_variable_is_not_a_cause() -> None:
    left = with_env(env_vars={"TRAIN_LR": "[REDACTED]"})
    right = with_env(env_vars={"TRAIN_LR": "[REDACTED]"})  # pass_env gave it to the rerun
    assert all(c.what != "TRAIN_LR" for c in causes(left, right))


def test_a_run_recorded_outside_its_lockfile_gives_one_package_line() -> None:
    installed = {f"pkg{i:02d}": "1.0" for i in range(95)} | {"numpy": "2.4.6", "torch": "2.12.0"}
    locked = {f"pkg{i:02d}": "2.0" for i in range(95)} | {"numpy": "2.2.6", "torch": "2.13.0"}
    left = with_env(packages=installed, drift=("numpy", "torch"))
    found = causes(left, with_env(packages=locked))
    rows = [c for c in found if c.category == "packages"]
    assert len(rows) == 1
    assert rows[0].what == "97 packages"
    assert rows[0].explanation.startswith(
        "97 installed packages differ from the lockfile; top: numpy 2.4.6 → 2.2.6, "
        "torch 2.12.0 → 2.13.0, pkg00 1.0 → 2.0 and 94 more. The run was recorded outside")


def test_a_few_package_changes_stay_one_row_each() -> None:
    found = causes(with_env(), with_env(packages={**PY.packages, "numpy": "2.0.0"}))
    assert [(c.what, c.left, c.right) for c in found if c.category == "packages"] == [
        ("numpy", "1.26.4", "2.0.0")]


def test_an_unreadable_event_file_is_could_not_verify_never_not_reproduced() -> None:
    gap = Difference(where="files/runs/events.out.tfevents.1.h.1.0", kind="error",
                     stats={"cannot_compare": True}, comments=("install tensorboard",))
    v = decide({"files": [gap]}, record(), record(), Policy())
    assert v.level == "could-not-verify" and v.exit_code == 3
    assert v.notes == ["files/runs/events.out.tfevents.1.h.1.0: install tensorboard"]
    real = decide({"files": [gap], "metrics": [metric("loss", 2, False)]}, record(), record(),
                  Policy())
    assert real.level == "not-reproduced"  # a real divergence is still one


def test_when_every_metric_reproduced_the_environment_does_not_lead() -> None:
    left = with_env(packages={**PY.packages, "numpy": "2.4.6"})
    right = with_env(packages={**PY.packages, "numpy": "2.2.6"})
    stamp = Difference(where="files/outputs/runs/events.out.tfevents.1.h.1.0/train/loss",
                       kind="value", stats={"first_step": 0})
    diffs = {"metrics": [], "files": [stamp],
             "environment": environment.compare_records(left, right)}
    found = decide(diffs, left, right, Policy()).causes
    assert found[0].what == "unexplained"
    assert "reproduced bit for bit" in found[0].explanation
    assert stamp.where in found[0].explanation
    assert [c.what for c in found[1:]] == ["numpy"]  # still listed, below


def test_thread_variables_the_rerun_set_to_replay_the_same_count_do_not_lead() -> None:
    left = with_env(env_vars={"TRAIN_LR": "[REDACTED]"})
    right = with_env(env_vars={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    right = right.model_copy(update={"determinism": right.determinism.model_copy(
        update={"omp_num_threads": "2"})})
    found = causes(left, right)  # both records: torch_num_threads = 2
    assert found[0].what == "TRAIN_LR"
    assert {c.what for c in found if c.score < 10} >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                       "omp_num_threads"}
    other = with_env(env_vars={"OMP_NUM_THREADS": "2"})
    fewer = other.model_copy(update={"determinism": other.determinism.model_copy(
        update={"torch_num_threads": 1})})
    assert causes(with_env(), fewer)[0].category == "threads"  # a real thread change leads


CA_VARIABLES = ("AWS_CA_BUNDLE", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "NODE_EXTRA_CA_CERTS",
                "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "HTTPLIB2_CA_CERTS", "AUDITOR_CA_BUNDLE")


def test_ca_bundle_variables_the_rerun_never_gets_are_not_causes_but_a_note() -> None:
    """Issue 18 item 8: the demo's causes were padded with `AWS_CA_BUNDLE (env): [REDACTED]
    → (not set)`: a build input auditor withholds from every rerun, not a training setting."""
    left = with_env(env_vars={"TRAIN_LR": "[REDACTED]",
                              **{name: "[REDACTED]" for name in CA_VARIABLES}})
    right = with_env()
    found = {"metrics": [metric("loss", 0, False)],
             "environment": environment.compare_records(left, right)}
    verdict = decide(found, left, right, Policy())
    named = [c.what for c in verdict.causes]
    assert "TRAIN_LR" in named  # a real setting the script reads stays ranked
    assert not set(named) & set(CA_VARIABLES), named
    assert not any("unreplayed" in c.what for c in verdict.causes)  # not folded in either
    note = next(n for n in verdict.notes if n.startswith("environment: "))
    assert "AWS_CA_BUNDLE" in note and "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE" in note
    assert "not causes" in note and "--ca-bundle" in note


def test_a_ca_bundle_variable_whose_value_differs_is_listed_not_ranked() -> None:
    left = with_env(env_vars={"SSL_CERT_FILE": "/etc/ssl/a.pem", "TRAIN_LR": "0.1"})
    right = with_env(env_vars={"SSL_CERT_FILE": "/etc/ssl/b.pem", "TRAIN_LR": "0.2"})
    found = {"metrics": [metric("loss", 0, False)],
             "environment": environment.compare_records(left, right)}
    verdict = decide(found, left, right, Policy())
    assert [c.what for c in verdict.causes if c.category == "env"] == ["TRAIN_LR"]
    assert any(d.where == "environment/env/SSL_CERT_FILE"
               for d in verdict.differences["environment"])  # still listed as a difference
    assert any("SSL_CERT_FILE" in n for n in verdict.notes)
