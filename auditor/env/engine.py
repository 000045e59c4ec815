"""The docker engine: a connected client, or ``EngineUnavailable`` (exit 3) at once.

``docker_client()`` checks a ``unix://`` socket itself before the SDK touches it (the SDK
leaks a failed socket), then asks within ``PING_TIMEOUT_S``: the API version the first
time in a process (that answer is the ping), a ping with the version kept after that.
``engine_answers()`` is the question the backend choice asks. Used by the docker build,
the base image and the docker rerun; nothing here knows about builds.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from auditor.core.errors import EngineUnavailable

PING_TIMEOUT_S = 3
BUILD_TIMEOUT_S = 3600
_API_VERSIONS: dict[str, str] = {}  # engine URL -> the API version negotiated with it


def docker_client(timeout: int = BUILD_TIMEOUT_S) -> Any:
    """A connected ``docker.DockerClient``; ``EngineUnavailable`` when none answers."""
    import docker
    import docker.errors

    url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    message = f"no docker engine answers at {url}: start it (dockerd) or use --backend venv"
    if url.startswith("unix://") and not _unix_socket_answers(url.removeprefix("unix://")):
        raise EngineUnavailable(message)  # checked here: the SDK leaks a failed socket
    client = None
    try:
        known = _API_VERSIONS.get(url)  # None: negotiated now (GET /version, an answer too)
        client = docker.from_env(timeout=PING_TIMEOUT_S, version=known)
        if known is None:
            _API_VERSIONS[url] = client.api.api_version
        else:
            client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        if client is not None:
            client.close()
        raise EngineUnavailable(message) from exc
    client.api.timeout = timeout
    return client


def engine_answers() -> EngineUnavailable | None:
    """None when an engine answers; else the error saying which one did not."""
    try:
        docker_client().close()
    except EngineUnavailable as exc:
        return exc
    return None


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PING_TIMEOUT_S)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
