"""``check_gpus``: can this host rerun a GPU run? Real recorded nvidia-smi reports on
both sides (``fixtures/nvidia-smi``), parsed by the capture code the recorder uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.core.errors import CouldNotVerify
from auditor.core.schema import (
    Accelerators,
    Environment,
    Gpu,
    RunRecord,
)
from auditor.record.capture.gpu import NOT_FOUND, parse_nvidia_smi_xml
from auditor.rerun.record import check_gpus
from tests.factories import make_record

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-smi"
A100 = "a100-sxm4-80gb-535.54.03.xml"
T4 = "tesla-t4-515.105.01.xml"
P100_X2 = "tesla-p100-pcie-12gb-x2-375.66.xml"
GTX_1070_TI = "gtx-1070-ti-unknown.xml"
GRID_P4 = "grid-p4-1q-513.46.xml"
ALL = (A100, T4, P100_X2, GTX_1070_TI, GRID_P4)
CPU_ONLY_HOST: dict[str, Any] = {"captured": False, "reason": "nvidia-smi not found"}


def parsed(name: str) -> dict[str, Any]:
    return parse_nvidia_smi_xml((FIXTURES / name).read_text())


def host(name: str) -> dict[str, Any]:
    """What ``capture_gpus`` returns on a host that printed this report."""
    return {"captured": True, **parsed(name)}


def run_on(name: str | None) -> RunRecord:
    """A run recorded on the host of report ``name`` (None: a CPU-only host)."""
    accelerators = None
    if name is not None:
        report = parsed(name)
        accelerators = Accelerators(
            driver_version=report["driver_version"],
            cuda_driver_version=report["cuda_version"],
            gpus=tuple(
                Gpu(
                    index=g["index"],
                    name=g["name"],
                    uuid=g["uuid"],
                    memory_total_mib=g["memory_total_mib"],
                    compute_capability=g["compute_capability"],
                    pci_bus_id=g["pci_bus_id"],
                )
                for g in report["gpus"]
            ),
        )
    return make_record(name="train", host="gpu-box",
                       environment=Environment(accelerators=accelerators))


@pytest.mark.parametrize("name", ALL)
def test_same_gpus_no_notes(name: str) -> None:
    assert check_gpus(run_on(name), allow_mismatch=False, host=host(name)) == []
    assert check_gpus(run_on(name), allow_mismatch=True, host=host(name)) == []


def test_different_model_names_both() -> None:
    with pytest.raises(CouldNotVerify) as caught:
        check_gpus(run_on(A100), allow_mismatch=False, host=host(T4))
    message = str(caught.value)
    assert "NVIDIA A100-SXM4-80GB (cc 8.0)" in message
    assert "Tesla T4 (cc 7.5)" in message
    assert "allow_gpu_mismatch" in message  # the hint says what to do
    assert caught.value.exit_code == 3


def test_same_compute_capability_other_model_is_a_mismatch() -> None:
    # GTX 1070 Ti and GRID P4-1Q are both cc 6.1: the model must match too
    with pytest.raises(CouldNotVerify, match="GeForce GTX 1070 Ti"):
        check_gpus(run_on(GTX_1070_TI), allow_mismatch=False, host=host(GRID_P4))


def test_fewer_gpus_than_recorded() -> None:
    one_p100 = host(P100_X2)
    one_p100["gpus"] = one_p100["gpus"][:1]  # the same host with one card gone
    with pytest.raises(CouldNotVerify) as caught:
        check_gpus(run_on(P100_X2), allow_mismatch=False, host=one_p100)
    assert "2 GPU(s)" in str(caught.value)
    assert "Tesla P100-PCIE-12GB (cc 6.0)" in str(caught.value)


def test_mismatch_allowed_by_policy_is_a_note() -> None:
    notes = check_gpus(run_on(A100), allow_mismatch=True, host=host(T4))
    assert len(notes) == 1
    assert notes[0].startswith("GPU mismatch allowed by policy")
    assert "NVIDIA A100-SXM4-80GB" in notes[0] and "Tesla T4" in notes[0]


@pytest.mark.parametrize("name", ALL)
def test_gpu_run_on_cpu_only_host(name: str) -> None:
    with pytest.raises(CouldNotVerify, match="no GPU") as caught:
        check_gpus(run_on(name), allow_mismatch=False, host=CPU_ONLY_HOST)
    assert "nvidia-smi not found" in str(caught.value)  # the capture's reason is passed on


def test_gpu_run_on_host_where_capture_failed_names_the_reason() -> None:
    failed = {"captured": False, "reason": NOT_FOUND}
    with pytest.raises(CouldNotVerify, match="install the NVIDIA driver"):
        check_gpus(run_on(T4), allow_mismatch=False, host=failed)


@pytest.mark.parametrize("where", [*ALL, None])
def test_cpu_only_run_on_any_host(where: str | None) -> None:
    found = CPU_ONLY_HOST if where is None else host(where)
    assert check_gpus(run_on(None), allow_mismatch=False, host=found) == []


def test_cpu_only_run_never_asks_the_host() -> None:
    # no GPU wanted: nvidia-smi is not even run (host=None would capture)
    assert check_gpus(run_on(None), allow_mismatch=False) == []
    empty = run_on(None).model_copy(
        update={"environment": Environment(accelerators=Accelerators(gpus=()))}
    )
    assert check_gpus(empty, allow_mismatch=False, host=host(A100)) == []


def test_a_gpu_without_a_product_name_is_recorded_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from auditor.record import session

    monkeypatch.setattr(
        session,
        "capture_gpus",
        lambda: {
            "captured": True,
            "driver_version": "535.1",
            "gpus": [{"index": 0, "name": None, "memory_total_mib": 1024}],
        },
    )
    acc = session._accelerators({})
    assert acc.gpus[0].name == "unknown GPU" and acc.gpus[0].memory_total_mib == 1024
