"""The real `audit ui` as a subprocess on a free loopback port, for HTTP and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import AUDIT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(store: Path | str, *args: str, token: str | None = None) -> Iterator[str]:
    """Start `audit --store STORE ui --port P ARGS…`; yield its base URL; stop it."""
    port = free_port()
    env = {**os.environ}
    env.pop("AUDITOR_UI_TOKEN", None)
    if token:
        env["AUDITOR_UI_TOKEN"] = token
    proc = subprocess.Popen([AUDIT, "--store", str(store), "ui", "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"audit ui exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"{url}/static/app.css", timeout=2)
                break
            except OSError as exc:
                if getattr(exc, "code", None) == 401:
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
