"""The `docker run` line of `audit record --in-image` and where its probe file is found."""

from __future__ import annotations

import json
from pathlib import Path

from auditor.record import container
from auditor.record.capture import determinism as det
from auditor.record.capture.python_env import image_interpreter

IMAGE = container.Image(ref="demo:1", image_id="sha256:" + "ab" * 32, docker="/usr/bin/docker")


def test_values_never_reach_the_command_line_and_host_variables_stay_out(tmp_path: Path
                                                                       ) -> None:
    child = {"PATH": "/host/bin", "HOME": "/root", "VIRTUAL_ENV": "/v", "PYTHONPATH": "/x",
             "MY_TOKEN": "s3cr3t-value", "OMP_NUM_THREADS": "2", "BASH_FUNC_f%%": "() { :; }"}
    inner = container.container_env(child)
    assert inner == {"MY_TOKEN": "s3cr3t-value", "OMP_NUM_THREADS": "2",
                     "PYTHONPATH": f"{container.PROBE_LIB}:{container.API_LIB}"}
    tree = tmp_path / "a,b tree"
    (tree / "sub").mkdir(parents=True)
    argv = container.run_argv(IMAGE, ["python", "t.py"], cwd=tree / "sub", tree=tree,
                              probe=tmp_path, names=sorted(inner), run_id="r1")
    assert not any("s3cr3t" in a or a.startswith("/host") for a in argv)
    passed = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert passed == ["MY_TOKEN", "OMP_NUM_THREADS", "PYTHONPATH"]
    # the tree at its own path, the comma quoted as docker's CSV parser reads it
    assert f'"source={tree.resolve()}"' in argv[argv.index("--mount") + 1]
    assert argv[argv.index("--workdir") + 1] == str(tree / "sub")
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[-3:] == [IMAGE.image_id, "python", "t.py"] and "--init" in argv


def test_the_in_container_probe_file_is_found_by_its_parent(tmp_path: Path) -> None:
    # the command is docker-init's child (ppid 1); a worker it spawned sorts first by name
    (tmp_path / "determinism-12.json").write_text(json.dumps({"pid": 12, "ppid": 7}))
    (tmp_path / "determinism-7.json").write_text(json.dumps({"pid": 7, "ppid": 1}))
    found = det.read_probe(tmp_path, None, parent_pid=container.INIT_PARENT_PID)
    assert found is not None and found["pid"] == 7
    assert det.read_probe(tmp_path, 12) == {"pid": 12, "ppid": 7}


def test_the_image_interpreter_is_looked_up_in_the_image(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text("#!/usr/bin/env python3\n")
    assert image_interpreter(["python", "t.py"]) == ("python", None)
    assert image_interpreter([str(script)]) == ("python3", None)  # not the host's python3
    interp, note = image_interpreter(["sh", "-c", "python t.py"])
    assert interp == "python" and note and "image's python" in note
