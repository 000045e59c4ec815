"""Loosenings of a verification policy, and which outputs a certificate may name."""

from __future__ import annotations

from datetime import UTC, datetime

from auditor.issue import subjects_of
from auditor.loosen import KINDS, loosenings
from auditor.policy import DEFAULT_LOG_MASKS, Policy, Tolerance
from auditor.schema import ArtifactRef, Command, Identity, RunRecord, new_run_id

OUTPUTS = (ArtifactRef(name="outputs/model.bin", sha256="a" * 64, size=1, kind="output"),
           ArtifactRef(name="outputs/noise.bin", sha256="b" * 64, size=1, kind="output"))


def record() -> RunRecord:
    return RunRecord(identity=Identity(id=new_run_id(), name="t", user="u", host="h",
                                       started_at=datetime.now(UTC), status="finished"),
                     command=Command(argv=("python", "t.py"), cwd="."), artifacts=OUTPUTS)


def kinds(policy: Policy) -> list[str]:
    return [lo.kind for lo in loosenings(policy, list(OUTPUTS))]


def test_the_default_policy_loosens_nothing() -> None:
    assert loosenings(Policy(), list(OUTPUTS)) == []
    assert kinds(Policy(bitwise=True)) == []


def test_every_kind_is_found() -> None:
    policy = Policy(ignore_outputs=("outputs/noise*",), compare_logs=False,
                    metric_tolerance=Tolerance(rtol=1e-2, atol=0.0),
                    metrics={"val_*": Tolerance(rtol=0.5, atol=0.0)},
                    tensors={"fc.*": Tolerance(rtol=1e-3, atol=1e-3)},
                    log_masks=(*DEFAULT_LOG_MASKS, r"loss=\S+"), allow_gpu_mismatch=True)
    found = loosenings(policy, list(OUTPUTS))
    assert [lo.kind for lo in found] == ["ignore_outputs", "tolerance", "tolerance", "tolerance",
                                         "compare_logs", "log_masks", "gpu_mismatch"]
    assert set(KINDS) == {lo.kind for lo in found}
    assert "outputs/noise.bin" in found[0].detail and "outputs/model.bin" not in found[0].detail
    assert "metric_tolerance: rtol 0.01" in found[1].detail


def test_tighter_tolerances_are_not_loosenings() -> None:
    assert kinds(Policy(metric_tolerance=Tolerance(rtol=1e-9, atol=0.0),
                        metrics={"loss": Tolerance(rtol=0.0, atol=0.0)})) == []


def test_ignored_outputs_are_not_subjects() -> None:
    rec = record()
    names = [s.name for s in subjects_of(rec, Policy(ignore_outputs=("outputs/*",)))]
    assert names == [f"record:{rec.identity.id}"]
    names = [s.name for s in subjects_of(rec, Policy(ignore_outputs=("outputs/noise.bin",)))]
    assert names == ["outputs/model.bin", f"record:{rec.identity.id}"]
