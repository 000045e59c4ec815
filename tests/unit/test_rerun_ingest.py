"""Reading what a rerun left behind as untrusted input; the store's privacy; the rerun
user's reach; when a failed rerun is auditor's failure (fast checks on real files; the
hostile scripts in real sandboxes are in tests/e2e/test_hostile_rerun.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditor.core.errors import CouldNotVerify
from auditor.core.schema import ArtifactRef, RunRecord
from auditor.env.access import blocked_for
from auditor.rerun.in_venv import check_hidden_from_rerun_user
from auditor.rerun.ingest import (
    Refused,
    collect_api_artifacts,
    collect_changed,
    open_inside,
    stage_probe,
    tree_relative,
)
from auditor.rerun.record import failed_at_start
from auditor.rerun.sandbox import Executed, hand_over
from auditor.store import SqlStore
from tests.factories import make_record


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "model.bin").write_bytes(b"weights")
    (tmp_path / "host.txt").write_bytes(b"host secret")
    os.symlink(tmp_path, root / "escape")
    os.symlink(tmp_path / "host.txt", root / "outputs" / "link.bin")
    os.mkfifo(root / "outputs" / "pipe")
    return root


def test_open_inside_reads_regular_files_only_and_never_follows_a_link(tree: Path) -> None:
    with open_inside(tree, "outputs/model.bin") as fh:
        assert fh.read() == b"weights"
    for rel, why in (
        ("escape/host.txt", "symbolic link"),
        ("outputs/link.bin", "symbolic link"),
        ("outputs/pipe", "not a regular file"),  # and it does not block
        ("../host.txt", "not a path inside"),
        ("outputs/../../host.txt", "not a path inside"),
        ("/etc/passwd", "not a path inside"),
        ("outputs/missing", "No such file"),
    ):
        with pytest.raises(Refused, match=why), open_inside(tree, rel):
            pass


def test_reported_paths_are_judged_by_their_text() -> None:
    assert tree_relative("/work/outputs/m.bin", "/work") == "outputs/m.bin"
    for bad in ("/tmp/host_only_secret.txt", "/work", "/workshop/x", "/work/../etc/shadow",
                "/work/a/../../etc"):
        with pytest.raises(Refused):
            tree_relative(bad, "/work")


def test_api_artifacts_outside_the_tree_are_refused_inside_ones_stored(
    tree: Path, store: SqlStore, tmp_path: Path
) -> None:
    lines = [
        {"path": str(tmp_path / "host.txt"), "name": "loot.txt"},
        {"path": f"{tree}/escape/host.txt", "name": "loot2.txt"},
        {"path": f"{tree}/outputs/link.bin", "name": "loot3.txt"},
        {"path": f"{tree}/outputs/model.bin", "name": "../../x"},
        {"path": f"{tree}/outputs/model.bin", "name": None},
    ]
    got = collect_api_artifacts(store.blobs, tree, str(tree), lines, 1 << 20)
    assert [a.name for a in got.artifacts] == ["outputs/model.bin"]
    assert len(got.warnings) == 4, got.warnings
    stored = b"".join(p.read_bytes() for p in store.blobs.objects.rglob("*") if p.is_file())
    assert b"host secret" not in stored


def test_changed_outputs_skip_links_fifos_and_oversized_files(
    tree: Path, store: SqlStore
) -> None:
    got = collect_changed(store.blobs, tree, ".", ["outputs/model.bin", "outputs/link.bin",
                                                   "outputs/pipe"], 1 << 20)
    assert [a.name for a in got.artifacts] == ["outputs/outputs/model.bin"]
    small = collect_changed(store.blobs, tree, ".", ["outputs/model.bin"], 3)
    assert small.artifacts == () and "limit" in small.warnings[0]


def test_probe_files_are_copied_only_when_regular_and_well_typed(
    tmp_path: Path
) -> None:
    probe, dest = tmp_path / "probe", tmp_path / "dest"
    probe.mkdir()
    dest.mkdir()
    (tmp_path / "secret.json").write_text('{"params": {"k": "host"}}')
    os.symlink(tmp_path / "secret.json", probe / "api-1.json")
    os.mkfifo(probe / "metrics-2.jsonl")
    (probe / "api-3.json").write_text('{"params": [1], "seed": "7", "seeded": 5}')
    (probe / "metrics-4.jsonl").write_text('["loss", 0, 4607182418800017408, 1.0]\n'
                                          '["loss", "x", 1, 1]\n[1, 2]\n{bad\n')
    (probe / "artifacts.jsonl").write_text('{"path": "/work/a", "name": "a"}\n"str"\n'
                                           '{"path": 7}\n')
    lines, warnings = stage_probe(probe, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["api-3.json", "metrics-4.jsonl"]
    assert json.loads((dest / "api-3.json").read_text()) == {
        "params": {}, "seed": None, "seeded": []}
    assert (dest / "metrics-4.jsonl").read_text().count("\n") == 1
    assert lines == [{"path": "/work/a", "name": "a"}]
    assert sum("refused" in w for w in warnings) == 2, warnings  # the link and the FIFO
    assert sum("ignored" in w for w in warnings) == 2, warnings


def test_the_store_is_private_to_its_owner(store: SqlStore) -> None:
    sha, _ = store.blobs.put_bytes(b"an object")
    obj = store.blobs.path_for(sha)
    assert stat.S_IMODE(obj.stat().st_mode) == 0o400
    for folder in (store.blobs.root, store.blobs.root / "objects", store.blobs.objects,
                   obj.parent, store.blobs.tmp):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert blocked_for(obj) is not None
    # an older store, opened up: made private again by the next write
    for folder in (store.blobs.root, store.blobs.root / "objects"):
        os.chmod(folder, 0o755)
    store.blobs.put_bytes(b"another")
    assert stat.S_IMODE((store.blobs.root / "objects").stat().st_mode) == 0o700


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder under /tmp everyone may enter (pytest's own tmp folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="auditor-test-open-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_store_the_rerun_user_can_read_stops_a_venv_rerun(open_tmp: Path) -> None:
    open_store_dir = open_tmp / "open"
    open_store_dir.mkdir()
    os.chmod(open_store_dir, 0o755)
    with pytest.raises(CouldNotVerify, match="readable by the rerun user"):
        check_hidden_from_rerun_user(open_store_dir)
    os.chmod(open_store_dir, 0o700)
    assert "not readable" in check_hidden_from_rerun_user(open_store_dir)


def test_blocked_for_names_the_closed_folder(open_tmp: Path) -> None:
    closed = open_tmp / "closed"
    (closed / "inner").mkdir(parents=True)
    (closed / "inner" / "f").write_text("x")
    os.chmod(closed, 0o700)
    assert blocked_for(closed / "inner" / "f") == closed
    os.chmod(closed, 0o711)
    assert blocked_for(closed / "inner" / "f") is None
    assert blocked_for(closed) == closed  # traversable, not listable


@pytest.mark.skipif(os.geteuid() != 0, reason="the hand-over chowns only as root")
def test_hand_over_gives_the_rerun_its_copy_and_keeps_inputs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "data" / "sub").mkdir(parents=True)
    (tree / "code.py").write_text("x")
    (tree / "data" / "sub" / "in.csv").write_text("1")
    hand_over(tree, [tree / "data"])
    assert (tree / "code.py").stat().st_uid == 1000
    assert (tree / "data" / "sub" / "in.csv").stat().st_uid == 0
    assert stat.S_IMODE((tree / "data" / "sub" / "in.csv").stat().st_mode) == 0o444
    for folder in (tree, tree / "data", tree / "data" / "sub"):  # above or inside an input
        st = folder.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o1775), folder


def _record(stdout_size: int) -> RunRecord:
    return make_record(
        id="01abc", name="n", argv=("python", "t.py"),
        artifacts=(ArtifactRef(name="logs/stdout.txt", sha256="0" * 64, size=stdout_size,
                               kind="log"),),
    )


def _done(code: int, out: str, err: str) -> Executed:
    return Executed(code, out, err, 1.0, Path("/nonexistent"), seen_as="/work")


def test_a_rerun_that_dies_before_its_first_line_is_auditors_failure() -> None:
    crash = "Traceback (most recent call last):\n  File \"t.py\"\nModuleNotFoundError: x\n"
    assert "ModuleNotFoundError" in (failed_at_start(_record(10), _done(1, "", crash)) or "")
    assert failed_at_start(_record(0), _done(1, "", crash))  # an import error, any time
    assert failed_at_start(_record(10), _done(1, "", "Killed\n"))  # nothing printed at all
    # the training ran and failed on its own: a verdict, not auditor's failure
    assert failed_at_start(_record(10), _done(1, "step 1\n", "ValueError: nan\n")) is None
    assert failed_at_start(_record(0), _done(1, "", "ValueError: nan\n")) is None
    assert failed_at_start(_record(10), _done(0, "", "")) is None
