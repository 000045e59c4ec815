"""``audit record -- CMD``: record any command without code changes.

The child runs with the probe on its PYTHONPATH, ``AUDITOR_RUN_ID``/``AUDITOR_PROBE_DIR``
set (so the Python API attaches to this run), and a ``PYTHONHASHSEED`` chosen and recorded
when none was set. Its stdout and stderr stream live to ours and are stored (secrets
scrubbed); JSON lines on stdout (``{"step": 3, "loss": 0.41}``) and ``--metrics-regex``
matches become metrics, flushed to the store as they arrive so a crash keeps them.
SIGINT/SIGTERM are forwarded to the child. The child's exit code is the result.

With ``--in-image REF`` the child is ``docker run`` of the command in that image
(``auditor.record.container``): the same paths, probe and API, its environment passed by
name, its interpreter examined inside the image.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets as pyrandom
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.core.errors import EngineUnavailable, InputError
from auditor.core.schema import (
    ArtifactRef,
    Determinism,
    Environment,
    MetricsSummary,
    RunRecord,
    Seeds,
    new_run_id,
)
from auditor.record import concurrent, container, outputs, session
from auditor.record.capture import determinism as det
from auditor.record.capture import git as git_capture
from auditor.record.capture.secrets import redact_params, redacted_env_value
from auditor.record.capture.streams import OwnLogs, find_own_logs
from auditor.record.childio import ingest_api, pump, store_logs
from auditor.record.outputs import DEFAULT_MAX_OUTPUT_BYTES
from auditor.record.params import combined, normalised, read_probe_params
from auditor.store import MetricPoint, RunStore, store_dir_of

PROBE_PATH = container.PROBE_PATH


@dataclass(frozen=True)
class WrapOptions:
    """What ``audit record`` was asked to do (immutable, as every plan of a run is)."""

    argv: tuple[str, ...]
    name: str | None = None
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    metrics_regex: str | None = None
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    tags: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    code_dir: Path | None = None
    reproduces: str | None = None
    cwd: Path = field(default_factory=Path.cwd)
    env: Mapping[str, str] | None = None
    quiet: bool = False
    allow_outside_tree: bool = False
    image: str | None = None  # --in-image: run the command in a container of this image
    network: str = "none"  # the container's network (with image)


@dataclass
class WrapResult:
    """The finished record and the exit code to pass through."""

    record: RunRecord
    exit_code: int
    malformed_metrics: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()  # what the store could not take ("name: why")
    rescued: Path | None = None  # where the logs went when the store could not take them


MAX_KEYS_PER_LINE = 1_000  # metric keys taken from one stdout line
MAX_KEYS_PER_RUN = 10_000  # distinct metric keys of one run
MAX_WARNINGS = 100  # metric warnings kept (the rest counted)


class MetricSink:
    """Parses stdout lines into metric points and flushes them to the store in batches.

    A line gives at most ``MAX_KEYS_PER_LINE`` keys and a run at most ``MAX_KEYS_PER_RUN``
    distinct keys (known keys keep their points); each cap, once reached, is reported once
    (``capped``: a warning line and a note in the record)."""

    def __init__(self, store: RunStore, run_id: str, regex: re.Pattern[str] | None) -> None:
        self.store, self.run_id, self.regex = store, run_id, regex
        self.buffer: list[MetricPoint] = []
        self.final: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self.points = 0
        self.warnings: list[str] = []
        self.malformed: list[str] = []  # metrics lines that are not JSON
        self.capped: dict[str, str] = {}  # which cap -> the one report of it
        self.dropped_warnings = 0
        self.dropped_malformed = 0
        self.lock = threading.Lock()
        self.last_flush = time.monotonic()

    def feed(self, lineno: int, line: str) -> None:
        """Take one stdout line."""
        text = line.strip()
        # A metrics line is a JSON object: `{"` opens it (a line cut short, with no closing
        # brace, is a malformed one). Python reprs (`{'lr': 0.1}`) are ordinary output.
        if text.startswith('{"'):
            self._json(lineno, text)
        elif self.regex is not None and (m := self.regex.search(text)):
            groups = m.groupdict()
            step = groups.pop("step", None)
            self._add({k: v for k, v in groups.items() if v is not None}, step, lineno)
        if time.monotonic() - self.last_flush > 2.0:
            self.flush()

    def _json(self, lineno: int, text: str) -> None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if len(self.malformed) < MAX_WARNINGS:
                self.malformed.append(
                    f"stdout line {lineno} is a metrics line but not valid JSON "
                    f"({exc.msg} at column {exc.colno})"
                )
            else:
                self.dropped_malformed += 1
            return
        if isinstance(data, dict):
            step = data.pop("step", None)
            numbers = (
                (k, v) for k, v in data.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            )
            values = dict(itertools.islice(numbers, MAX_KEYS_PER_LINE + 1))
            if len(values) > MAX_KEYS_PER_LINE:
                values.popitem()
                self._cap("line", f"stdout line {lineno} holds more than {MAX_KEYS_PER_LINE} "
                          f"metric keys; the first {MAX_KEYS_PER_LINE} were taken (a line "
                          f"gives at most {MAX_KEYS_PER_LINE}; reported once)")
            self._add(values, step, lineno)

    def _cap(self, which: str, message: str) -> None:
        self.capped.setdefault(which, message)

    def _warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.dropped_warnings += 1

    def _add(self, values: Mapping[str, Any], step: Any, lineno: int) -> None:
        now = time.time()
        for key, raw in values.items():
            if key not in self.steps and len(self.steps) >= MAX_KEYS_PER_RUN:
                self._cap("run", f"the run printed more than {MAX_KEYS_PER_RUN} distinct metric "
                          f"keys; new keys from stdout line {lineno} on were not taken (a run "
                          f"has at most {MAX_KEYS_PER_RUN}; reported once)")
                continue
            value = _to_float(raw)
            if value is None:
                self._warn(
                    f"stdout line {lineno}: metric {key!r} value {raw!r} is not a number; ignored"
                )
                continue
            at = _to_step(step, self.steps.get(key, -1) + 1)
            self.steps[key] = at
            self.final[key] = value
            with self.lock:
                self.buffer.append(MetricPoint(key, at, value, now))
                if len(self.buffer) >= 1000:
                    self._flush_locked()

    def flush(self) -> None:
        """Store what is buffered."""
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        batch, self.buffer = self.buffer, []
        self.last_flush = time.monotonic()
        self.points += self.store.add_metrics(self.run_id, batch)


def _to_float(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)  # "0.41", "1e-3", "nan", "inf", "-Infinity"
        except ValueError:
            return None
    return None


def _to_step(step: Any, default: int) -> int:
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    if isinstance(step, str) and step.strip().lstrip("-").isdigit():
        return int(step)
    if isinstance(step, float) and step.is_integer():
        return int(step)
    return default


def compile_regex(pattern: str | None) -> re.Pattern[str] | None:
    """Validate ``--metrics-regex``: it needs named groups (``step`` plus metric names)."""
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InputError(f"--metrics-regex {pattern!r}: {exc}") from None
    if not set(regex.groupindex) - {"step"}:
        raise InputError(
            f"--metrics-regex {pattern!r} has no named group for a metric",
            hint="e.g. 'epoch (?P<step>\\d+) loss (?P<loss>\\S+)'",
        )
    return regex


def parse_argv_params(argv: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs and bare ``--flag`` as params."""
    params: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            params[key] = _coerce(value) if (eq or value) else True
        i += 1
    return params


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def child_env(
    base: Mapping[str, str], record: RunRecord, probe_dir: Path, store_url: str
) -> dict[str, str]:
    """The child's environment: the user's plus hash seed, probe and run ids."""
    env = dict(base)
    env["PYTHONHASHSEED"] = env.get("PYTHONHASHSEED") or record.seeds.pythonhashseed or "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROBE_PATH), env.get("PYTHONPATH")) if p)
    env.update(
        AUDITOR_RUN_ID=record.identity.id, AUDITOR_PROBE_DIR=str(probe_dir), AUDITOR_STORE=store_url
    )
    return env


def record_command(store: RunStore, opts: WrapOptions) -> WrapResult:
    """Run ``opts.argv`` under recording and return the stored record and exit code."""
    if not opts.argv:
        raise InputError("no command given", hint="usage: audit record [OPTIONS] -- CMD ...")
    try:
        with _Signals() as signals:
            return _record(store, opts, signals)
    except _Interrupted as stop:  # before the run was stored: nothing to mark
        raise SystemExit(128 + stop.signum) from None


def _record(store: RunStore, opts: WrapOptions, signals: _Signals) -> WrapResult:
    regex = compile_regex(opts.metrics_regex)
    env = dict(opts.env if opts.env is not None else os.environ)
    if opts.network != "none" and opts.image is None:
        raise InputError("--network applies only with --in-image")
    # resolved before anything is captured or stored: a missing image leaves nothing
    image = container.resolve(opts.image, env, opts.network) if opts.image else None
    env.setdefault("PYTHONUNBUFFERED", "1")  # live streaming; recorded and replayed alike
    chosen = "PYTHONHASHSEED" not in env
    if chosen:
        env["PYTHONHASHSEED"] = str(pyrandom.randbelow(2**32 - 1) + 1)
    store_dir = store_dir_of(store)
    own_logs = find_own_logs()
    plan = session.Plan(
        name=opts.name,
        argv=list(opts.argv),
        cwd=opts.cwd,
        mode="wrap",
        inputs=opts.inputs,
        outputs=opts.outputs,
        allow_outside_tree=opts.allow_outside_tree,
        env=env,
        tags=opts.tags,
        reproduces=opts.reproduces,
        env_allow=opts.env_allow,
        code_dir=opts.code_dir,
        params=redact_params(normalised(parse_argv_params(list(opts.argv[1:])))),
        metrics_regex=opts.metrics_regex,
        own_logs=own_logs,
        image=image,
    )
    session.outside_tree(plan)  # refuse before anything is captured or run
    run_id = new_run_id()
    probe = Path(tempfile.mkdtemp(prefix="auditor-probe-"))
    # held from before the snapshot: a recording beside this one sees this one's window
    lease = concurrent.register(run_id, opts.cwd, probe)
    try:
        snapshot = None if opts.outputs else outputs.Snapshot.take(opts.cwd, [store_dir])
        record, code = session.begin_capture(store, plan, store_dir, run_id=run_id)
    except BaseException:
        concurrent.release(lease)
        shutil.rmtree(probe, ignore_errors=True)
        raise
    record = record.model_copy(
        update={
            "seeds": Seeds(
                pythonhashseed=redacted_env_value("PYTHONHASHSEED", env["PYTHONHASHSEED"]),
                pythonhashseed_chosen_by_auditor=chosen,
            )
        }
    )
    try:
        child = _Child(store, opts, record, env, probe, code, own_logs, image, lease)
        return _run_child(child, regex, snapshot, signals)
    except _Interrupted as stop:
        session.finish(store, record, status="killed", exit_code=-stop.signum, updates={
            "not_captured": {**record.not_captured,
                             "end": f"audit record was stopped by signal {stop.signum} "
                                    "before the command started"}})
        raise SystemExit(128 + stop.signum) from None
    finally:
        concurrent.release(lease)  # publishes what this run wrote, from the probe folder
        shutil.rmtree(probe, ignore_errors=True)


@dataclass
class _Child:
    """What a recording carries from start to finish."""

    store: RunStore
    opts: WrapOptions
    record: RunRecord
    env: dict[str, str]
    probe: Path
    code: git_capture.CodeCapture
    own_logs: OwnLogs
    image: container.Image | None = None
    lease: concurrent.Lease | None = None


class _Interrupted(BaseException):
    """SIGINT/SIGTERM before the command started."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)


class _Signals:
    """SIGINT and SIGTERM during the whole recording: before the command starts they stop
    auditor cleanly (its temporary folders removed, the run marked killed); while it runs
    they are forwarded to it; once it has ended they wait until the record is stored."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.forwarded: int | None = None  # the last signal forwarded to the command
        self.finishing = False
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.pending is not None and _exc[0] is None:
            raise SystemExit(128 + self.pending)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.finishing:
            self.pending = signum
        elif self.proc is not None:
            self.forwarded = signum
            self.proc.send_signal(signum)
        else:
            raise _Interrupted(signum)


def _run_child(
    child: _Child,
    regex: re.Pattern[str] | None,
    snapshot: outputs.Snapshot | None,
    signals: _Signals,
) -> WrapResult:
    store, opts, record = child.store, child.opts, child.record
    sink = MetricSink(store, record.identity.id, regex)
    if child.image is not None:
        return _run_in_image(child, child.image, sink, snapshot, signals)
    try:
        proc = subprocess.Popen(
            opts.argv,
            cwd=opts.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(child.env, record, child.probe, store.url),
        )
    except FileNotFoundError:
        session.finish(store, record, status="failed", exit_code=127, updates={})
        raise InputError(f"command not found: {opts.argv[0]}") from None
    except PermissionError:
        session.finish(store, record, status="failed", exit_code=126, updates={})
        raise InputError(f"command not executable: {opts.argv[0]}") from None
    signals.proc = proc
    code, out, err = _stream(proc, opts.quiet, sink)
    signals.finishing = True
    return _finish(child, proc.pid, code, sink, out, err, snapshot, _flushed(sink))


def _stream(
    proc: subprocess.Popen[bytes], quiet: bool, sink: MetricSink
) -> tuple[int, list[str], list[str]]:
    """Stream the child's stdout (metrics parsed) and stderr live; its exit code."""
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(
            target=pump,
            args=(proc.stdout, None if quiet else sys.stdout, out, sink.feed),
            daemon=True,
        ),
        threading.Thread(
            target=pump,
            args=(proc.stderr, None if quiet else sys.stderr, err, None),
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    code = proc.wait()
    for t in threads:
        t.join()
    for pipe in (proc.stdout, proc.stderr):  # read to the end by the pumps: closed now
        if pipe is not None:
            pipe.close()
    return code, out, err


def _flushed(sink: MetricSink) -> list[str]:
    """Flush the metrics; what the store could not take."""
    failures: list[str] = []
    try:
        sink.flush()
    except Exception as exc:  # noqa: BLE001 - the record is still stored below, saying so
        failures.append(f"metrics: {exc}")
    return failures


def _run_in_image(
    child: _Child,
    image: container.Image,
    sink: MetricSink,
    snapshot: outputs.Snapshot | None,
    signals: _Signals,
) -> WrapResult:
    """The command in a container of ``image``, through the docker CLI (see
    ``auditor.record.container`` for why the CLI): its own process group, so a terminal's
    Ctrl-C reaches auditor alone and is forwarded once (then proxied into the container);
    no stdin."""
    store, opts, record = child.store, child.opts, child.record
    inner = container.container_env(child_env(child.env, record, child.probe, store.url))
    tree = session.project_tree(opts.cwd, opts.code_dir)
    full = [(p if p.is_absolute() else opts.cwd / p).resolve() for p in opts.outputs]
    argv = container.run_argv(
        image, list(opts.argv), cwd=opts.cwd.resolve(), tree=tree, probe=child.probe,
        names=sorted(inner), run_id=record.identity.id,
        # declared inputs and outputs outside the tree (--allow-outside-tree) at their paths
        read_only=[(p if p.is_absolute() else opts.cwd / p).resolve() for p in opts.inputs],
        writable=[_output_folder(p) for p in full if not p.is_relative_to(tree)],
    )
    # the values travel in the CLI's environment, never on its command line
    env = {**container.cli_env(child.env), **inner}
    try:
        try:
            proc = subprocess.Popen(argv, cwd=opts.cwd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    process_group=0)
        except OSError as exc:
            session.finish(store, record, status="failed", exit_code=127, updates={})
            raise EngineUnavailable(f"the docker CLI did not start: {exc}") from None
        signals.proc = proc
        code, out, err = _stream(proc, opts.quiet, sink)
    finally:
        container.remove_left(image, child.env)
    signals.finishing = True
    if signals.forwarded is not None and code == 128 + signals.forwarded:
        code = -signals.forwarded  # docker reports death by signal N as 128 + N
    last = err[-1].strip() if err and not "".join(out).strip() else ""
    if code == 125 and last.startswith("docker: "):
        session.finish(store, record, status="failed", exit_code=125, updates={})
        raise EngineUnavailable(
            f"the container did not start: {last.removeprefix('docker: ')}",
            hint="check the image and the mounts (`docker run` said so above)")
    if code in (126, 127) and last.startswith("[FATAL tini") and " exec " in last:
        session.finish(store, record, status="failed", exit_code=code, updates={})
        what = "not found" if code == 127 else "not executable"
        raise InputError(f"command {what} in image {image.ref}: {opts.argv[0]}",
                         hint="name it as the image's PATH finds it, e.g. python")
    return _finish(child, proc.pid, code, sink, out, err, snapshot, _flushed(sink))


def _output_folder(path: Path) -> Path:
    """The folder a declared output outside the tree is written in (made when missing):
    the output itself when a folder, else its parent (a file is replaced by renaming)."""
    folder = path if path.is_dir() else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _finish(
    child: _Child,
    pid: int,
    code: int,
    sink: MetricSink,
    out: list[str],
    err: list[str],
    snapshot: outputs.Snapshot | None,
    failures: list[str],
) -> WrapResult:
    store, opts, record, env, probe = child.store, child.opts, child.record, child.env, child.probe
    own_logs = child.own_logs.merged(find_own_logs())  # `| tee` may open its file late
    notes = dict(record.not_captured)
    capture, changed = git_capture.without_changed(child.code, Path(child.code.code.root))
    notes.update(capture.notes)
    dropped = {a.name for a in child.code.artifacts} - {a.name for a in capture.artifacts}
    artifacts = [a for a in record.artifacts if a.name not in dropped]
    logs, rescued = store_logs(store, record.identity.id, "".join(out), "".join(err), failures)
    artifacts += logs
    api = ingest_api(store, record.identity.id, probe, sink, failures=failures)
    produced, warnings = outputs.collect(
        store.blobs, list(opts.outputs), snapshot, opts.cwd, opts.max_output_bytes,
        own_logs=own_logs, notes=notes, failures=failures,
        claim=concurrent.claimer(child.lease, opts.cwd),
    )
    artifacts += produced + api["artifacts"]
    # in a container the command's pid is its own; its parent there is docker-init
    obs = (det.read_probe(probe, None, parent_pid=container.INIT_PARENT_PID)
           if child.image else det.read_probe(probe, pid))
    determinism, seeds, environment = observed(record, obs, env, api)
    params = probe_params(probe, record.params, notes)
    if obs is None:
        notes["determinism"] = (
            "the command was not observed from inside (not Python, or it "
            "was killed): only environment variables were recorded"
        )
    if failures:
        notes["store"] = "not stored: " + "; ".join(failures) + (
            f" (the logs are kept in {rescued})" if rescued else "")
    if sink.dropped_warnings:
        sink.warnings.append(f"and {sink.dropped_warnings} more metric warnings")
    if sink.dropped_malformed:
        sink.malformed.append(f"and {sink.dropped_malformed} more metrics lines that are "
                              "not valid JSON")
    for which, message in sink.capped.items():
        notes[f"metrics.cap.{which}"] = message
    metrics = MetricsSummary(
        final=sink.final,
        points=sink.points,
        warnings=tuple(sink.warnings + list(sink.capped.values()) + sink.malformed + warnings
                       + api["warnings"]),
    )
    status = "finished" if code == 0 else ("killed" if code < 0 else "failed")
    changed_data = {d.path for d in child.code.data} - {d.path for d in capture.data}
    final = session.finish(
        store,
        record,
        status=status,
        exit_code=code,
        updates={
            "params": {**params, **api["params"]},
            "seeds": seeds,
            "determinism": determinism,
            "metrics": metrics,
            "artifacts": tuple(_dedupe(artifacts)),
            "checkpoints": tuple(api["checkpoints"]),
            "environment": environment,
            "not_captured": notes,
            "code": capture.code if changed else record.code,
            "data": tuple(d for d in record.data
                          if not (d.origin == "untracked" and d.path in changed_data)),
        },
    )
    # a garbage project lock is worth a warning; the derived lock's note is in the record
    lock = final.environment.python.lock if final.environment.python else None
    lock_note = notes.get("environment.python.lock") if lock and lock.origin == "project" else None
    for line in (sink.warnings + list(sink.capped.values()) + warnings
                 + ([lock_note] if lock_note else [])):
        print(f"warning: {line}", file=sys.stderr)
    return WrapResult(
        record=final,
        exit_code=code if code >= 0 else 128 - code,
        malformed_metrics=tuple(sink.malformed),
        failures=tuple(failures),
        rescued=rescued,
    )


def probe_params(probe: Path, typed: dict[str, Any], notes: dict[str, str],
                 rebase: tuple[str, str] | None = None) -> dict[str, Any]:
    """The run's params: argparse's whole namespace as the probe saw it inside the command
    (secrets redacted; where each value came from noted under ``not_captured["params"]``),
    else ``typed``, the command line's (already normalised and redacted). ``rebase``
    (the rerun's tree path, the original's) maps a path-valued default back to the
    original's tree, so a rerun's params compare like for like. Shared by ``audit record``
    and the rerun's record."""
    found = read_probe_params(probe)
    extras = normalised(parse_argv_params(list(found.extras))) if found else {}
    params, note = combined(found, typed, extras)
    if note is None:
        return typed
    notes["params"] = note
    if rebase is not None:
        params = {k: _rebased(v, *rebase) for k, v in params.items()}
    return dict(redact_params(params))


def _rebased(value: Any, seen_as: str, root: str) -> Any:
    if isinstance(value, str) and seen_as and seen_as != root:
        return value.replace(seen_as.rstrip("/") + "/", root.rstrip("/") + "/") if (
            value != seen_as) else root
    if isinstance(value, list):
        return [_rebased(v, seen_as, root) for v in value]
    return value


def observed(record: RunRecord, obs: dict[str, Any] | None, env: dict[str, str],
             api: dict[str, Any]) -> tuple[Determinism, Seeds, Environment]:
    """What the probe saw inside the command (``obs``; None when it saw nothing) and what the
    API reported (``api``), as the record's determinism, seeds and environment: shared by
    ``audit record`` and the rerun's record."""
    determinism = det.from_observation(obs, env) if obs else det.environment_only(env)
    seeds = record.seeds.model_copy(
        update={
            "seed": api["seed"],
            "seeded": tuple(api["seeded"]),
            "torch_initial_seed": (obs or {}).get("torch_initial_seed"),
        }
    )
    environment = record.environment.model_copy(
        update={"accelerators": session.with_cuda_stack(record.environment.accelerators, obs)}
    )
    return determinism, seeds, environment


def _dedupe(artifacts: list[ArtifactRef]) -> list[ArtifactRef]:
    seen: dict[str, ArtifactRef] = {}
    for ref in artifacts:
        seen[ref.name] = ref
    return list(seen.values())
