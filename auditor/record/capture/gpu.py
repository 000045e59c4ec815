"""GPUs and the CUDA stack, as plain dicts.

* ``parse_nvidia_smi_xml`` reads the output of ``nvidia-smi -q -x`` (every schema from
  ``nvsmi_device_v8`` to ``v13`` seen in ``fixtures/nvidia-smi``). "N/A" and missing
  elements become ``None``. It raises ``GpuXmlError`` on malformed XML and refuses, before
  parsing, any document that declares entities or carries an internal DTD subset (the
  billion-laughs family); the ``<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_vN.dtd">``
  line real nvidia-smi writes is accepted, and the external DTD is never fetched.
* The XML has no compute capability. It is taken from a ``compute_cap`` element when a
  future schema has one (source ``"xml"``), else from ``COMPUTE_CAPABILITY`` by product
  name (source ``"table"``, values from developer.nvidia.com/cuda-gpus), else ``None``.
* ``capture_gpus`` runs nvidia-smi (20 s timeout) and never raises: it returns
  ``{"captured": False, "reason": ...}`` naming what to install or check.
* ``torch_cuda_info`` reads the CUDA runtime, cuDNN and NCCL versions torch was built
  with; it asks for per-device properties only when ``torch.cuda.is_available()``, so it
  never initialises CUDA on a host without one.
* ``gpu_signature`` is the (name, compute capability) pair a rerun host must match.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

NVIDIA_SMI = ("nvidia-smi", "-q", "-x")
TIMEOUT_S = 20
MAX_XML_BYTES = 20 << 20
NOT_FOUND = "nvidia-smi not found: install the NVIDIA driver to record GPUs"

# Ordered: the first pattern that matches the lower-cased product name wins.
COMPUTE_CAPABILITY: tuple[tuple[str, str], ...] = (
    (r"\bgb200\b|\bb200\b|\bb100\b", "10.0"),
    (r"\brtx (?:pro )?\d+ blackwell\b|\brtx 50\d0\b", "12.0"),
    (r"\bgh200\b|\bh200\b|\bh100\b|\bh800\b|\bh20\b", "9.0"),
    (r"\bl40s\b|\bl40\b|\bl4\b|\bl20\b|\brtx 40\d0\b|\brtx \d+ ada\b|\bada generation\b", "8.9"),
    (r"\ba100\b|\ba800\b|\ba30\b", "8.0"),
    (r"\ba10g\b|\ba10\b|\ba16\b|\ba2\b|\ba40\b|\brtx a\d{4}\b|\brtx 30\d0\b", "8.6"),
    (r"\bt4\b|\brtx 20\d0\b|\btitan rtx\b|\bquadro rtx\b|\bgtx 16\d0\b", "7.5"),
    (r"\bv100\b|\btitan v\b", "7.0"),
    (r"\bp100\b", "6.0"),
    (r"\bp40\b|\bp4\b|\bgtx 10\d0\b|\bgt 1030\b|\bquadro p\d+\b|\btitan xp\b", "6.1"),
    (r"\bm60\b|\bm40\b|\bgtx 9\d0\b|\bgtx titan x\b", "5.2"),
    (r"\bk80\b", "3.7"),
    (r"\bk40\b|\bk20\b", "3.5"),
)
_UNSAFE_XML = re.compile(r"<!ENTITY|<!DOCTYPE[^>]*\[", re.IGNORECASE)

RunCmd = Callable[..., "subprocess.CompletedProcess[str]"]


class GpuXmlError(ValueError):
    """The nvidia-smi XML is malformed, unsafe or not an ``nvidia_smi_log``."""


def _text(node: ET.Element | None, path: str) -> str | None:
    """The stripped text at ``path``; None when missing, empty or "N/A"."""
    found = node.find(path) if node is not None else None
    text = (found.text or "").strip() if found is not None else ""
    return None if text in ("", "N/A", "None") else text


def _number(text: str | None) -> int | None:
    """The leading integer of "81920 MiB" or "1410 MHz"."""
    match = re.match(r"\d+", text or "")
    return int(match.group(0)) if match else None


def table_compute_capability(name: str | None) -> str | None:
    """The compute capability of a product name from ``COMPUTE_CAPABILITY``, if listed."""
    lowered = (name or "").lower()
    return next((cc for pattern, cc in COMPUTE_CAPABILITY if re.search(pattern, lowered)), None)


def _compute_capability(gpu: ET.Element, name: str | None) -> tuple[str | None, str | None]:
    from_xml = _text(gpu, "compute_cap") or _text(gpu, "cuda_compute_capability")
    if from_xml:
        return from_xml, "xml"
    from_table = table_compute_capability(name)
    return (from_table, "table") if from_table else (None, None)


def _parse_gpu(index: int, gpu: ET.Element) -> dict[str, Any]:
    name = _text(gpu, "product_name")
    capability, source = _compute_capability(gpu, name)
    return {
        "index": index,
        "name": name,
        "uuid": _text(gpu, "uuid"),
        "memory_total_mib": _number(_text(gpu, "fb_memory_usage/total")),
        "compute_capability": capability,
        "compute_capability_source": source,
        "architecture": _text(gpu, "product_architecture"),
        "pci_bus_id": _text(gpu, "pci/pci_bus_id") or gpu.get("id"),
        "minor_number": _number(_text(gpu, "minor_number")),
        "vbios": _text(gpu, "vbios_version"),
        "persistence_mode": _text(gpu, "persistence_mode"),
        "mig_mode": _text(gpu, "mig_mode/current_mig"),
        "mig_device_count": len(gpu.findall("mig_devices/mig_device")),
        "compute_mode": _text(gpu, "compute_mode"),
        "ecc_mode": _text(gpu, "ecc_mode/current_ecc"),
        "clocks_max_sm_mhz": _number(_text(gpu, "max_clocks/sm_clock")),
    }


def _parse_root(xml_text: str) -> ET.Element:
    if len(xml_text) > MAX_XML_BYTES:
        raise GpuXmlError(f"document is larger than {MAX_XML_BYTES} bytes")
    if _UNSAFE_XML.search(xml_text):
        raise GpuXmlError("document declares entities or an internal DTD subset; refused")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise GpuXmlError(f"malformed XML: {exc}") from exc
    if root.tag != "nvidia_smi_log":
        raise GpuXmlError(f"root element is <{root.tag}>, not <nvidia_smi_log>")
    return root


def parse_nvidia_smi_xml(xml_text: str) -> dict[str, Any]:
    """Driver, CUDA version and one dict per ``<gpu>`` of an ``nvidia-smi -q -x`` report."""
    root = _parse_root(xml_text)
    return {
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "attached_gpus": _number(_text(root, "attached_gpus")),
        "gpus": [_parse_gpu(i, gpu) for i, gpu in enumerate(root.findall("gpu"))],
    }


def _not_captured(reason: str) -> dict[str, Any]:
    return {"captured": False, "reason": reason}


def _first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def capture_gpus(run_cmd: RunCmd = subprocess.run) -> dict[str, Any]:
    """Run ``nvidia-smi -q -x`` and parse it; never raises."""
    try:
        proc = run_cmd(list(NVIDIA_SMI), capture_output=True, text=True, timeout=TIMEOUT_S,
                       check=False)
    except FileNotFoundError:
        return _not_captured(NOT_FOUND)
    except subprocess.TimeoutExpired:
        return _not_captured(f"nvidia-smi did not answer within {TIMEOUT_S} s: check the "
                             "driver with `nvidia-smi` (a GPU may have fallen off the bus)")
    except OSError as exc:
        return _not_captured(f"nvidia-smi could not be run: {exc}")
    if proc.returncode != 0:
        why = _first_line(proc.stderr) if _first_line(proc.stderr) != "no output" else \
            _first_line(proc.stdout)
        return _not_captured(f"nvidia-smi exited with status {proc.returncode}: {why}")
    try:
        return {"captured": True, "source": "nvidia-smi -q -x",
                **parse_nvidia_smi_xml(proc.stdout or "")}
    except GpuXmlError as exc:
        return _not_captured(f"nvidia-smi -q -x gave unreadable XML: {exc}")


def gpu_signature(gpu: dict[str, Any]) -> tuple[str, str | None]:
    """(name, compute capability): what a rerun host's GPU must match."""
    return str(gpu.get("name") or ""), gpu.get("compute_capability")


# ---------------------------------------------------------------------------- torch

def _dotted(version: object) -> str | None:
    """NCCL reports ``(2, 18, 1)`` or, in old torch, ``2181``."""
    if isinstance(version, tuple | list):
        return ".".join(str(part) for part in version)
    return None if version is None else str(version)


def _cudnn_version(torch: Any) -> str | None:
    try:
        return _dotted(torch.backends.cudnn.version())
    except (AttributeError, RuntimeError, OSError):
        return None


def _nccl_version(torch: Any) -> str | None:
    if getattr(torch.version, "cuda", None) is None:
        return None  # CPU and ROCm builds have no NCCL to ask
    try:
        return _dotted(torch.cuda.nccl.version())
    except (AttributeError, RuntimeError, OSError, ImportError):
        return None


def _devices(torch: Any) -> list[dict[str, Any]]:
    devices = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        devices.append({"index": i, "name": torch.cuda.get_device_name(i),
                        "compute_capability": f"{major}.{minor}",
                        "total_memory_bytes": torch.cuda.get_device_properties(i).total_memory})
    return devices


def torch_cuda_info() -> dict[str, Any]:
    """Versions of the CUDA stack torch was built with, and its devices when available."""
    try:
        import torch
    except ImportError:
        return _not_captured("torch is not installed in this interpreter")
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop recording
        return _not_captured(f"torch failed to import: {exc}")
    try:
        available = bool(torch.cuda.is_available())
        return {"captured": True, "torch": str(torch.__version__),
                "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
                "cudnn": _cudnn_version(torch), "nccl": _nccl_version(torch),
                "available": available, "devices": _devices(torch) if available else []}
    except Exception as exc:  # noqa: BLE001 - a driver fault must not stop recording
        return _not_captured(f"torch could not query CUDA: {exc}")
