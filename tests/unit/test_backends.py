"""Backend choice (no engine needed): an ordered list of backend classes, each with its own
``detect()``; a named one is taken as given, an unknown name lists the available ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.core.errors import InputError
from auditor.rerun import backends
from auditor.rerun.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    FALLBACK_NOTICE,
    DockerBackend,
    VenvBackend,
    choose,
    detect,
)


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(InputError) as info:
        choose("podman")
    assert "unknown build backend 'podman': available: docker, venv" in str(info.value)
    assert info.value.exit_code == 2


def test_known_backends_are_taken_as_given_in_order_of_preference() -> None:
    assert [type(choose(b.name)) for b in BACKENDS] == [DockerBackend, VenvBackend]
    assert BACKENDS[0].name == DEFAULT_BACKEND == "docker"


def test_detect_falls_back_to_venv_loudly_when_no_engine_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    said: list[str] = []
    assert isinstance(detect(said.append), VenvBackend)
    assert said == [FALLBACK_NOTICE]
    assert isinstance(choose(None), VenvBackend)


def test_detect_takes_the_first_backend_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # the ordered list decides, not the names: a first backend that answers wins silently
    class Answers(VenvBackend):
        name = "first"

    monkeypatch.setattr(backends, "BACKENDS", (Answers, DockerBackend, VenvBackend))
    said: list[str] = []
    assert isinstance(detect(said.append), Answers) and said == []


def test_a_venv_backend_pins_no_base_image() -> None:
    assert VenvBackend().base_image_id("python:3.11-slim") is None


def test_the_plans_and_options_are_immutable() -> None:
    import dataclasses

    from auditor.env.inputs import BuildSettings
    from auditor.rerun.sandbox import Executed, Limits, Prepared
    from auditor.verify import VerifyOptions

    for plan in (Prepared, Limits, Executed, VerifyOptions, BuildSettings):
        assert dataclasses.is_dataclass(plan) and plan.__dataclass_params__.frozen, plan
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.timeout_s = 1  # type: ignore[misc]
    executed = Executed(0, "", "", 0.0, Path("."), seen_as="/work", notes=("a",))
    assert isinstance(executed.notes, tuple)  # notes cannot be appended after the fact
