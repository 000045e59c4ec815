"""Serving one build's wheels to the docker build over HTTP on a private loopback address.

The classic builder (the only one the docker SDK drives) cannot mount a host folder into
a ``RUN``, and a wheel copied into the build context lands in a layer. So the build's
``uv pip install --no-index --find-links http://auditor-wheels:8765/`` reads the wheels from
a tiny HTTP server on this host: builds use the host's network, and the builder maps the
name ``auditor-wheels`` (``extra_hosts``, not part of any layer's cache key) to an address
of 127.0.0.0/8 drawn per build, so concurrent builds each reach their own folder while the
Dockerfile, and thus the layer cache, stays the same. The wheels never enter an image.

Each wheel of the lock served is one ``Counter`` step (the package being installed, its
bytes); the installer's wheel, in a subfolder (``auditor.env.build.UV_SERVED``), is not.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.server
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditor.core.progress import Counter

HOSTNAME = "auditor-wheels"
PORT = 8765
URL = f"http://{HOSTNAME}:{PORT}/"
_TRIES = 20


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; reports each wheel sent; logs nothing."""

    served: Counter = Counter()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        super().do_GET()
        name = self.path.rsplit("/", 1)[-1]
        if name.endswith(".whl") and self.path.count("/") == 1:  # not the installer's
            path = Path(self.translate_path(self.path))
            size = path.stat().st_size if path.is_file() else 0
            self.served.advance(current=name.split("-", 1)[0], nbytes=size)


@contextlib.contextmanager
def serving(folder: Path, served: Counter | None = None) -> Iterator[dict[str, str]]:
    """Serve ``folder`` while the block runs; yields the build's ``extra_hosts``."""
    handler = type("Handler", (_Handler,), {"served": served or Counter()})
    server = _bind(functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, name="auditor-wheels", daemon=True)
    thread.start()
    try:
        yield {HOSTNAME: str(server.server_address[0])}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _bind(handler: Any) -> http.server.ThreadingHTTPServer:
    """A server on ``PORT`` of a free 127.x.y.z address."""
    for _ in range(_TRIES):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        try:
            return http.server.ThreadingHTTPServer((address, PORT), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free loopback address for port {PORT}")
