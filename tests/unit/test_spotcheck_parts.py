"""Spot-check pieces without a rerun (issue 19 items 3-5): the segment choice and its seed,
the hypergeometric chance, tolerance profiles as policy entries, the gate's
``accept_spot_check`` / ``min_catch_chance`` / ``min_level`` on partial certificates, and
segment rows in every report format."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from auditor.certify import segments as seg
from auditor.certify.certificate import PartialCheck, SegmentRow
from auditor.certify.verdict import SegmentOutcome, SpotCheck, Verdict, VerifyResult
from auditor.compare.difference import Difference
from auditor.core.errors import InputError
from auditor.core.policy import load_policy, loosenings
from auditor.report.html import render_html
from auditor.report.junit import render_junit
from auditor.report.markdown import render_markdown
from auditor.report.terminal import result_rows
from tests.factories import make_record
from tests.unit.test_gate import World, failure, world  # noqa: F401 - the fixture

# -- choice, seed, chance ----------------------------------------------------------------


def test_the_choice_depends_on_the_seed_only_and_replays() -> None:
    a = seg.choose_segments("seed-1", 20, 2)
    assert a == seg.choose_segments("seed-1", 20, 2)  # anyone re-derives it
    assert len(a) == 2 and a == sorted(a) and all(0 <= k < 20 for k in a)
    picks = {tuple(seg.choose_segments(f"seed-{i}", 20, 2)) for i in range(200)}
    assert len(picks) > 50  # the seed moves the choice
    assert seg.choose_segments("x", 5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        seg.choose_segments("x", 5, 6)


def test_the_verifiers_seed_binds_the_log_head_and_fresh_randomness() -> None:
    head = "ab" * 32
    fixed = seg.derive_seed(head, "run1", b"\0" * 16)
    assert fixed == seg.derive_seed(head, "run1", b"\0" * 16)
    assert fixed != seg.derive_seed("cd" * 32, "run1", b"\0" * 16)  # another log head
    assert fixed != seg.derive_seed(head, "run2", b"\0" * 16)
    assert seg.derive_seed(head, "run1") != seg.derive_seed(head, "run1")  # fresh nonce


def test_hypergeometric_chance_of_catching_bad_segments() -> None:
    assert seg.catch_chance(20, 2, 1) == pytest.approx(0.1)
    assert seg.catch_chance(20, 2, 2) == pytest.approx(1 - math.comb(18, 2) / math.comb(20, 2))
    assert seg.catch_chance(20, 20, 1) == 1.0
    assert seg.catch_chance(20, 2, 0) == 0.0
    assert seg.tenth(20) == 2 and seg.tenth(3) == 1


# -- tolerance profiles ----------------------------------------------------------------


def test_profiles_are_policy_entries(tmp_path: Path) -> None:
    assert load_policy(None, profile="strict").compare.bitwise
    standard = load_policy(None, profile="standard")
    assert not loosenings(standard) and standard.compare.profile == "standard"
    relaxed = load_policy(None, profile="relaxed")
    assert any("metric_tolerance" in line for line in loosenings(relaxed))  # shown loosened
    own = tmp_path / "auditor.toml"
    own.write_text('[verify]\nprofile = "mine"\nnan_equal = false\n'
                   '[verify.profiles.mine]\nmetric_tolerance = { rtol = 0.5, atol = 0.0 }\n')
    mine = load_policy(own)
    assert mine.compare.metric_tolerance.rtol == 0.5 and not mine.compare.nan_equal
    assert load_policy(own, profile="strict").compare.bitwise  # --profile wins
    with pytest.raises(InputError, match="unknown tolerance profile 'fast'"):
        load_policy(None, profile="fast")


# -- the gate --------------------------------------------------------------------------


def _partial(n: int = 20, q: int = 2) -> PartialCheck:
    k10 = seg.tenth(n)
    return PartialCheck(segments_total=n, chosen=seg.choose_segments("s", n, q), seed="s",
                        seed_source="given", replayed_steps=10, total_steps=100,
                        fraction=0.1, catch_one=seg.catch_chance(n, q, 1), catch_tenth_k=k10,
                        catch_tenth=seg.catch_chance(n, q, k10),
                        segments=[SegmentRow(index=3, start=15, end=20,
                                             verdict="reproduced-bitwise")])


def test_a_spot_check_passes_the_gate_only_when_accepted(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.safetensors", b"weights v1")
    world.certify([sha], check="spot-check", partial=_partial())
    requirement, message = failure(world.gate(model))
    assert requirement == "check" and "accept_spot_check" in message, message
    report = world.gate(model, accept_spot_check=True)
    assert report.passed and "by spot-check" in report.findings[0].message
    requirement, message = failure(world.gate(model, accept_spot_check=True,
                                              min_catch_chance=0.5))
    assert requirement == "check" and "19.5% chance" in message, message


def test_min_level_judges_a_spot_checks_verdict(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.safetensors", b"weights v2")
    world.certify([sha], verdict="reproduced-within-tolerance", check="spot-check",
                  partial=_partial())
    requirement, _ = failure(world.gate(model, accept_spot_check=True,
                                        min_level="reproduced-bitwise"))
    assert requirement == "level"


def test_a_resume_check_is_never_release_evidence(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.safetensors", b"weights v3")
    world.certify([sha], check="resume", partial=_partial(1, 1))
    requirement, message = failure(world.gate(model, accept_spot_check=True))
    assert requirement == "check" and "resume" in message


def test_a_full_certificate_still_passes(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.safetensors", b"weights v4")
    world.certify([sha])
    assert world.gate(model).passed


# -- reports ---------------------------------------------------------------------------


def _result() -> VerifyResult:
    bad = Difference(where="checkpoint@20/model/fc1.weight", kind="value", magnitude=0.3)
    segments = [
        SegmentOutcome(index=3, start=15, end=20, level="not-reproduced",
                       first_difference="checkpoint@20/model/fc1.weight", differences=[bad]),
        SegmentOutcome(index=11, start=55, end=60, level="reproduced-bitwise"),
    ]
    spot = SpotCheck(segments_total=20, chosen=[3, 11], seed="f" * 64, seed_source="given",
                     replayed_steps=10, total_steps=100, fraction=0.1, catch_one=0.1,
                     catch_tenth_k=2, catch_tenth=seg.catch_chance(20, 2, 2))
    verdict = Verdict(level="not-reproduced", differences={"segment 3": [bad], "segment 11": []},
                      first_divergence="segment 3: checkpoint@20/model/fc1.weight")
    return VerifyResult(original_run="run1", original_name="mlp <b>", verdict=verdict,
                        started_at=datetime(2026, 12, 7, tzinfo=UTC), check="spot-check",
                        spot_check=spot, segments=segments)


def test_segment_rows_in_every_format() -> None:
    result = _result()
    rows = {label: str(text) for label, text in result_rows(result)}
    assert rows["check"].startswith("spot-check: 2 of 20 segments (10.0% of 100 steps")
    assert "19.5%" in rows["check"]
    assert "segment 3: steps 15 → 20  not-reproduced  first difference checkpoint@20" in \
        rows["segments"]
    md = render_markdown([result])
    assert "| segment 3 | 15 → 20 | not-reproduced | checkpoint\\@20/model/fc1.weight |" in md
    junit = render_junit([result])
    assert 'name="segment 3: steps 15 -&gt; 20"' in junit
    assert junit.count("<failure") == 2  # the verdict and segment 3; no double count
    html = render_html(result)
    assert "Segments replayed" in html and "segment 11" in html and "mlp &lt;b&gt;" in html


# -- replaying the chosen segments at once -----------------------------------------------


def test_memory_sizes_read_as_docker_writes_them() -> None:
    from auditor.spotcheck import _bytes

    assert _bytes("8g") == 8 << 30 and _bytes("512m") == 512 << 20
    assert _bytes("1073741824") == 1 << 30 and _bytes("64K") == 64 << 10
    assert _bytes("lots") is None and _bytes("") is None and _bytes("1.5g") is None


def test_segment_jobs_caps_the_width_and_refuses_nonsense(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.rerun.backends import DockerBackend, VenvBackend
    from auditor.rerun.sandbox import Limits
    from auditor.spotcheck import JOBS_VAR, _width

    one = {"gpus": 0, "threads": 1}
    monkeypatch.setenv(JOBS_VAR, "1")
    assert _width(4, DockerBackend(), Limits(), **one) == 1
    monkeypatch.delenv(JOBS_VAR)
    cores = len(os.sched_getaffinity(0))
    assert _width(4, DockerBackend(), Limits(mem_limit="1m"), **one) == min(4, cores)
    assert _width(1, DockerBackend(), Limits(mem_limit="1m"), **one) == 1  # never above q
    assert _width(4, VenvBackend(), Limits(mem_limit="1m"), **one) == 1
    assert _width(4, DockerBackend(), Limits(mem_limit="1m"), gpus=1, threads=1) == 1
    # a limit larger than this host's memory: one at a time
    assert _width(4, DockerBackend(), Limits(mem_limit="1000000g"), **one) == 1
    # replays that each train on every core of this host: one at a time (two at once on
    # 2 cores took 89 s each, one at a time 24 s: bench/results/segments-long.json)
    assert _width(4, DockerBackend(), Limits(mem_limit="1m"), gpus=0, threads=cores) == 1
    assert _width(4, DockerBackend(), Limits(mem_limit="1m"), gpus=0,
                  threads=max(1, cores // 2)) == min(4, cores // max(1, cores // 2))
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(JOBS_VAR, bad)
        with pytest.raises(InputError, match=JOBS_VAR):
            _width(2, DockerBackend(), Limits(), **one)


def test_a_replay_trains_with_the_thread_count_the_original_did() -> None:
    from auditor.core.schema import Determinism
    from auditor.spotcheck import _threads_of

    cores = len(os.sched_getaffinity(0))
    rec = make_record()
    det = Determinism(source="observed-in-process", torch_num_threads=3)
    assert _threads_of(rec.model_copy(update={"determinism": det}), frozenset()) == 3
    assert _threads_of(rec.model_copy(update={"determinism": det}),
                       frozenset({"threads"})) == cores  # not replayed: torch's default
    env = rec.environment.model_copy(update={"env_vars": {"OMP_NUM_THREADS": "1"}})
    assert _threads_of(rec.model_copy(update={"environment": env, "determinism": None}),
                       frozenset()) == 1
    odd = rec.environment.model_copy(update={"env_vars": {"OMP_NUM_THREADS": "[redacted]"}})
    assert _threads_of(rec.model_copy(update={"environment": odd, "determinism": None}),
                       frozenset()) == cores


def test_concurrent_segments_keep_their_order_and_the_first_failure_stops_the_rest() -> None:
    import threading
    import time

    from auditor.core.errors import CouldNotVerify
    from auditor.spotcheck import _all_segments, _InFlight

    both = threading.Barrier(2, timeout=10)

    def slow(k: int) -> Any:
        both.wait()  # both run at once, or this times out
        time.sleep(0.05 * (3 - k))
        return k

    inflight = _InFlight()
    assert _all_segments([lambda k=k: slow(k) for k in (1, 2)], 2, inflight) == [1, 2]
    assert not inflight.stopping.is_set()

    started: list[int] = []

    def task(k: int) -> Any:
        if inflight.stopping.is_set():
            raise CouldNotVerify("not started")
        started.append(k)
        if k == 0:
            raise CouldNotVerify("segment 0: the container could not start")
        time.sleep(0.3)
        return k

    inflight = _InFlight()
    with pytest.raises(CouldNotVerify, match="segment 0"):
        _all_segments([lambda k=k: task(k) for k in range(6)], 2, inflight)
    assert inflight.stopping.is_set() and len(started) < 6  # the queued ones never ran
