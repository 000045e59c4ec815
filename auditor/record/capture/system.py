"""The operating system and hardware of the recording host, as a plain dict.

``capture_system`` returns every field of ``FIELDS`` (platform, os, kernel, machine,
glibc, cpu_model, cpu_count, cpu_affinity, cpu_flags, ram_bytes, hostname) plus
``not_captured``: a field that cannot be read here is ``None`` (``cpu_flags``: an
empty list) and ``not_captured[field]`` says why. It never raises.

``cpu_flags`` is the subset of CPU features that changes which numeric kernels BLAS,
oneDNN and XLA dispatch to (``NUMERIC_CPU_FLAGS``), so a rerun on a host without, say,
``avx512f`` is explained rather than mysterious. The parsers of ``/etc/os-release``,
``/proc/cpuinfo`` and ``/proc/meminfo`` are pure functions over text.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

OS_RELEASE = Path("/etc/os-release")
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")

NUMERIC_CPU_FLAGS = frozenset({
    # x86: SIMD width and fused multiply-add decide summation order and rounding
    "sse2", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq",
    "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8",
    # aarch64
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "bf16", "i8mm",
})


T = TypeVar("T")


class NotCaptured(Exception):
    """A field cannot be read on this host; the message says why."""


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of os-release(5), quotes removed."""
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            pairs[key] = value.strip().strip("\"'")
    return pairs


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (the first processor block wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def parse_cpu_model(text: str) -> str | None:
    """``model name`` on x86; ``Hardware``, ``cpu model`` or ``Processor`` elsewhere."""
    fields = _cpuinfo_fields(text)
    keys = ("model name", "hardware", "cpu model", "processor")
    return next((fields[k] for k in keys if fields.get(k) and not fields[k].isdigit()), None)


def parse_cpu_flags(text: str) -> list[str]:
    """The numerics-relevant flags (x86 ``flags``, aarch64 ``Features``), sorted."""
    fields = _cpuinfo_fields(text)
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return sorted(flags & NUMERIC_CPU_FLAGS)


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` in bytes (the file says kB, meaning KiB)."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key.strip() == "MemTotal" and parts and parts[0].isdigit():
            unit = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            return int(parts[0]) * unit
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NotCaptured(f"{path} is not readable: {exc.strerror or exc}") from exc


def _required(value: T | None, why: str) -> T:
    if value is None or value == "" or value == []:
        raise NotCaptured(why)
    return value


def _os() -> str:
    pretty = parse_os_release(_read(OS_RELEASE)).get("PRETTY_NAME") if OS_RELEASE.exists() \
        else None
    system = _required(platform.system(), "platform.system() is empty")
    return f"{system} ({pretty})" if pretty else system


def _glibc() -> str:
    try:
        confstr = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        confstr = None
    if confstr and confstr.startswith("glibc "):
        return confstr.split()[1]
    lib, version = platform.libc_ver()
    return _required(version if lib == "glibc" else None, "not a glibc system (musl or macOS)")


def _cpu_affinity() -> int:
    if not hasattr(os, "sched_getaffinity"):
        raise NotCaptured("os.sched_getaffinity is not available on this platform")
    return len(os.sched_getaffinity(0))


def _cpu_flags() -> list[str]:
    flags = parse_cpu_flags(_read(CPUINFO))
    return _required(flags, f"no numeric CPU flags listed in {CPUINFO}")


FIELDS: dict[str, Callable[[], Any]] = {
    "platform": platform.platform,
    "os": _os,
    "kernel": lambda: _required(platform.release(), "platform.release() is empty"),
    "machine": lambda: _required(platform.machine(), "platform.machine() is empty"),
    "glibc": _glibc,
    "cpu_model": lambda: _required(parse_cpu_model(_read(CPUINFO)),
                                   f"no model name in {CPUINFO}"),
    "cpu_count": lambda: _required(os.cpu_count(), "os.cpu_count() is unknown"),
    "cpu_affinity": _cpu_affinity,
    "cpu_flags": _cpu_flags,
    "ram_bytes": lambda: _required(parse_meminfo_total(_read(MEMINFO)),
                                   f"no MemTotal in {MEMINFO}"),
    "hostname": lambda: _required(socket.gethostname(), "socket.gethostname() is empty"),
}
_EMPTY: dict[str, Any] = {"cpu_flags": []}


def capture_system() -> dict[str, Any]:
    """Every field of ``FIELDS``; unreadable ones are None with a reason in ``not_captured``."""
    result: dict[str, Any] = {}
    not_captured: dict[str, str] = {}
    for name, read in FIELDS.items():
        try:
            result[name] = read()
        except NotCaptured as exc:
            result[name], not_captured[name] = _EMPTY.get(name), str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd host must not stop a record
            result[name] = _EMPTY.get(name)
            not_captured[name] = f"{type(exc).__name__}: {exc}"
    result["not_captured"] = not_captured
    return result
