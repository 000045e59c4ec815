"""Benchmark of image builds: the cache hit of an unchanged image, and the torch image.

* ``cache-hit``: ``build_docker()`` of inputs whose image already exists (target: under 3 s),
  measured five times after one warm-up build; reports min/median/max seconds.
* ``torch-cold``: the torch fixture lock (``fixtures/locks/pip/torch-cpu.requirements.lock``,
  the CPU wheel from the wheelhouse) built with ``no_cache=True`` on the debootstrap base,
  so every layer is rebuilt; reports seconds and the image size in MB.

Needs a docker engine, the base image ``auditor-base:bookworm`` (``.ci/docker-setup.sh``
builds it), the torch wheel in ``$PIP_FIND_LINKS`` (default /opt/wheels) and a CA bundle
(``$PIP_CERT``, else the system bundle). Writes ``bench/results/build.json``.
Usage: ``python bench/bench_build.py [--skip-cold]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.core.lockfile import parse_requirements_lock
from auditor.env.baseimage import build_base_image
from auditor.env.build import build_docker
from auditor.env.engine import docker_client
from auditor.env.spec import BuildInputs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "build.json"
LOCKS = ROOT / "fixtures" / "locks" / "pip"
HITS = 5


def inputs(lock_name: str, base: tuple[str, str], wheelhouse: Path | None) -> BuildInputs:
    """Build inputs for a fixture lock on the local base image."""
    lock = parse_requirements_lock((LOCKS / lock_name).read_text(), name=lock_name)
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    return BuildInputs(run_id="bench-build", lock=lock, python_version="3.11.2",
                       base_image=base[0], base_image_id=base[1], wheelhouse=wheelhouse,
                       ca_bundle=ca, auditor_version="bench")


def cache_hit(case: BuildInputs) -> dict[str, Any]:
    """Seconds of a rebuild of an image that exists."""
    build_docker(case)
    times = []
    for _ in range(HITS):
        started = time.monotonic()
        result = build_docker(case)
        times.append(time.monotonic() - started)
        assert result.cached
    return {"runs": HITS, "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "target_s": 3.0, "ok": max(times) < 3.0}


def torch_cold(case: BuildInputs) -> dict[str, Any]:
    """Seconds and size of the torch image built with no layer cache."""
    started = time.monotonic()
    result = build_docker(case, no_cache=True)
    seconds = time.monotonic() - started
    client = docker_client()
    try:
        size = client.images.get(result.image_id).attrs["Size"]
    finally:
        client.close()
    return {"seconds": round(seconds, 1), "size_mb": round(size / 1e6, 1),
            "image": result.tag, "packages": len(result.packages)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="only the cache-hit case")
    args = parser.parse_args()
    wheelhouse = Path(os.environ.get("PIP_FIND_LINKS") or "/opt/wheels")
    base = build_base_image()
    report: dict[str, Any] = {"benchmark": "build", "when": datetime.now(UTC).isoformat(),
                              "host": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    torch = inputs("torch-cpu.requirements.lock", base, wheelhouse)
    report["cache_hit"] = cache_hit(torch)
    if not args.skip_cold:
        report["torch_cold"] = torch_cold(torch)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["cache_hit"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
