"""Which outputs a certificate may name, and the loosenings it carries with their kinds."""

from __future__ import annotations

from auditor.certify.issue import subjects_of
from auditor.certify.loosen import from_verdict, kind_of, uncertified_outputs
from auditor.certify.verdict import Verdict
from auditor.compare.files import coverage
from auditor.core.policy import DEFAULT_LOG_MASKS, Policy, Tolerance, loosenings
from auditor.core.schema import ArtifactRef
from tests.factories import make_record

OUTPUTS = (ArtifactRef(name="outputs/model.bin", sha256="a" * 64, size=1, kind="output"),
           ArtifactRef(name="outputs/noise.bin", sha256="b" * 64, size=1, kind="output"),
           ArtifactRef(name="outputs/train.log", sha256="c" * 64, size=1, kind="output"))
RECORD = make_record(status="finished", argv=("python", "t.py"), artifacts=OUTPUTS)


def verdict(policy: Policy) -> Verdict:
    return Verdict(level="reproduced-bitwise", outputs=coverage(RECORD, RECORD, policy.compare),
                   loosenings=loosenings(policy))


def names(policy: Policy) -> list[str]:
    return [s.name for s in subjects_of(RECORD, verdict(policy))]


def test_ignored_outputs_are_never_subjects() -> None:
    rid = RECORD.identity.id
    assert names(Policy(ignore_outputs=("outputs/*",))) == [f"record:{rid}"]
    assert "outputs/noise.bin" not in names(Policy(ignore_outputs=("*/noise.bin",)))
    assert "outputs/model.bin" in names(Policy(ignore_outputs=("*/noise.bin",)))
    left_out = uncertified_outputs(list(OUTPUTS), verdict(Policy(ignore_outputs=("*/noise*",))))
    assert "outputs/noise.bin" in [a.name for a in left_out]


def test_a_verdict_without_coverage_certifies_no_output() -> None:  # fail safe
    assert [s.name for s in subjects_of(RECORD, Verdict(level="reproduced-bitwise"))] == [
        f"record:{RECORD.identity.id}"]


def test_every_loosening_is_carried_with_its_kind() -> None:
    policy = Policy(ignore_outputs=("*/noise*",), compare_logs="off",
                    metric_tolerance=Tolerance(rtol=1e-2, atol=0.0),
                    metrics={"val_*": Tolerance(rtol=0.5, atol=0.0)},
                    log_masks=(*DEFAULT_LOG_MASKS, r"loss=\S+"), allow_gpu_mismatch=True)
    carried = from_verdict(verdict(policy))
    assert [lo.detail for lo in carried] == loosenings(policy)
    assert {lo.kind for lo in carried} >= {"ignore_outputs", "tolerance", "compare_logs",
                                           "log_masks", "gpu_mismatch"}
    assert "other" not in {lo.kind for lo in carried}
    assert from_verdict(verdict(Policy())) == []


def test_kinds_of_lines() -> None:
    assert kind_of("dtype_tolerances.float32: rtol 1") == "tolerance"
    assert kind_of("something new") == "other"
