"""Run a recorded command again, exactly: same tree, inputs, seeds and settings.

``prepare`` rebuilds the source tree into the rerun's own private copy (checked against
its Merkle root before anything runs), re-checks every input's fingerprint, and hands the
copy to the rerun user: code and pre-existing untracked files are the rerun's to change
(real scripts overwrite ``model.pt`` and write into an existing ``checkpoints/``), while
declared data inputs stay read-only (root-owned, mode 0444, in sticky folders the rerun
cannot rename or empty). Hermetic means the rerun cannot reach the network, the host or
the store, not that it cannot write in its working directory. ``prepare`` also computes
the replayed environment: the recorded allowlisted variables, PYTHONHASHSEED, thread
counts (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to the torch thread count seen in the
original process), ``CUBLAS_WORKSPACE_CONFIG``, and the probe. ``execute`` runs it in the
built image through the docker SDK (no network, read-only root, tmpfs /tmp, uid 1000, all
capabilities dropped, no-new-privileges, pids/memory/time limits, labelled and always
removed) or, with the venv backend, as a subprocess (uid 1000 and no network when root;
before it starts, the rerun user must be able to read the interpreter, the venv and the
tree, and must not be able to read the store). What the sandbox was is returned in
``Executed.notes`` and stored with the rerun record. Plans are immutable.

``SKIPPABLE`` settings exist for one purpose: tests that prove a setting matters leave it
out on purpose (``--skip-replay``, hidden); a certificate states any skipped setting.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from auditor.core.errors import CouldNotVerify, IntegrityError
from auditor.core.schema import RunRecord
from auditor.env.access import RERUN_UID, blocked_for
from auditor.record.capture.data import check_unchanged
from auditor.record.capture.git import rebuild_tree
from auditor.record.capture.secrets import REDACTED
from auditor.record.container import API_LIB, HOST_SPECIFIC, PACKAGE_DIR, PROBE_LIB
from auditor.record.outputs import Snapshot
from auditor.record.wrap import PROBE_PATH
from auditor.store import RunStore

SKIPPABLE = frozenset({"pythonhashseed", "threads", "env"})
_PY = re.compile(r"^(?:python|pypy)[0-9.]*$")
DOCKER_SANDBOX = (
    "docker backend: no network (network_mode none), read-only image, uid 1000, all "
    "capabilities dropped, no-new-privileges; neither the store nor the host is mounted"
)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a rerun."""

    timeout_s: int = 3600
    mem_limit: str = "8g"
    pids_limit: int = 512
    gpus: int = 0


@dataclass(frozen=True)
class Prepared:
    """A rerun ready to execute."""

    record: RunRecord
    workdir: Path  # holds tree/ and probe/
    tree: Path
    cwd: Path  # inside tree
    argv: tuple[str, ...]
    env: Mapping[str, str]
    snapshot: Snapshot
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executed:
    """What a rerun did, and the sandbox it did it in (``notes``, stored with the rerun)."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    probe_dir: Path
    seen_as: str  # the tree's path as the rerun saw it: /work in a container
    notes: tuple[str, ...] = ()


def prepare(
    store: RunStore,
    record: RunRecord,
    workdir: Path,
    *,
    skip_replay: frozenset[str] = frozenset(),
    pass_env: tuple[str, ...] = (),
) -> Prepared:
    """Rebuild the tree, check inputs, and compute argv and environment."""
    unknown = skip_replay - SKIPPABLE
    if unknown:
        raise CouldNotVerify(f"unknown setting(s) to skip: {', '.join(sorted(unknown))}")
    if record.code is None:
        raise CouldNotVerify(f"run {record.identity.id} has no captured code to rerun")
    tree = rebuild_tree(
        record.code, {a.name: a for a in record.artifacts}, store.blobs, workdir / "tree"
    )
    _check_inputs(record, tree)
    cwd = (tree / record.command.cwd).resolve()
    if not cwd.is_relative_to(tree.resolve()):
        raise IntegrityError(f"recorded working directory {record.command.cwd!r} escapes the tree")
    cwd.mkdir(parents=True, exist_ok=True)
    hand_over(tree, _protected(record, tree))
    (workdir / "probe").mkdir()
    os.chmod(workdir / "probe", 0o777)
    env = replay_env(record, skip_replay, pass_env)
    return Prepared(
        record=record,
        workdir=workdir,
        tree=tree,
        cwd=cwd,
        argv=tuple(_argv(record)),
        env=MappingProxyType(env),  # read-only: the plan is immutable, its mapping too
        snapshot=Snapshot.take(cwd, []),
    )


def _check_inputs(record: RunRecord, tree: Path) -> None:
    """Every recorded input must still match its fingerprint; bring untracked ones in."""
    assert record.code is not None
    for data in record.data:
        inside = tree / data.path
        source = inside if inside.exists() else _host_path(record, data.path)
        reason = check_unchanged(data, source)
        if reason:
            raise CouldNotVerify(reason, hint="restore the recorded input or record a new run")
        if not inside.exists() and inside.resolve().is_relative_to(tree.resolve()):
            inside.parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            copy(source, inside)  # git-ignored data: copied in, then locked down with the tree


def _host_path(record: RunRecord, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(record.code.root) / p  # type: ignore[union-attr]


def _protected(record: RunRecord, tree: Path) -> list[Path]:
    """The declared inputs that lie inside the tree: they stay read-only."""
    root = tree.resolve()
    found = []
    for data in record.data:
        inside = (tree / data.path).resolve()
        if inside != root and inside.is_relative_to(root) and inside.exists():
            found.append(inside)
    return found


def hand_over(tree: Path, protected: list[Path]) -> None:
    """Give the rerun user its copy of the tree; declared inputs stay read-only.

    As root: everything belongs to the rerun user, except declared inputs (files root-owned
    0444, folders root-owned sticky 1775 so new files may be added but no recorded one
    changed, renamed or removed) and the folders above them (root-owned, sticky, group
    writable: the rerun may create and replace its own files there, never the inputs).
    Not root (no chown): code is made world-writable and inputs read-only the same way.
    """
    root = tree.resolve()
    inputs = [p.resolve() for p in protected]
    above = {a for p in inputs for a in p.parents if a == root or a.is_relative_to(root)}
    as_root = os.geteuid() == 0

    def is_input(path: Path) -> bool:
        return any(path == p or path.is_relative_to(p) for p in inputs)

    def folder(path: Path) -> None:
        if is_input(path) or path in above:
            os.chmod(path, 0o1775 if as_root else 0o1777)
            if as_root:
                os.chown(path, 0, RERUN_UID)
        elif as_root:
            os.chown(path, RERUN_UID, RERUN_UID)
            os.chmod(path, 0o755)
        else:
            os.chmod(path, 0o777)

    for dirpath, _dirs, files in os.walk(root):
        here = Path(dirpath)
        folder(here)
        for name in files:
            path = here / name
            if path.is_symlink():
                if as_root:
                    os.lchown(path, 0 if is_input(path) else RERUN_UID, RERUN_UID)
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if is_input(path):
                os.chmod(path, 0o444)
                if as_root:
                    os.chown(path, 0, 0)
            elif as_root:
                os.chown(path, RERUN_UID, RERUN_UID)
                os.chmod(path, (mode | 0o600) & 0o755)
            else:
                os.chmod(path, (mode | 0o666) & 0o777)


def replay_env(
    record: RunRecord, skip: frozenset[str], pass_env: tuple[str, ...]
) -> dict[str, str]:
    """The environment variables the rerun gets."""
    env: dict[str, str] = {}
    if "env" not in skip:
        env = {
            k: v
            for k, v in record.environment.env_vars.items()
            if v != REDACTED and k not in HOST_SPECIFIC and not k.startswith("AUDITOR_")
        }
    for name in pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    seeds, det = record.seeds, record.determinism
    if "pythonhashseed" in skip:
        env.pop("PYTHONHASHSEED", None)
    elif seeds.pythonhashseed:
        env["PYTHONHASHSEED"] = seeds.pythonhashseed
    if "threads" in skip:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.pop(name, None)
    elif det and det.torch_num_threads:
        _replay_threads(env, det.torch_num_threads)
    if det and det.cublas_workspace_config:
        env["CUBLAS_WORKSPACE_CONFIG"] = det.cublas_workspace_config
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _replay_threads(env: dict[str, str], recorded: int) -> None:
    """Make torch use the recorded thread count. Recorded OMP/MKL variables are already in
    ``env``; otherwise OMP_NUM_THREADS is set only when this host's default (one thread per
    usable core) would differ, so a matching rerun keeps the original's environment."""
    if "OMP_NUM_THREADS" in env or "MKL_NUM_THREADS" in env:
        return
    if recorded != len(os.sched_getaffinity(0)):
        env["OMP_NUM_THREADS"] = str(recorded)


def _argv(record: RunRecord) -> list[str]:
    argv = list(record.command.argv)
    if any(REDACTED in a for a in argv):
        raise CouldNotVerify(
            "the recorded command line holds a redacted secret, so it cannot be replayed exactly",
            hint="pass secrets through the environment and the policy's pass_env instead of argv",
        )
    if argv and _PY.match(Path(argv[0]).name):
        argv[0] = "python"
    return argv


# -- execution ---------------------------------------------------------------------------


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
                labels={"auditor.run": prep.record.identity.id, "auditor.attempt": attempt},
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
        with contextlib.suppress(docker.errors.DockerException):
            if container is not None:
                container.remove(force=True)
            for left in client.containers.list(
                all=True, filters={"label": f"auditor.attempt={attempt}"}
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


_HIDE = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'mount -t tmpfs -o size=4k,mode=000 auditor-hidden "$1" 2>/dev/null || '
    '{ echo "auditor: cannot hide $1 from the rerun" >&2; exit 125; }; '
    'shift; n=$((n-1)); done; exec "$@"'
)


def venv_sandbox(hide: tuple[Path, ...] = ()) -> tuple[list[str], bool, str]:
    """How a venv rerun is confined here: (argv prefix, switch user in Popen, note).

    As root with ``unshare`` and ``setpriv``: a new network namespace (loopback only) and a
    new mount namespace in which every folder of ``hide`` (the store, the original
    repository) is covered by an empty mode-000 tmpfs, then uid 1000 with no groups and no
    new privileges."""
    if os.geteuid() != 0:
        return [], False, "venv backend: network not removed and code writable (not root)"
    if shutil.which("unshare") and shutil.which("setpriv"):
        uid = str(RERUN_UID)
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]
        folders = [str(p) for p in hide]
        hidden = f"; hidden from it: {', '.join(folders)}" if folders else ""
        return (["unshare", "--net", "--mount", "--", "sh", "-c", _HIDE, "sh",
                 str(len(folders)), *folders, *drop, "--"], False,
                f"venv backend: network removed with unshare --net; uid {RERUN_UID}{hidden}")
    return [], True, (f"venv backend: network not removed (unshare or setpriv missing); "
                      f"uid {RERUN_UID}")


def execute_venv(
    prep: Prepared, env_dir: Path, limits: Limits, on_line: Callable[[int, str], None],
    *, hidden: tuple[Path, ...] = (), also_hidden: tuple[Path, ...] = (),
) -> Executed:
    """Run with the venv's interpreter on this host (weaker isolation, said in the notes).

    As root, the network namespace is made while still root (``unshare --net``) and the
    rerun then drops to uid 1000 with ``setpriv`` (no groups, no new privileges): an
    unprivileged ``unshare`` is refused by the kernel. Before it starts, uid 1000 must be
    able to read the interpreter, the venv, the probe and the tree (else CouldNotVerify
    naming the path) and must not be able to read any of ``hidden`` (the store; covered
    by a tmpfs in its mount namespace, and closed by its modes, else CouldNotVerify);
    ``also_hidden`` (the original repository) is covered where possible. The rerun
    gets a process group of its own, killed whole on timeout or interrupt.
    """
    probe_lib, library = _private_copies(prep.workdir)
    python = env_dir / "bin" / "python"
    needed = [prep.tree, prep.cwd, env_dir, python, probe_lib, library, prep.workdir / "probe"]
    hide = tuple(_hideable((*hidden, *also_hidden), needed))
    prefix, switch_user, note = venv_sandbox(hide)
    notes = [note]
    if prefix or switch_user:
        check_readable_by_rerun_user(needed)
        notes += [check_hidden_from_rerun_user(p, covered=p.resolve() in hide) for p in hidden]
        notes += [f"venv backend: {p} is readable by uid {RERUN_UID} (not hidden)"
                  for p in also_hidden if p.resolve() not in hide and blocked_for(p) is None]
    argv = list(prep.argv)
    if argv and argv[0] == "python":
        argv[0] = str(python)
    env = {
        **prep.env,
        "PATH": f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": f"{probe_lib}:{library}",
        "AUDITOR_PROBE_DIR": str(prep.workdir / "probe"),
        "AUDITOR_RUN_ID": prep.record.identity.id,
        "HOME": tempfile.gettempdir(),
        "VIRTUAL_ENV": str(env_dir),
    }
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*prefix, *argv],
            cwd=prep.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=RERUN_UID if switch_user else None,
            group=RERUN_UID if switch_user else None,
            extra_groups=[] if switch_user else None,
            process_group=0,
        )
    except OSError as exc:
        raise CouldNotVerify(f"the rerun could not start: {exc}",
                             hint="check the built venv (audit build --backend venv)") from exc
    out: list[str] = []
    err: list[str] = []
    from auditor.record.childio import pump

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, None, out, on_line), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, None, err, None), daemon=True),
    ]
    for t in threads:
        t.start()

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    try:
        code = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        kill_group()
        raise CouldNotVerify(
            f"timeout: the rerun ran past {limits.timeout_s} s",
            hint="raise the limit with --timeout",
        ) from None
    except BaseException:
        kill_group()
        raise
    finally:
        for t in threads:
            t.join(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    kill_group()  # anything it left running in its group goes before its files are read
    return Executed(
        code, "".join(out), "".join(err), time.monotonic() - started, prep.workdir / "probe",
        seen_as=str(prep.tree), notes=tuple(notes),
    )


def _private_copies(workdir: Path) -> tuple[Path, Path]:
    """The probe and the auditor package copied where the rerun user can read them (the
    installed package may sit in a folder it cannot enter, such as a 0700 clone)."""
    probe_lib = workdir / "probe-lib"
    lib = workdir / "lib"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if not probe_lib.exists():
        shutil.copytree(PROBE_PATH, probe_lib, ignore=ignore)
    if not (lib / "auditor").exists():
        shutil.copytree(PACKAGE_DIR, lib / "auditor", ignore=ignore)
    for dirpath, _dirs, files in os.walk(workdir / "lib"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)
    for dirpath, _dirs, files in os.walk(probe_lib):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)
    return probe_lib, lib


def check_readable_by_rerun_user(paths: list[Path]) -> None:
    """CouldNotVerify naming the first path the rerun user cannot read."""
    for path in paths:
        blocked = blocked_for(path)
        if blocked is not None:
            raise CouldNotVerify(
                f"the rerun user (uid {RERUN_UID}) cannot read {path}: {blocked} is closed to it",
                hint="make that folder traversable (chmod o+x) or set AUDITOR_VENV_ROOT / "
                "TMPDIR to a folder it can enter",
            )


def _hideable(hidden: tuple[Path, ...], needed: list[Path]) -> list[Path]:
    """The folders of ``hidden`` that can be covered without covering what the rerun
    needs (a venv or scratch folder inside the repository stays visible)."""
    out = []
    for path in hidden:
        real = path.resolve()
        if not real.is_dir() or real == Path("/"):
            continue
        if any(n.resolve() == real or n.resolve().is_relative_to(real) for n in needed):
            continue
        out.append(real)
    return out


def check_hidden_from_rerun_user(path: Path, *, covered: bool = False) -> str:
    """A note when ``path`` (the store) is closed to the rerun user (by its modes, or
    ``covered`` by a tmpfs in the rerun's mount namespace); CouldNotVerify when neither
    (a rerun that can read the store could copy the original's outputs)."""
    closed = blocked_for(path) is not None
    if covered:
        how = "hidden and not readable" if closed else "hidden"
        return f"venv backend: the store {path} is {how} (uid {RERUN_UID})"
    if not closed:
        raise CouldNotVerify(
            f"the store {path} is readable by the rerun user (uid {RERUN_UID}), who could "
            "copy the original run's outputs from it",
            hint=f"chmod 700 {path}, or verify with --backend docker",
        )
    return f"venv backend: the store {path} is not readable by uid {RERUN_UID} (checked)"


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as SIGINT does), so the rerun's container, process
    group and scratch folder are removed by the ``finally`` blocks on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A work directory the rerun user can enter (the tree's parent must be traversable)."""
    tmp = tempfile.TemporaryDirectory(prefix="auditor-rerun-")
    os.chmod(tmp.name, 0o755)
    return tmp


def cleanup(workdir: Path) -> None:
    """Remove a rerun's work directory even though its files were made read-only."""
    for dirpath, dirs, files in os.walk(workdir):
        for name in dirs + files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
    shutil.rmtree(workdir, ignore_errors=True)
