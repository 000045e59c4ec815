"""The static reading behind `audit preflight`: what a command runs, the local source it
imports, and the facts read from it (files written in tmp_path, parsed, never run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.preflight.facts import scan
from auditor.preflight.source import entry_of, import_closure


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize(("argv", "script", "module"), [
    (["python", "train.py", "--lr", "1"], "train.py", None),
    (["python3.11", "-u", "-X", "dev", "sub/train.py"], "sub/train.py", None),
    (["python", "-m", "pkg.train", "--x"], None, "pkg.train"),
    (["torchrun", "--nproc_per_node", "2", "train.py"], "train.py", None),
    (["accelerate", "launch", "train.py"], "train.py", None),
    (["python", "-c", "print(1)"], None, None),
    (["bash", "run.sh"], None, None),
])
def test_entry_of_finds_the_script_or_module(tmp_path: Path, argv: list[str],
                                             script: str | None, module: str | None) -> None:
    entry = entry_of(argv, tmp_path, env={})
    assert entry.script == ((tmp_path / script).resolve() if script else None)
    assert entry.module == module
    assert entry.roots[0] == ((tmp_path / script).resolve().parent if script else tmp_path)


def test_an_executable_with_a_python_shebang_is_the_script(tmp_path: Path) -> None:
    write(tmp_path, {"train": "#!/usr/bin/env python3\nimport random\n"})
    assert entry_of(["train", "--x"], tmp_path, env={}).script == (tmp_path / "train").resolve()


def test_import_closure_follows_local_imports_only(tmp_path: Path) -> None:
    write(tmp_path, {
        "train.py": "import os, torch\nfrom pkg import model\n"
                    "def f():\n    import late\n",
        "pkg/__init__.py": "",
        "pkg/model.py": "from .layers import dense\nfrom . import util\n",
        "pkg/layers/__init__.py": "",
        "pkg/layers/dense.py": "try:\n    import optional_thing\nexcept ImportError:\n    pass\n",
        "pkg/util.py": "x = 1\n",
        "late.py": "",
        "unused.py": "",
        "broken_user.py": "",
    })
    files, broken = import_closure([tmp_path / "train.py"], [tmp_path])
    names = sorted(str(f.relative_to(tmp_path.resolve())) for f in files)
    assert names == ["late.py", "pkg/__init__.py", "pkg/layers/__init__.py",
                     "pkg/layers/dense.py", "pkg/model.py", "pkg/util.py", "train.py"]
    assert broken == []


def test_a_file_that_does_not_parse_is_named(tmp_path: Path) -> None:
    write(tmp_path, {"train.py": "import bad\n", "bad.py": "def (:\n"})
    files, broken = import_closure([tmp_path / "train.py"], [tmp_path])
    assert broken == [(tmp_path / "bad.py").resolve()] and len(files) == 2


def test_a_hostile_file_is_named_not_a_crash(tmp_path: Path) -> None:
    # nested beyond the parser's depth, not UTF-8, and a FIFO posing as a module
    import os

    write(tmp_path, {"train.py": "import deep, latin, pipe\n",
                     "deep.py": "x = " + "(" * 100_000 + ")" * 100_000 + "\n"})
    (tmp_path / "latin.py").write_bytes(b"x = '\xff\xfe'\n")
    os.mkfifo(tmp_path / "pipe.py")
    files, broken = import_closure([tmp_path / "train.py"], [tmp_path])
    names = {p.name for p in broken}
    assert {"deep.py", "latin.py"} <= names and "pipe.py" not in {p.name for p in files}
    assert scan(files).unparsed


def facts_of(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    write(tmp_path, {"t.py": text})
    return scan([tmp_path / "t.py"], {tmp_path / "t.py": "t.py"})


def test_seeds_and_their_sources(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, "import numpy as np, random, time, torch\n"
                     "np.random.seed(3)\nrandom.seed()\ntorch.manual_seed(int(time.time()))\n"
                     "torch.manual_seed(args.seed)\n")
    assert [str(s) for s in facts.seeds] == ["t.py:2", "t.py:5"]
    assert [str(s) for s in facts.clock_seeds] == ["t.py:3", "t.py:4"]
    assert [(str(s), d) for s, d in facts.seed_options] == [("t.py:5", "seed")]


def test_determinism_switches_through_aliases(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, "import torch.backends.cudnn as cudnn\nimport torch\n"
                     "cudnn.benchmark = True\ncudnn.deterministic = False\n"
                     "torch.use_deterministic_algorithms(True)\nx = torch.zeros(1).cuda()\n")
    assert [str(s) for s in facts.benchmark_on] == ["t.py:3"]
    assert [str(s) for s in facts.deterministic_off] == ["t.py:4"]
    assert [str(s) for s in facts.deterministic_on] == ["t.py:5"]
    assert [str(s) for s in facts.cuda] == ["t.py:6"]


def test_auditor_seed_everything_sets_determinism_and_cublas(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, "import auditor\nauditor.seed_everything(1)\n")
    assert facts.seeds and facts.deterministic_on and facts.cublas_set


def test_data_loader_kwargs_built_in_a_function(tmp_path: Path) -> None:
    # pytorch/examples mnist/main.py builds the loader's keywords in dicts
    facts = facts_of(tmp_path, "import torch\ndef main(use_accel):\n"
                     "    kw = {'batch_size': 64}\n    if use_accel:\n"
                     "        extra = {'num_workers': 1, 'shuffle': True}\n"
                     "        kw.update(extra)\n"
                     "    return torch.utils.data.DataLoader(ds, **kw)\n"
                     "def other():\n    return torch.utils.data.DataLoader(ds, **kw)\n")
    assert [(str(s), w) for s, w in facts.loaders] == [("t.py:7", "num_workers=1")]


def test_paths_options_and_downloads(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, "import argparse, torch\nfrom pathlib import Path\n"
                     "ap = argparse.ArgumentParser()\n"
                     "ap.add_argument('--data-dir', type=Path, default=Path('data/x'))\n"
                     "ap.add_argument('--seed', type=int)\n"
                     "torch.load('ckpt/init.pt')\nopen('out/log.txt', 'w')\n"
                     "torch.save(m, 'out/m.pt')\nds = MNIST('../data', download=True)\n")
    assert [(o.dest, o.default, o.has_default) for o in facts.options] == [
        ("data_dir", "data/x", True), ("seed", Ellipsis, False)]
    assert [p for _, p in facts.paths] == ["ckpt/init.pt", "../data"]
    assert [(str(s), r) for s, r in facts.downloads] == [("t.py:9", "../data")]
