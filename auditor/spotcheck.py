"""``audit verify RUN --segments Q`` and ``--resume-at STEP``: partial verifications from
the run's recorded checkpoints (issue 19 items 3-5). Composes the stages as ``verify``
does, with one change to the rerun: it starts at a checkpoint and (for a segment) stops at
the next.

Spot-check: the run's ``n`` checkpoints at steps ``s_0 < … < s_{n-1}`` cut it into ``n``
segments; segment ``k`` replays from the checkpoint at ``s_{k-1}`` (segment 0: from the
start) to the one at ``s_k``. The verifier picks ``Q`` of them (``certify.segments``) from
a seed the author cannot know in advance (the certificate-log head and fresh randomness;
``--segment-seed`` replays a recorded choice), and every checkpoint is re-hashed before
any replay (an altered or truncated file: exit 3). Each chosen segment is rerun in the
rebuilt environment (docker or venv, as a full rerun) with ``AUDITOR_RESUME_FROM`` (the
starting checkpoint, materialised into the rerun's probe folder) and ``AUDITOR_STOP_AT``
(the ending step); the checkpoint it reaches is compared with the recorded one (model and
optimizer tensors under the policy's tolerances, the non-tensor state: scheduler, RNG,
generators, param groups) and so are the metrics logged inside the segment. The verdict
is the worst segment's; the certificate says ``check = "spot-check"``, the segments, the
seed, the replayed fraction and the chance of catching 1 and 10% bad segments.

Resume equivalence: the run resumes from its checkpoint at STEP and trains to the end.
Before its first update, the restored state (``run.resume``'s snapshot) is compared with
the state recorded at STEP, and each difference is named ("optimizer state `exp_avg` of
`fc1.weight` differs"); then the final outputs, every later checkpoint and the metrics
after STEP are compared with the uninterrupted run. When everything restored matched but
the training diverged, the cause is state the checkpoint does not hold (a data-loader
generator, a sampler, an RNG the script did not hand over).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from auditor.certify import segments as seg
from auditor.certify.decide import decide, verify_result
from auditor.certify.verdict import (
    LEVEL_RANK,
    Cause,
    Level,
    SegmentOutcome,
    SpotCheck,
    Verdict,
    VerifyResult,
)
from auditor.compare import compare_runs, evidence_from_store, plot_series
from auditor.compare.difference import Difference
from auditor.compare.evidence import Evidence
from auditor.compare.metrics import compare_series
from auditor.compare.weights import compare_weight_files
from auditor.core.errors import AuditorError, CouldNotVerify, InputError
from auditor.core.policy import Policy, loosenings
from auditor.core.progress import stage, timed
from auditor.core.schema import CheckpointRef, RunRecord
from auditor.env.inputs import BuildOptions, build_for, build_notes
from auditor.env.spec import BuildResult
from auditor.record import checkpoints as ck
from auditor.rerun import lease
from auditor.rerun.backends import Backend, choose
from auditor.rerun.ingest import open_inside
from auditor.rerun.record import record_rerun, sandbox_notes
from auditor.rerun.sandbox import Limits, cleanup, interrupt_on_sigterm, prepare, scratch_dir
from auditor.store import RunStore, store_dir_of

Progress = Callable[[str], None]
RESUME_FOLDER = "resume"  # inside the rerun's probe folder
DATA_STATE_CAUSE = (
    "Everything the checkpoint restored matched the state recorded at that step, yet the "
    "resumed training diverged: the difference lies in state the checkpoint does not hold "
    "(the data-loader generator or sampler position, an RNG the script did not pass in "
    "generators=[...], a counter kept outside the model and optimizer).")
MAX_CONCURRENT = 4  # segments replayed at once, at most
JOBS_VAR = "AUDITOR_SEGMENT_JOBS"
_Done = tuple[SegmentOutcome, RunRecord]  # a replayed segment: its outcome, its rerun


class ReplayOptions(BuildOptions, Protocol):
    """What a partial check reads from the options (``verify.VerifyOptions`` has it all;
    the caller runs ``verify.preflight`` first and passes its notes)."""

    @property
    def limits(self) -> Limits: ...
    @property
    def skip_replay(self) -> frozenset[str]: ...
    @property
    def sign_key(self) -> Path | None: ...
    @property
    def certificate(self) -> Path | None: ...


# -- entry points ------------------------------------------------------------------------


def spot_check(store: RunStore, original: RunRecord, policy: Policy, opts: ReplayOptions,
               q: int, seed: str | None = None, *, notes: Sequence[str] = (),
               progress: Progress = lambda _l: None) -> VerifyResult:
    """Replay ``q`` segments of ``original`` and certify the spot-check (module doc);
    ``notes``: what ``verify.preflight`` found."""
    started = datetime.now(UTC)
    refs = _checkpoints(original, "--segments")
    n = len(refs)
    if q < 1:
        raise InputError(f"--segments {q}: replay at least one segment")
    if q > n:
        raise InputError(f"--segments {q}: run {original.identity.id} has only {n} "
                         f"segment(s) (checkpoints at steps {_steps(refs)})",
                         hint=f"use --segments {n} or fewer")
    notes = list(notes)
    _verify_all(store, refs)  # an altered checkpoint: exit 3 before any replay
    seed, source = (seed, "given") if seed else _fresh_seed(store, original)
    chosen = seg.choose_segments(seed, n, q)
    progress(f"spot-checking run {original.identity.id}: segments "
             f"{', '.join(map(str, chosen))} of {n} (seed {seed[:12]}…)")
    backend = choose(opts.backend, progress)
    acc = original.environment.accelerators
    width = _width(q, backend, opts.limits, gpus=len(acc.gpus) if acc else 0,
                   threads=_threads_of(original, opts.skip_replay))
    timings: dict[str, float] = {}
    with timed(timings, "build", progress, "environment"):
        built = build_for(store, original, opts, backend, progress)
    inflight = _InFlight()

    def segment(k: int) -> tuple[SegmentOutcome, RunRecord]:
        start = refs[k - 1] if k > 0 else None
        end = refs[k]
        begun = datetime.now(UTC)
        rerun = _replay(store, original, built, backend, opts, policy, start, end.step,
                        progress, inflight)
        diffs = _segment_differences(store, original, rerun, start.step if start else 0,
                                     end, policy)
        return (_outcome(k, start.step if start else 0, end.step, diffs, policy, rerun,
                         (datetime.now(UTC) - begun).total_seconds()), rerun)

    label = f"replaying {q} segment(s)" + (f", {width} at a time" if width > 1 else "")
    with timed(timings, "rerun", progress, label), interrupt_on_sigterm():
        done = _all_segments([partial(segment, k) for k in chosen], width, inflight)
    outcomes = [outcome for outcome, _ in done]
    last = done[-1][1] if done else None
    assert last is not None
    notes += [*build_notes(store, original, built), *sandbox_notes(last)]
    total = refs[-1].step
    replayed = sum(o.end - o.start for o in outcomes)
    k10 = seg.tenth(n)
    spot = SpotCheck(segments_total=n, chosen=chosen, seed=seed, seed_source=source,
                     replayed_steps=replayed, total_steps=total,
                     fraction=replayed / total if total else 0.0,
                     catch_one=seg.catch_chance(n, q, 1), catch_tenth_k=k10,
                     catch_tenth=seg.catch_chance(n, q, k10))
    verdict = _segments_verdict(outcomes, policy, notes, spot)
    result = verify_result(original, last, verdict, policy, image=built.image_id,
                           backend=built.backend, started=started, seconds=timings,
                           check="spot-check", spot_check=spot, segments=outcomes)
    return _issue(store, result, original, last, opts, progress)


def resume_check(store: RunStore, original: RunRecord, policy: Policy, opts: ReplayOptions,
                 step: int, *, notes: Sequence[str] = (),
                 progress: Progress = lambda _l: None) -> VerifyResult:
    """Resume ``original`` at ``step``, train to the end, compare (module doc)."""
    started = datetime.now(UTC)
    _checkpoints(original, "--resume-at")
    ref = ck.checkpoint_at(original, step)  # NoCheckpointAt names the nearest steps
    notes = list(notes)
    expected = ck.verify_checkpoint(store.blobs, ref)
    for later in ck.list_checkpoints(original):
        if later.step > step:
            ck.verify_checkpoint(store.blobs, later)
    progress(f"resume check of run {original.identity.id} from step {step}")
    backend = choose(opts.backend, progress)
    timings: dict[str, float] = {}
    with timed(timings, "build", progress, "environment"):
        built = build_for(store, original, opts, backend, progress)
    with timed(timings, "rerun", progress, f"resuming at step {step}"):
        rerun = _replay(store, original, built, backend, opts, policy, ref, None, progress)
    notes += [*build_notes(store, original, built), *sandbox_notes(rerun)]
    with timed(timings, "compare", progress, "comparing restored state, checkpoints, "
                "metrics and outputs"):
        restored = _restored_differences(store, expected, rerun, step)
        whole = evidence_from_store(store, original)
        left, right = _aligned(whole, evidence_from_store(store, rerun), step, None)
        # a metric the original logged after STEP that the resumed run never logged
        left = replace(left, metric_keys=tuple(sorted(
            set(left.metric_keys) | {k for k in whole.metric_keys
                                     if any(s >= step for s, _ in whole.series(k))})))
        diffs = compare_runs(left, right, policy.compare)
        if restored:
            diffs["restored"] = restored
        found_later = _later_checkpoints(store, original, rerun, step, policy)
        if found_later:
            diffs["checkpoints"] = found_later
        verdict = decide(diffs, original, rerun, policy, notes)
        verdict = _resume_causes(verdict, restored, step)
    final_step = ck.list_checkpoints(original)[-1].step
    spot = SpotCheck(segments_total=1, seed=None, seed_source="", resume_at=step,
                     replayed_steps=final_step - step, total_steps=final_step,
                     fraction=(final_step - step) / final_step if final_step else 0.0,
                     restored=[d.comments[0] if d.comments else d.where for d in restored])
    outcome = SegmentOutcome(index=-1, start=step, end=final_step, level=verdict.level,
                             first_difference=(restored[0].where if restored
                                               else verdict.first_divergence),
                             rerun_run=rerun.identity.id, seconds=timings.get("rerun", 0.0))
    result = verify_result(original, rerun, verdict, policy, image=built.image_id,
                           backend=built.backend, started=started, seconds=timings,
                           metric_series=plot_series(left, right), check="resume",
                           spot_check=spot, segments=[outcome])
    return _issue(store, result, original, rerun, opts, progress)


def _issue(store: RunStore, result: VerifyResult, original: RunRecord, rerun: RunRecord,
           opts: ReplayOptions, progress: Progress) -> VerifyResult:
    from auditor.certify.issue import issue_certificate

    with stage(progress, "certificate"):
        return issue_certificate(store, result, original, rerun, opts.sign_key, opts.certificate)


# -- checks before any replay ----------------------------------------------------------


def _checkpoints(original: RunRecord, flag: str) -> list[CheckpointRef]:
    """The run's checkpoints in step order; none: one line saying how to add them."""
    refs = list(ck.list_checkpoints(original))
    if not refs:
        raise InputError(
            f"{flag}: run {original.identity.id} has no checkpoints",
            hint="add `run.checkpoint(step, model=model, optimizer=optimizer)` every few "
                 "steps (or `run.log_checkpoint(path, step)` where the script saves its "
                 "own), then record the run again")
    return refs


def _steps(refs: Sequence[CheckpointRef]) -> str:
    shown = [str(r.step) for r in refs[:8]]
    return ", ".join(shown) + (", …" if len(refs) > 8 else "")


def _verify_all(store: RunStore, refs: Sequence[CheckpointRef]) -> None:
    """Every checkpoint file re-hashed: an altered or truncated one is exit 3 now (the
    earliest such checkpoint; hashed on every core, as hashing releases the GIL)."""
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        for _ in pool.map(lambda ref: ck.verify_checkpoint(store.blobs, ref), refs):
            pass


def _fresh_seed(store: RunStore, original: RunRecord) -> tuple[str, str]:
    """A seed from the certificate-log head at verify time and fresh randomness."""
    from auditor.certify.log import log_head

    head = log_head(store)
    return (seg.derive_seed(head, original.identity.id),
            f"certificate-log head {head} + fresh randomness")


# -- one replay ------------------------------------------------------------------------


def _replay(store: RunStore, original: RunRecord, built: BuildResult, backend: Backend,
            opts: ReplayOptions, policy: Policy, start: CheckpointRef | None, stop_at: int | None,
            say: Progress, inflight: _InFlight | None = None) -> RunRecord:
    """Rerun ``original`` from the checkpoint ``start`` (None: from the beginning) until
    the checkpoint at ``stop_at`` (None: to the end); the stored rerun record. As
    ``rerun.run.rerun``, with the checkpoint materialised into the probe folder and the
    two variables of the checkpoint API added to the replayed environment. ``inflight``:
    the concurrent replays of a spot-check, which register their scratch folder there
    and do not start once it is stopping."""
    with interrupt_on_sigterm():
        tmp = scratch_dir()
        workdir = Path(tmp.name)
        try:
            if inflight is not None:
                inflight.add(workdir)
            lease.take(workdir, store.url, backend.name)
            acc = original.environment.accelerators
            limits = replace(opts.limits, gpus=len(acc.gpus) if acc else 0)
            prep = prepare(store, original, workdir, skip_replay=opts.skip_replay,
                           pass_env=policy.rerun.pass_env)
            env = dict(prep.env)
            if start is not None:
                folder = workdir / "probe" / RESUME_FOLDER
                ck.materialise(store.blobs, start, folder)
                _readable(folder)
                env["AUDITOR_RESUME_FROM"] = (f"/probe/{RESUME_FOLDER}"
                                              if backend.name == "docker" else str(folder))
            if stop_at is not None:
                env["AUDITOR_STOP_AT"] = str(stop_at)
            prep = replace(prep, env=MappingProxyType(env))
            where = f"step {start.step if start is not None else 0}"
            say(f"replaying from {where} to "
                f"{'step ' + str(stop_at) if stop_at is not None else 'the end'} "
                f"({backend.name}, no network)")
            hidden = (store_dir_of(store),)
            repo = (Path(original.code.root),) if original.code and original.code.root else ()
            if inflight is not None and inflight.stopping.is_set():
                raise CouldNotVerify("the replay was not started: another segment's replay failed")
            try:
                rerun = record_rerun(store, original, prep, built, lambda sink: backend.execute(
                    prep, built, limits, sink, hidden=hidden, also_hidden=repo))
            except CouldNotVerify:
                _raise_api_error(workdir / "probe")
                raise
            if rerun.identity.exit_code not in (0, None):
                _raise_api_error(workdir / "probe")
            return rerun
        finally:
            cleanup(workdir)
            tmp.cleanup()


class _InFlight:
    """The scratch folders of a spot-check's concurrent replays: on a failure or an
    interrupt, their containers (labelled with the folder, ``lease.LABEL``) are removed,
    so every replay ends at once, and no further one starts."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._folders: list[Path] = []

    def add(self, folder: Path) -> None:
        with self._lock:
            self._folders.append(folder)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            folders = list(self._folders)
        for folder in folders:
            lease.remove_containers(folder)


def _width(q: int, backend: Backend, limits: Limits, *, gpus: int, threads: int) -> int:
    """How many segments replay at once: each in its own container (the sandbox of a full
    rerun), only as many as this host's cores hold at ``threads`` each (the thread count
    every replay trains with, the original's: two 2-thread trainings on 2 cores took 89 s
    each where one at a time took 24 s), as many as its memory holds at the rerun's memory
    limit; one at a time on the venv backend and for GPU runs (one device)."""
    if backend.name != "docker" or gpus:
        return 1
    cores = len(os.sched_getaffinity(0))
    per = _bytes(limits.mem_limit)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fits = max(1, total // per) if per else 1
    return max(1, min(q, cores // max(1, threads), fits, MAX_CONCURRENT, _jobs()))


def _threads_of(original: RunRecord, skip: frozenset[str]) -> int:
    """The CPU threads a replay of ``original`` trains with: the torch thread count the
    original ran with (replayed, ``rerun.sandbox``), else its ``OMP_NUM_THREADS``, else
    (not recorded, or ``--skip-replay threads``) torch's default, one per core here."""
    cores = len(os.sched_getaffinity(0))
    det = original.determinism
    if "threads" in skip:
        return cores
    if det and det.torch_num_threads:
        return det.torch_num_threads
    omp = original.environment.env_vars.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) > 0 else cores


def _jobs() -> int:
    """``AUDITOR_SEGMENT_JOBS``: at most this many segments at once (1: one after the
    other); unset: no cap beyond cores and memory."""
    text = os.environ.get(JOBS_VAR, "").strip()
    if not text:
        return MAX_CONCURRENT
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{JOBS_VAR}={text!r}: expected a whole number of at least 1")
    return int(text)


def _bytes(text: str) -> int | None:
    """A docker memory size (``512m``, ``8g``, ``1073741824``) in bytes; None unreadable."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    scale = units.get(text[-1:], 0) if text and not text[-1].isdigit() else 1
    number = text[:-1] if scale != 1 or (text and not text[-1].isdigit()) else text
    return int(number) * scale if number.isdigit() and scale else None


def _all_segments(tasks: Sequence[Callable[[], _Done]], width: int,
                  inflight: _InFlight) -> list[_Done]:
    """Every task's result, in order, ``width`` at a time. The first failure (ours: exit
    3, or bad input) stops the others (their containers removed) and is raised, and so
    is an interrupt."""
    if width <= 1:
        return [task() for task in tasks]
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="segment")
    futures = [pool.submit(task) for task in tasks]
    try:
        pending: set[Future[_Done]] = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                failed = future.exception()
                if failed is not None:
                    raise failed
        return [future.result() for future in futures]
    except BaseException:
        inflight.stop()
        for future in futures:
            future.cancel()
        while not all(future.done() for future in futures):
            wait(futures, timeout=0.5)
            inflight.stop()  # a container created after the last look
        raise
    finally:
        pool.shutdown(wait=True)


def _readable(folder: Path) -> None:
    """The materialised checkpoint readable by the rerun user (uid 1000)."""
    for dirpath, _dirs, names in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in names:
            os.chmod(Path(dirpath) / name, 0o644)


def _raise_api_error(probe: Path) -> None:
    """The checkpoint API's own error in the rerun (a tensor that does not match the model,
    a missing or altered file), with its exit code, in place of a verdict; the file is the
    rerun's, read as untrusted input (``open_inside``)."""
    found = ck.checkpoint_error(probe, opener=open_inside)
    if found is None:
        return
    code, message = found
    if code == 2:
        raise InputError(f"the replay stopped: {message}",
                         hint="the checkpoint does not fit the model the script builds")
    raise CouldNotVerify(f"the replay stopped: {message}")


# -- comparing a segment -----------------------------------------------------------------


def _segment_differences(store: RunStore, original: RunRecord, rerun: RunRecord, start: int,
                         end: CheckpointRef, policy: Policy) -> list[Difference]:
    """The reached checkpoint vs the recorded one at ``end``, and the metrics logged in
    ``(start, end.step]``."""
    reached = [r for r in ck.list_checkpoints(rerun) if r.step == end.step]
    diffs: list[Difference] = []
    if not reached:
        got = ", ".join(str(r.step) for r in ck.list_checkpoints(rerun)) or "none"
        code = rerun.identity.exit_code
        diffs.append(Difference(
            where=f"checkpoint@{end.step}", kind="missing",
            comments=(f"the replay did not write the checkpoint at step {end.step} "
                      f"(its checkpoints: {got}; exit {code})",)))
    else:
        diffs += checkpoint_differences(store, end, reached[0], policy)
    diffs += _metric_differences(store, original, rerun, start, end.step, policy)
    return diffs


def checkpoint_differences(store: RunStore, left: CheckpointRef, right: CheckpointRef,
                           policy: Policy) -> list[Difference]:
    """A recorded checkpoint (left) vs a reached one (right): every tensor file under the
    policy's tolerances, then the non-tensor state (scheduler, RNG, generators, param
    groups) as ``checkpoints.diff_states`` names it."""
    at = f"checkpoint@{left.step}"
    lm, rm = ck.load_manifest(store.blobs, left), ck.load_manifest(store.blobs, right)
    lfiles, rfiles = _files(store, lm), _files(store, rm)
    diffs: list[Difference] = []
    tensor_files = [n for n in lfiles if n.endswith((".safetensors", ".pt", ".pth", ".bin"))]
    with tempfile.TemporaryDirectory(prefix="auditor-ckpt-") as tmp:
        for name in tensor_files:
            if name not in rfiles:
                diffs.append(Difference(where=f"{at}/{name}", kind="missing",
                                        comments=(f"the replay's checkpoint has no {name}",)))
                continue
            # the readers pick the format by suffix: blobs are named by digest
            named = [_named(path, name, Path(tmp) / side)
                     for path, side in ((lfiles[name], "recorded"), (rfiles[name], "replay"))]
            diffs += compare_weight_files(named[0], named[1], policy.compare,
                                          where=f"{at}/{name.rsplit('.', 1)[0]}",
                                          left_sha256=_sha(lm, name),
                                          right_sha256=_sha(rm, name))
    for found in ck.diff_states(lm.state, rm.state):
        if found.part in ("model", "tensors") or (found.part == "optimizer"
                                                   and "/" in found.name):
            continue  # tensors: compared above, under the policy's tolerances
        diffs.append(Difference(where=f"{at}/{found.part}/{found.name}", kind="changed",
                                comments=(found.message,)))
    return diffs


def _files(store: RunStore, manifest: ck.Manifest) -> dict[str, Path]:
    """A checkpoint's files (name -> verified local blob path)."""
    return {name: store.blobs.verified_path(sha, name)
            for name, (sha, _size) in manifest.files.items()}


def _named(path: Path, name: str, folder: Path) -> Path:
    """A link to ``path`` under the file name ``name`` (its suffix picks the reader)."""
    folder.mkdir(exist_ok=True)
    link = folder / Path(name).name
    link.symlink_to(path.resolve())
    return link


def _sha(manifest: ck.Manifest, name: str) -> str | None:
    found = manifest.files.get(name)
    return found[0] if found else None


def _metric_differences(store: RunStore, original: RunRecord, rerun: RunRecord, start: int,
                        end: int, policy: Policy) -> list[Difference]:
    """The metrics both runs logged inside the segment (``_aligned``)."""
    left, right = _aligned(evidence_from_store(store, original),
                           evidence_from_store(store, rerun), start, end)
    diffs: list[Difference] = []
    for key in sorted(set(left.metric_keys) & set(right.metric_keys)):
        diffs += compare_series(key, left, right, policy.compare)
    return diffs


def _aligned(left: Evidence, right: Evidence, start: int, end: int | None
             ) -> tuple[Evidence, Evidence]:
    """Both sides' series cut to what the replay covered: steps in ``[start, end]`` (end
    None: no bound) and, on the original's side, within the first and last step the
    replay logged for that key. Scripts number their metric steps from 0 or from 1, so
    the segment's own bounds cannot say which boundary step belongs to it; the replay's
    first and last logged steps can (a replay that stopped early still fails on its
    checkpoint)."""
    def inside(step: int) -> bool:
        return step >= start and (end is None or step <= end)

    spans: dict[str, tuple[int, int]] = {}
    for key in right.metric_keys:
        steps = [s for s, _ in right.series(key) if inside(s)]
        if steps:
            spans[key] = (min(steps), max(steps))

    def left_series(key: str) -> Iterator[tuple[int, float]]:
        lo, hi = spans.get(key, (1, 0))
        return ((s, v) for s, v in left.series(key) if lo <= s <= hi)

    def right_series(key: str) -> Iterator[tuple[int, float]]:
        return ((s, v) for s, v in right.series(key) if inside(s))

    keys = tuple(k for k in left.metric_keys if k in spans)
    return (replace(left, series=left_series, metric_keys=keys),
            replace(right, series=right_series, metric_keys=tuple(sorted(spans))))


def _outcome(k: int, start: int, end: int, diffs: list[Difference], policy: Policy,
             rerun: RunRecord, seconds: float) -> SegmentOutcome:
    beyond = [d for d in diffs if not d.within_tolerance or policy.compare.bitwise]
    level: Level = ("not-reproduced" if beyond else
                    "reproduced-within-tolerance" if diffs else "reproduced-bitwise")
    first = _first(beyond) if beyond else None
    return SegmentOutcome(index=k, start=start, end=end, level=level, first_difference=first,
                          differences=diffs, rerun_run=rerun.identity.id, seconds=seconds)


def _first(beyond: list[Difference]) -> str:
    """The first metric step out of tolerance, else the first difference."""
    stepped = [(int(s), d.where) for d in beyond
               if isinstance(s := d.stats.get("first_step"), int)]
    if stepped:
        step, where = min(stepped)
        return f"{where}@step {step}"
    return beyond[0].where


def _segments_verdict(outcomes: list[SegmentOutcome], policy: Policy, notes: list[str],
                      spot: SpotCheck) -> Verdict:
    """The worst segment decides; the first failing segment's first difference leads."""
    level = min((o.level for o in outcomes), key=lambda lv: LEVEL_RANK[lv])
    failing = [o for o in outcomes if o.level == "not-reproduced"]
    causes = [Cause(category="segment", what=f"segment {o.index}",
                    left=f"checkpoint at step {o.end}", right=o.first_difference, score=100.0,
                    explanation=(f"Replaying steps {o.start} → {o.end} from the recorded "
                                 f"checkpoint did not reach the checkpoint recorded at step "
                                 f"{o.end}: the run's record, its data or its settings "
                                 "differ from what produced that checkpoint (other data, "
                                 "another learning rate, a checkpoint written by another "
                                 "training)."))
              for o in failing]
    counted = [d for o in outcomes for d in o.differences]
    beyond = [d for d in counted if not d.within_tolerance or policy.compare.bitwise]
    summary = {"compared_segments": len(outcomes),
               "segments_reproduced": len(outcomes) - len(failing),
               "within_tolerance": len(counted) - len(beyond),
               "beyond_tolerance": len(beyond)}
    first = (f"segment {failing[0].index}: {failing[0].first_difference}" if failing else None)
    return Verdict(level=level, causes=causes, first_divergence=first, summary=summary,
                   differences={f"segment {o.index}": o.differences for o in outcomes},
                   notes=[*notes, f"spot-check: segments {spot.chosen} of "
                                  f"{spot.segments_total}, seed {spot.seed}"],
                   loosenings=loosenings(policy))


# -- resume equivalence ----------------------------------------------------------------


def _restored_differences(store: RunStore, expected: ck.Manifest, rerun: RunRecord,
                          step: int) -> list[Difference]:
    """The resumed process's restored state vs the state recorded at ``step``, named."""
    snapshot = ck.resumed_snapshot(rerun)
    if snapshot is None:
        return [Difference(where=f"restored@{step}", kind="missing", comments=(
            "the resumed training wrote no restored-state snapshot: does the script call "
            "`run.resume(model, optimizer, …)` before training?",))]
    got = ck.load_manifest(store.blobs, snapshot)
    return [Difference(where=f"restored@{step}/{d.part}/{d.name}", kind="changed",
                       comments=(d.message,))
            for d in ck.diff_states(expected.state, got.state)]


def _later_checkpoints(store: RunStore, original: RunRecord, rerun: RunRecord, step: int,
                       policy: Policy) -> list[Difference]:
    """Every checkpoint the uninterrupted run recorded after ``step`` vs the resumed run's."""
    mine = {r.step: r for r in ck.list_checkpoints(rerun)}
    diffs: list[Difference] = []
    for ref in ck.list_checkpoints(original):
        if ref.step <= step:
            continue
        if ref.step not in mine:
            diffs.append(Difference(where=f"checkpoint@{ref.step}", kind="missing",
                                    comments=("the resumed run wrote no checkpoint at step "
                                              f"{ref.step}",)))
            continue
        diffs += checkpoint_differences(store, ref, mine[ref.step], policy)
    return diffs


def _resume_causes(verdict: Verdict, restored: list[Difference], step: int) -> Verdict:
    """Restored-state differences lead the causes; with none and a divergence, the cause is
    state the checkpoint does not hold."""
    if verdict.level != "not-reproduced":
        return verdict
    if restored:
        lead = [Cause(category="checkpoint", what="restored state",
                      left=f"recorded at step {step}", right=d.comments[0] if d.comments
                      else d.where, score=150.0,
                      explanation=(f"Before the first resumed update: "
                                   f"{d.comments[0] if d.comments else d.where}; the resumed "
                                   "run starts from other state than the uninterrupted run "
                                   f"had at that step (first divergence: "
                                   f"{verdict.first_divergence})."))
                for d in restored[:3]]
    else:
        lead = [Cause(category="checkpoint", what="state not in the checkpoint",
                      left=f"resumed at step {step}", right=verdict.first_divergence,
                      score=150.0, explanation=DATA_STATE_CAUSE)]
    return verdict.model_copy(update={"causes": [*lead, *verdict.causes]})


__all__ = ["AuditorError", "ReplayOptions", "checkpoint_differences", "resume_check",
           "spot_check"]
