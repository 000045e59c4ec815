"""A rerun in a container of the built image, through the docker SDK: no network, a
read-only root, tmpfs /tmp, uid 1000, all capabilities dropped, no-new-privileges,
pids/memory/time limits; labelled with the run and this attempt, and always removed.
Neither the store nor the host is mounted: only the rerun's copy of the tree (at /work),
its probe folder, the probe and the stdlib-only API.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from auditor.core.errors import CouldNotVerify
from auditor.env.access import RERUN_UID
from auditor.record.container import API_LIB, PACKAGE_DIR, PROBE_LIB
from auditor.record.wrap import PROBE_PATH
from auditor.rerun.lease import LABEL
from auditor.rerun.sandbox import Executed, Limits, Prepared

DOCKER_SANDBOX = (
    "docker backend: no network (network_mode none), read-only image, uid 1000, all "
    "capabilities dropped, no-new-privileges; neither the store nor the host is mounted"
)


def execute_docker(
    prep: Prepared, image_id: str, limits: Limits, on_line: Callable[[int, str], None]
) -> Executed:
    """Run in a container of the built image; the container is always removed.

    The wall-clock limit is enforced while the output streams (a wait with a timeout in
    this thread, the logs read in another), so a silent or sleeping rerun is killed on
    time. The container is found for removal by a label unique to this attempt, so one
    created but never started, or interrupted (Ctrl-C) before ``run`` returned, is
    removed too.
    """
    import docker
    import docker.errors
    from docker.types import DeviceRequest

    from auditor.env.engine import docker_client

    # the client's read timeout also bounds silences in the log stream: keep it longer
    client = docker_client(timeout=limits.timeout_s + 120)
    attempt = uuid.uuid4().hex
    rel_cwd = prep.cwd.relative_to(prep.tree).as_posix()
    env = {**prep.env, "PYTHONPATH": f"{PROBE_LIB}:{API_LIB}",
           "AUDITOR_PROBE_DIR": "/probe", "AUDITOR_RUN_ID": prep.record.identity.id}
    devices = [DeviceRequest(count=limits.gpus, capabilities=[["gpu"]])] if limits.gpus else []
    started = time.monotonic()
    container: Any = None
    try:
        try:
            container = client.containers.run(
                image_id,
                command=list(prep.argv),
                working_dir="/work" if rel_cwd == "." else f"/work/{rel_cwd}",
                environment=env,
                user=f"{RERUN_UID}:{RERUN_UID}",
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": "rw,size=512m", "/home/auditor": "rw,size=64m,uid=1000"},
                volumes={
                    str(prep.tree): {"bind": "/work", "mode": "rw"},
                    str(PROBE_PATH): {"bind": PROBE_LIB, "mode": "ro"},
                    # the stdlib-only attached API, for scripts that `import auditor`
                    str(PACKAGE_DIR): {"bind": f"{API_LIB}/auditor", "mode": "ro"},
                    str(prep.workdir / "probe"): {"bind": "/probe", "mode": "rw"},
                },
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=limits.pids_limit,
                mem_limit=limits.mem_limit,
                memswap_limit=limits.mem_limit,
                device_requests=devices,
                labels={"auditor.run": prep.record.identity.id, "auditor.attempt": attempt,
                        LABEL: str(prep.workdir)},  # found by a later command if we die
                detach=True,
            )
        except docker.errors.APIError as exc:  # created but not started, bad image, no GPU
            raise CouldNotVerify(
                f"the rerun container could not start: {exc.explanation or exc}",
                hint="check the recorded command and the built image (audit build)",
            ) from exc
        logs: dict[str, Any] = {}

        def read_logs() -> None:
            try:
                logs["streams"] = _stream(container, on_line)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                logs["error"] = exc

        reader = threading.Thread(target=read_logs, daemon=True)
        reader.start()
        waiting = time.monotonic()
        try:
            status = container.wait(timeout=limits.timeout_s)
        except Exception as exc:  # requests' ReadTimeout, or a connection error
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()
            reader.join(timeout=10)  # no line callbacks after we return
            if time.monotonic() - waiting < limits.timeout_s - 0.5:
                raise CouldNotVerify(
                    f"the docker engine stopped answering during the rerun: {exc}"
                ) from exc
            raise CouldNotVerify(
                f"timeout: the rerun ran past {limits.timeout_s} s",
                hint="raise the limit with --timeout",
            ) from None
        reader.join(timeout=30)  # the log stream ends once the container has stopped
        container.reload()
        if container.attrs.get("State", {}).get("OOMKilled"):
            raise CouldNotVerify(
                f"out of memory: the rerun exceeded {limits.mem_limit}",
                hint="raise the limit with --memory",
            )
        if "error" in logs:
            raise logs["error"]
        if "streams" in logs:
            out, err = logs["streams"]
        else:  # the stream did not end: take the logs whole
            out = list(_lines(iter([container.logs(stdout=True, stderr=False)])))
            err = list(_lines(iter([container.logs(stdout=False, stderr=True)])))
        code = int(status.get("StatusCode", 1))
    finally:
        removed = False
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
                removed = True
        if not removed:  # created but not returned by `run`, or not removed: by its label
            with contextlib.suppress(docker.errors.DockerException):
                for left in client.containers.list(
                    all=True, sparse=True, filters={"label": f"auditor.attempt={attempt}"}
                ):
                    left.remove(force=True)
        client.close()
    return Executed(
        code, "".join(out), "".join(err), time.monotonic() - started, prep.workdir / "probe",
        seen_as="/work", notes=(DOCKER_SANDBOX,),
    )


def _stream(container: Any, on_line: Callable[[int, str], None]) -> tuple[list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []
    errors: list[BaseException] = []

    def pump(stdout: bool, sink: list[str], feed: Callable[[int, str], None] | None) -> None:
        try:
            stream = container.logs(stdout=stdout, stderr=not stdout, stream=True, follow=True)
            for lineno, line in enumerate(_lines(stream), start=1):
                sink.append(line)
                if feed:
                    feed(lineno, line)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _stream's caller thread
            errors.append(exc)

    threads = [
        threading.Thread(target=pump, args=(True, out, on_line), daemon=True),
        threading.Thread(target=pump, args=(False, err, None), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, err


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace") + "\n"
    if pending:
        yield pending.decode("utf-8", "replace")
