"""System capture: this real host, the /proc parsers on literal snippets, unreadable files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditor.record.capture import system
from auditor.record.capture.system import (
    FIELDS,
    capture_system,
    parse_cpu_flags,
    parse_cpu_model,
    parse_meminfo_total,
    parse_os_release,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw \
avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 sha_ni

processor\t: 1
model name\t: Something Else
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid \
asimdrdm lrcpc dcpop asimddp sve sve2 i8mm bf16
CPU implementer\t: 0x41
"""
MEMINFO = "MemTotal:       32858276 kB\nMemFree:        1234 kB\n"
OS_RELEASE = '''PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
# a comment
ID=ubuntu
'''


def test_this_host_is_sane() -> None:
    got = capture_system()
    assert set(FIELDS) | {"not_captured"} == set(got)
    assert got["cpu_count"] >= 1
    assert 1 <= got["cpu_affinity"] <= got["cpu_count"]
    assert got["ram_bytes"] > 1 << 30
    assert got["kernel"] and got["machine"] and got["hostname"] and got["os"]
    assert got["kernel"] == os.uname().release
    assert all(isinstance(v, str) for v in got["not_captured"].values())


def test_os_release() -> None:
    pairs = parse_os_release(OS_RELEASE)
    assert pairs["PRETTY_NAME"] == "Ubuntu 22.04.4 LTS"
    assert pairs["ID"] == "ubuntu" and "# a comment" not in pairs


def test_x86_cpuinfo_first_processor_wins() -> None:
    assert parse_cpu_model(X86_CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    flags = parse_cpu_flags(X86_CPUINFO)
    assert flags == sorted(flags)
    assert {"avx2", "avx512f", "fma", "amx_bf16", "avx512_fp16"} <= set(flags)
    assert "sha_ni" not in flags and "fpu" not in flags


def test_arm_cpuinfo() -> None:
    assert parse_cpu_model(ARM_CPUINFO) is None  # only a digit under "processor"
    assert parse_cpu_flags(ARM_CPUINFO) == ["asimd", "asimddp", "asimdhp", "bf16", "fphp",
                                            "i8mm", "sve", "sve2"]


@pytest.mark.parametrize(("text", "want"), [
    (MEMINFO, 32858276 * 1024),
    ("MemTotal: 2048\n", 2048),
    ("MemFree: 5 kB\n", None),
    ("", None),
    ("MemTotal: lots kB\n", None),
])
def test_meminfo(text: str, want: int | None) -> None:
    assert parse_meminfo_total(text) == want


def test_unreadable_files_degrade_with_reasons(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setattr(system, "CPUINFO", missing)
    monkeypatch.setattr(system, "MEMINFO", missing)
    got = capture_system()
    assert got["cpu_model"] is None and got["ram_bytes"] is None and got["cpu_flags"] == []
    for field in ("cpu_model", "cpu_flags", "ram_bytes"):
        assert str(missing) in got["not_captured"][field]
    assert got["cpu_count"] >= 1  # the rest is still captured


def test_a_crashing_reader_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> str:
        raise RuntimeError("odd host")

    monkeypatch.setitem(FIELDS, "kernel", boom)
    got = capture_system()
    assert got["kernel"] is None
    assert got["not_captured"]["kernel"] == "RuntimeError: odd host"


def test_empty_cpuinfo_has_no_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "cpuinfo"
    empty.write_text("processor : 0\n")
    monkeypatch.setattr(system, "CPUINFO", empty)
    got = capture_system()
    assert got["cpu_flags"] == [] and "no numeric CPU flags" in got["not_captured"]["cpu_flags"]
