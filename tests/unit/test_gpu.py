"""GPU capture: real ``nvidia-smi -q -x`` recordings, unsafe XML, and a host without GPUs."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditor.record.capture.gpu import (
    NOT_FOUND,
    GpuXmlError,
    capture_gpus,
    gpu_signature,
    parse_nvidia_smi_xml,
    table_compute_capability,
    torch_cuda_info,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-smi"

# Golden values read by hand from each recording (see fixtures/nvidia-smi/SOURCES.md).
GOLDEN: dict[str, dict[str, Any]] = {
    "a100-sxm4-80gb-535.54.03.xml": {
        "driver_version": "535.54.03", "cuda_version": "12.2", "attached_gpus": 4,
        "gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920,
                  "uuid": "GPU-513536b6-7d19-9063-b049-1e69664bb298",
                  "pci_bus_id": "00000000:01:00.0", "vbios": "92.00.36.00.02",
                  "compute_capability": "8.0", "mig_mode": "Enabled", "mig_device_count": 4,
                  "ecc_mode": "Enabled", "persistence_mode": "Disabled",
                  "clocks_max_sm_mhz": 1410, "architecture": "Ampere", "minor_number": 1}],
    },
    "grid-p4-1q-513.46.xml": {
        "driver_version": "513.46", "cuda_version": "11.6", "attached_gpus": 1,
        "gpus": [{"name": "GRID P4-1Q", "memory_total_mib": 1024,
                  "uuid": "GPU-1b1ea7c7-1c4b-ed49-1c72-26c65f2dd207",
                  "pci_bus_id": "00000000:00:0B.0", "vbios": "00.00.00.00.00",
                  "compute_capability": "6.1", "mig_mode": None, "ecc_mode": None,
                  "persistence_mode": None, "architecture": "Pascal", "minor_number": None}],
    },
    "gtx-1070-ti-unknown.xml": {
        "driver_version": None, "cuda_version": None, "attached_gpus": None,
        "gpus": [{"name": "GeForce GTX 1070 Ti", "memory_total_mib": 4096,
                  "uuid": "GPU-f9ba66fc-a7f5-94c5-da19-019ef2f9c665",
                  "pci_bus_id": "00000000:01:00.0", "vbios": None,
                  "compute_capability": "6.1", "clocks_max_sm_mhz": None}],
    },
    "tesla-p100-pcie-12gb-x2-375.66.xml": {
        "driver_version": "375.66", "cuda_version": None, "attached_gpus": 2,
        "gpus": [{"index": 0, "name": "Tesla P100-PCIE-12GB", "memory_total_mib": 11567,
                  "uuid": "GPU-28604e81-21ec-cc48-6759-bf2648b22e16",
                  "pci_bus_id": "0000:04:00.0", "vbios": "86.00.3A.00.02",
                  "compute_capability": "6.0", "ecc_mode": "Enabled",
                  "clocks_max_sm_mhz": 1328, "minor_number": 0},
                 {"index": 1, "name": "Tesla P100-PCIE-12GB_2", "memory_total_mib": 12290,
                  "uuid": "GPU-46915a82-3fd2-8e11-ae26-a80b607c04f3",
                  "pci_bus_id": "0000:82:00.0", "compute_capability": "6.0",
                  "minor_number": 1}],
    },
    "tesla-t4-515.105.01.xml": {
        "driver_version": "515.105.01", "cuda_version": "11.7", "attached_gpus": 1,
        "gpus": [{"name": "Tesla T4", "memory_total_mib": 15360,
                  "uuid": "GPU-d37e67a5-91dd-3774-a5cb-99096249601a",
                  "pci_bus_id": "00000000:00:1E.0", "vbios": "90.04.84.00.06",
                  "compute_capability": "7.5", "mig_mode": None, "ecc_mode": "Enabled",
                  "compute_mode": "Default", "clocks_max_sm_mhz": 1590,
                  "architecture": "Turing"}],
    },
}

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE nvidia_smi_log [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<nvidia_smi_log><driver_version>&lol3;</driver_version></nvidia_smi_log>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<!ENTITY xxe SYSTEM "file:///etc/passwd">
<nvidia_smi_log><driver_version>&xxe;</driver_version></nvidia_smi_log>
"""


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_fixture_has_golden_values_and_a_source() -> None:
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    on_disk = sorted(p.name for p in FIXTURES.glob("*.xml"))
    assert on_disk == sorted(GOLDEN)
    assert all(name in sources for name in on_disk)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_parse_real_recording(name: str) -> None:
    want = GOLDEN[name]
    got = parse_nvidia_smi_xml(_read(name))
    for key in ("driver_version", "cuda_version", "attached_gpus"):
        assert got[key] == want[key], key
    assert len(got["gpus"]) == len(want["gpus"])
    for gpu, expected in zip(got["gpus"], want["gpus"], strict=True):
        assert {k: gpu[k] for k in expected} == expected
        assert gpu["compute_capability_source"] == "table"


def test_multi_gpu_indices_follow_document_order() -> None:
    gpus = parse_nvidia_smi_xml(_read("tesla-p100-pcie-12gb-x2-375.66.xml"))["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    assert {gpu_signature(g) for g in gpus} == {("Tesla P100-PCIE-12GB", "6.0"),
                                                 ("Tesla P100-PCIE-12GB_2", "6.0")}


def test_compute_capability_from_xml_wins_over_table() -> None:
    xml = ("<nvidia_smi_log><gpu id='0'><product_name>NVIDIA H100 80GB HBM3</product_name>"
           "<compute_cap>9.0</compute_cap></gpu></nvidia_smi_log>")
    gpu = parse_nvidia_smi_xml(xml)["gpus"][0]
    assert (gpu["compute_capability"], gpu["compute_capability_source"]) == ("9.0", "xml")


def test_unknown_product_has_no_compute_capability() -> None:
    xml = "<nvidia_smi_log><gpu><product_name>Mystery GPU 9</product_name></gpu></nvidia_smi_log>"
    gpu = parse_nvidia_smi_xml(xml)["gpus"][0]
    assert gpu["compute_capability"] is None and gpu["compute_capability_source"] is None
    assert gpu_signature(gpu) == ("Mystery GPU 9", None)


@pytest.mark.parametrize(("name", "cc"), [
    ("NVIDIA A100-SXM4-40GB", "8.0"), ("NVIDIA A100 80GB PCIe", "8.0"),
    ("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA H200", "9.0"), ("NVIDIA GH200 480GB", "9.0"),
    ("Tesla V100-SXM2-16GB", "7.0"), ("Tesla T4", "7.5"), ("NVIDIA A10G", "8.6"),
    ("NVIDIA A10", "8.6"), ("NVIDIA GeForce RTX 3090", "8.6"), ("NVIDIA RTX A6000", "8.6"),
    ("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA L4", "8.9"), ("NVIDIA L40S", "8.9"),
    ("NVIDIA RTX 6000 Ada Generation", "8.9"), ("Tesla P100-PCIE-16GB", "6.0"),
    ("Tesla K80", "3.7"), ("GeForce GTX 1080", "6.1"), ("NVIDIA GeForce RTX 2080 Ti", "7.5"),
    ("NVIDIA B200", "10.0"), ("NVIDIA GeForce RTX 5090", "12.0"), ("Tesla P40", "6.1"),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "12.0"), ("", None),
])
def test_compute_capability_table(name: str, cc: str | None) -> None:
    assert table_compute_capability(name) == cc


@pytest.mark.parametrize(("text", "why"), [
    ("<nvidia_smi_log><gpu>", "malformed"),
    ("", "malformed"),
    ("<root/>", "not <nvidia_smi_log>"),
    (BILLION_LAUGHS, "refused"),
    (EXTERNAL_ENTITY, "refused"),
])
def test_bad_xml_is_refused(text: str, why: str) -> None:
    with pytest.raises(GpuXmlError, match=why):
        parse_nvidia_smi_xml(text)


@given(st.text(max_size=300))
def test_parser_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(GpuXmlError):
        parse_nvidia_smi_xml(text)


def _fake_run(stdout: str = "", stderr: str = "", rc: int = 0,
              raises: BaseException | None = None) -> Any:
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        assert kwargs["timeout"] == 20 and kwargs["check"] is False
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_capture_parses_what_nvidia_smi_prints() -> None:
    run = _fake_run(stdout=_read("tesla-t4-515.105.01.xml"))
    got = capture_gpus(run)
    assert run.calls == [["nvidia-smi", "-q", "-x"]]
    assert got["captured"] is True and got["driver_version"] == "515.105.01"
    assert [g["name"] for g in got["gpus"]] == ["Tesla T4"]


@pytest.mark.parametrize(("run", "reason"), [
    (_fake_run(raises=FileNotFoundError(2, "No such file", "nvidia-smi")), NOT_FOUND),
    (_fake_run(raises=subprocess.TimeoutExpired(["nvidia-smi"], 20)), "did not answer within 20 s"),
    (_fake_run(raises=PermissionError(13, "Permission denied")), "could not be run"),
    (_fake_run(rc=9, stdout="NVIDIA-SMI has failed because it couldn't communicate with the "
               "NVIDIA driver.\n"), "exited with status 9: NVIDIA-SMI has failed"),
    (_fake_run(stdout="<nvidia_smi_log><gpu>"), "unreadable XML: malformed"),
    (_fake_run(stdout=BILLION_LAUGHS), "unreadable XML: document declares entities"),
])
def test_capture_degrades_with_a_reason(run: Any, reason: str) -> None:
    got = capture_gpus(run)
    assert got["captured"] is False
    assert reason in got["reason"]


def test_capture_on_this_host_never_raises() -> None:
    got = capture_gpus()
    assert isinstance(got["captured"], bool)
    assert got["captured"] or got["reason"]


def test_torch_cuda_info_on_this_interpreter() -> None:
    got = torch_cuda_info()
    if not got["captured"]:
        assert got["reason"]
        return
    assert isinstance(got["available"], bool)
    assert got["available"] or got["devices"] == []


def test_torch_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert torch_cuda_info() == {"captured": False,
                                 "reason": "torch is not installed in this interpreter"}


def _fake_torch(available: bool) -> SimpleNamespace:
    def never(*_: object) -> None:
        raise AssertionError("CUDA was touched although it is not available")

    device_call = (lambda *_: None) if available else never
    cuda = SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: 2 if available else never(),
        get_device_capability=lambda i: (device_call(), (9, 0))[1],
        get_device_name=lambda i: f"NVIDIA H100 80GB HBM3 #{i}",
        get_device_properties=lambda i: SimpleNamespace(total_memory=85 << 30),
        nccl=SimpleNamespace(version=lambda: (2, 21, 5)),
    )
    return SimpleNamespace(
        __version__="2.5.1+cu124", version=SimpleNamespace(cuda="12.4", hip=None), cuda=cuda,
        backends=SimpleNamespace(cudnn=SimpleNamespace(version=lambda: 90100)),
    )


def test_torch_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(available=True))
    got = torch_cuda_info()
    assert got["captured"] and got["available"]
    assert (got["cuda"], got["cudnn"], got["nccl"]) == ("12.4", "90100", "2.21.5")
    assert [d["compute_capability"] for d in got["devices"]] == ["9.0", "9.0"]
    assert got["devices"][1]["total_memory_bytes"] == 85 << 30


def test_torch_without_a_gpu_never_initialises_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(available=False))
    got = torch_cuda_info()
    assert got["captured"] and got["available"] is False and got["devices"] == []
