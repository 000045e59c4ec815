"""Issue 18 item 1: the probe's params capture in a real Python process, and the recorder's
reading of what it wrote (hostile files included, as a rerun may leave them)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditor.record.params import (
    ProbeParams,
    argparse_name,
    choose,
    clean,
    combined,
    normalised,
    read_probe_params,
)
from auditor.record.wrap import PROBE_PATH, parse_argv_params
from auditor.rerun.ingest import stage_probe


def _probed(tmp_path: Path, script: str, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                            Path]:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (tmp_path / "s.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(PROBE_PATH), "AUDITOR_PROBE_DIR": str(probe)}
    res = subprocess.run([sys.executable, str(tmp_path / "s.py"), *args], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    return res, probe


def test_names_follow_argparse() -> None:
    assert argparse_name("--batch-size") == "batch_size" and argparse_name("lr") == "lr"
    assert normalised({"batch-size": 1, "batch_size": 2, "--x-y": 3}) == {"batch_size": 1,
                                                                        "x_y": 3}
    assert normalised(parse_argv_params(["--batch-size=8", "--no-cuda"])) == {
        "batch_size": 8, "no_cuda": True}


def test_a_script_without_argparse_does_not_import_it(tmp_path: Path) -> None:
    """The capture waits for argparse's import: a process that never parses pays nothing."""
    res, probe = _probed(tmp_path, "import sys\nprint('argparse' in sys.modules)\n")
    assert res.stdout.strip() == "False", res.stderr
    assert not list(probe.glob("params-*.json"))


def test_argparse_imported_by_a_project_sitecustomize_is_wrapped(tmp_path: Path) -> None:
    """A project's own sitecustomize (chained after the probe) imports argparse first."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import argparse\n")
    probe = tmp_path / "probe"
    probe.mkdir()
    (tmp_path / "s.py").write_text("import argparse\np = argparse.ArgumentParser()\n"
                                   "p.add_argument('--lr', default='0.1')\np.parse_args()\n")
    env = {**os.environ, "PYTHONPATH": f"{PROBE_PATH}:{own}", "AUDITOR_PROBE_DIR": str(probe)}
    subprocess.run([sys.executable, str(tmp_path / "s.py")], env=env, check=True, timeout=60)
    found = read_probe_params(probe)
    assert found is not None and found.params == {"lr": "0.1"}


def test_abbreviations_short_options_and_a_namespace_given(tmp_path: Path) -> None:
    script = ("import argparse\np = argparse.ArgumentParser()\n"
              "p.add_argument('--batch-size', type=int, default=32)\n"
              "p.add_argument('-w', '--workers', type=int, default=1)\n"
              "p.add_argument('--epochs', type=int, default=1)\n"
              "p.add_argument('--name', default='run')\n"
              "p.add_argument('out', nargs='?', default='out')\n"
              "p.parse_args(namespace=argparse.Namespace(epochs=9))\n")
    res, probe = _probed(tmp_path, script, "--batch", "64", "-w4")
    assert res.returncode == 0, res.stderr
    found = read_probe_params(probe)
    assert found is not None
    assert found.params == {"batch_size": 64, "workers": 4, "epochs": 9, "name": "run",
                            "out": "out"}
    assert found.sources == {"batch_size": "typed", "workers": "typed", "epochs": "config",
                             "name": "default", "out": "default"}


def test_a_path_typed_value_is_its_text(tmp_path: Path) -> None:
    script = ("import argparse, pathlib\np = argparse.ArgumentParser()\n"
              "p.add_argument('--out', type=pathlib.Path, default=pathlib.Path('outputs'))\n"
              "p.add_argument('--data', type=pathlib.Path)\n"
              "p.parse_args()\n")
    res, probe = _probed(tmp_path, script, "--data", "data/blobs.csv")
    assert res.returncode == 0, res.stderr
    found = read_probe_params(probe)
    assert found is not None
    assert found.params == {"out": "outputs", "data": "data/blobs.csv"}


def test_a_failing_capture_or_an_unwritable_folder_never_breaks_the_training(
        tmp_path: Path) -> None:
    script = ("import argparse\nclass Bad:\n    def __repr__(self):\n"
              "        raise RuntimeError('no repr')\n"
              "p = argparse.ArgumentParser()\np.add_argument('--x', default=Bad())\n"
              "a = p.parse_args()\nprint('trained')\n")
    res, probe = _probed(tmp_path, script)
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "trained", "")
    assert not list(probe.glob("params-*.json"))
    not_a_folder = tmp_path / "file"  # unwritable even for root
    not_a_folder.write_text("")
    env = {**os.environ, "PYTHONPATH": str(PROBE_PATH), "AUDITOR_PROBE_DIR": str(not_a_folder)}
    res = subprocess.run([sys.executable, "-c", "import argparse\n"
                          "argparse.ArgumentParser().parse_args()\nprint('trained')"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "trained", "")


def test_a_forked_child_does_not_write_its_parents_parse(tmp_path: Path) -> None:
    script = ("import argparse, os, sys\np = argparse.ArgumentParser()\n"
              "p.add_argument('--lr', default='0.1')\np.parse_args()\n"
              "pid = os.fork()\nif pid == 0:\n    sys.exit(0)\nos.waitpid(pid, 0)\n")
    res, probe = _probed(tmp_path, script)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in probe.glob("params-*.json")] == [f"params-{_pid(probe)}.json"]


def _pid(probe: Path) -> int:
    return int(json.loads(next(probe.glob("params-*.json")).read_text())["pid"])


def _parse(pid: int, ppid: int, at: int, launcher: bool = False) -> ProbeParams:
    return ProbeParams(params={"pid": pid}, sources={"pid": "typed"}, pid=pid, ppid=ppid,
                       at=at, launcher=launcher)


def test_the_choice_among_processes_is_deterministic() -> None:
    """Launchers give way; then the outermost; then the earliest; then the lowest pid;
    whatever order the files come in."""
    cases = [
        ([_parse(10, 1, 5), _parse(11, 10, 1)], 10),  # a helper parses earlier: outer wins
        ([_parse(10, 1, 1, launcher=True), _parse(11, 10, 5), _parse(12, 10, 4)], 12),
        ([_parse(10, 1, 1, launcher=True)], 10),  # only a launcher parsed
        ([_parse(30, 1, 7), _parse(20, 2, 7)], 20),  # two roots at once: the lower pid
    ]
    for found, pid in cases:
        for order in itertools.permutations(found):
            chosen = choose(list(order))
            assert chosen is not None and chosen.pid == pid
    assert choose([]) is None


@pytest.mark.parametrize("data", [
    None, [], "x", {"params": [1]}, {"params": {}, "sources": []},
    {"params": {}, "sources": {}}, {"params": {"d": {}}, "sources": {}, "extras": [1]},
])
def test_a_file_without_a_parse_is_none(data: object) -> None:
    assert clean(data) is None


def test_hostile_fields_are_dropped_and_counted() -> None:
    found = clean({"params": {"lr": 0.1, "deep": {"a": 1}, "l": [1, "a", None],
                              "bad": [[1]], "": 3},
                   "sources": {"lr": "typed", "l": "evil"}, "pid": True, "ppid": "1",
                   "at": 5, "launcher": 1, "extras": ["--x", 3], "dropped": 2})
    assert found is not None
    assert found.params == {"lr": 0.1, "l": [1, "a", None]}
    assert found.sources == {"lr": "typed", "l": "default"}
    assert (found.pid, found.ppid, found.at, found.launcher) == (0, 0, 5, False)
    assert found.extras == ("--x",) and found.dropped == 5


def test_unreadable_linked_or_oversized_files_are_skipped(tmp_path: Path) -> None:
    good = {"params": {"lr": 0.1}, "sources": {"lr": "typed"}, "pid": 9, "ppid": 1, "at": 9}
    (tmp_path / "params-1.json").write_text("{not json")
    (tmp_path / "params-2.json").write_text(json.dumps({**good, "params": {"x": "y" * (2 << 20)},
                                                        "at": 1}))
    (tmp_path / "elsewhere.json").write_text(json.dumps({**good, "at": 0, "pid": 3}))
    (tmp_path / "params-3.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "params-9.json").write_text(json.dumps(good))
    found = read_probe_params(tmp_path)
    assert found is not None and found.pid == 9 and found.params == {"lr": 0.1}


def test_the_rerun_stages_params_files_cleaned(tmp_path: Path) -> None:
    """A rerun's params file is untrusted: read as the other probe files are (a link is
    refused), staged with its well-typed fields only."""
    probe, staged = tmp_path / "probe", tmp_path / "staged"
    probe.mkdir()
    staged.mkdir()
    (probe / "params-5.json").write_text(json.dumps(
        {"params": {"lr": 0.1, "obj": {"x": 1}}, "sources": {"lr": "typed"}, "pid": 5}))
    (tmp_path / "host.json").write_text(json.dumps({"params": {"host": 1}, "sources": {}}))
    (probe / "params-6.json").symlink_to(tmp_path / "host.json")
    _lines, warnings = stage_probe(probe, staged)
    assert sorted(p.name for p in staged.iterdir()) == ["params-5.json"]
    assert any("params-6.json" in w for w in warnings)
    found = read_probe_params(staged)
    assert found is not None and found.params == {"lr": 0.1} and found.dropped == 1


def test_combined_keeps_the_words_a_known_args_parse_left() -> None:
    found = ProbeParams(params={"config": "c.yaml"}, sources={"config": "typed"},
                        extras=("--lr", "0.3"))
    params, note = combined(found, {"config": "c.yaml", "lr": 0.3},
                            normalised(parse_argv_params(list(found.extras))))
    assert params == {"lr": 0.3, "config": "c.yaml"} and note == "typed: config, lr"
    assert combined(None, {"lr": 1}, {}) == ({"lr": 1}, None)


def _rerun_params(original_notes: dict[str, str], staged: Path) -> tuple[dict[str, Any],
                                                                           dict[str, str]]:
    from auditor.core.schema import Code
    from auditor.rerun.record import _params
    from auditor.rerun.sandbox import Executed
    from tests.factories import make_record

    code = Code(vcs="git", root="/home/u/proj", tree_sha256="0" * 64)
    original = make_record(params={"batch-size": 8}, not_captured=original_notes, code=code)
    rerun = make_record(params=dict(original.params), code=code)
    done = Executed(0, "", "", 1.0, staged, seen_as="/work")
    notes: dict[str, str] = {}
    return _params(original, rerun, staged, done, notes), notes


def test_the_rerun_takes_its_probe_params_only_when_the_original_did(tmp_path: Path) -> None:
    """Like for like: an original recorded from the command line (or before the probe)
    keeps its params in the rerun; one recorded from the probe is compared with the
    rerun's own parse, a path under the rerun's tree (/work) mapped back to the original's;
    a rerun whose parse was not seen says so and shows the original's."""
    (tmp_path / "params-3.json").write_text(json.dumps(
        {"params": {"batch_size": 8, "data": "/work/data", "out": ["/work", "/workx"]},
         "sources": {"batch_size": "typed"}, "pid": 3}))
    assert _rerun_params({}, tmp_path) == ({"batch-size": 8}, {})
    params, notes = _rerun_params({"params": "typed: batch_size"}, tmp_path)
    assert params == {"batch_size": 8, "data": "/home/u/proj/data",
                      "out": ["/home/u/proj", "/workx"]}
    assert notes == {"params": "default: data, out; typed: batch_size"}
    params, notes = _rerun_params({"params": "typed: batch_size"}, tmp_path / "none")
    assert params == {"batch-size": 8} and "was not seen" in notes["params"]
