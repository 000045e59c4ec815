"""An unisolated venv rerun (no bubblewrap: issue 16, item 8) passes no gate: not the
default one, not one with ``min_isolation = "venv"``, which accepts a bubblewrap rerun."""

from __future__ import annotations

from tests.unit.test_gate import World, failure, world  # noqa: F401 - the fixture


def test_an_unisolated_certificate_fails_every_gate(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.bin", b"w")
    world.certify([sha], isolation="none")
    for policy in ({}, {"min_isolation": "venv"}):
        requirement, message = failure(world.gate(model, **policy))
        assert requirement == "isolation"
        assert "unisolated" in message and "bubblewrap" in message


def test_a_bubblewrap_venv_certificate_passes_only_by_policy(world: World) -> None:  # noqa: F811
    model, sha = world.artifact("model.bin", b"w")
    world.certify([sha], isolation="venv")
    assert failure(world.gate(model))[0] == "isolation"
    assert world.gate(model, min_isolation="venv").passed
