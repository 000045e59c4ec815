"""``core.safefile``: the one writer of user-named files (issue 16 item 11), on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from auditor.core.errors import InputError
from auditor.core.safefile import check_folder, check_target, write_new, write_target


def test_write_target_replaces_a_regular_file_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "out.txt"
    write_target(path, b"one")
    write_target(path, b"two", 0o600)
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temp left


@pytest.mark.parametrize("kind", ["link to a file", "dangling link", "link to a folder",
                                  "fifo", "folder"])
def test_a_special_target_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    path = tmp_path / "target"
    if kind == "link to a file":
        path.symlink_to(victim)
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "link to a folder":
        path.symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    before = os.lstat(path)
    with pytest.raises(InputError, match="refusing to replace a"):
        write_target(path, b"x")
    with pytest.raises(InputError, match="refusing to replace a"):
        check_target(path)
    assert (os.lstat(path).st_mode, os.lstat(path).st_ino) == (before.st_mode, before.st_ino)
    assert victim.read_text() == "keep\n" and not (tmp_path / "nowhere").exists()


def test_write_new_never_replaces_even_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "a.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(InputError, match="already exists"):
        write_new(tmp_path / "a.key", b"secret", 0o600)
    assert not (tmp_path / "elsewhere.key").exists()
    write_new(tmp_path / "b.key", b"secret", 0o600)
    assert stat.S_IMODE((tmp_path / "b.key").stat().st_mode) == 0o600
    with pytest.raises(InputError, match="already exists"):
        write_new(tmp_path / "b.key", b"other", 0o600)
    assert (tmp_path / "b.key").read_bytes() == b"secret"


def test_check_folder_refuses_a_link_a_file_and_a_file_above(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for bad in ("file", "link"):
        with pytest.raises(InputError, match="refusing to write into a"):
            check_folder(tmp_path / bad)
    for under in ("file/sub", "dangling/sub"):
        with pytest.raises(InputError, match="not a folder"):
            check_folder(tmp_path / under)
    check_folder(tmp_path / "new" / "folder")  # missing: fine, made when written
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "link"]


def test_a_folder_that_takes_no_file_is_refused_before_writing() -> None:
    with pytest.raises(InputError, match="/proc/self/mem: cannot write"):
        check_target(Path("/proc/self/mem"))
    with pytest.raises(InputError, match="/proc/self/mem: cannot write"):
        write_target(Path("/proc/self/mem"), b"x")


def test_a_file_in_the_way_of_the_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for write in (lambda p: write_target(p, b"x"), check_target):
        with pytest.raises(InputError, match="file is a regular file, not a folder"):
            write(tmp_path / "file" / "out.html")
