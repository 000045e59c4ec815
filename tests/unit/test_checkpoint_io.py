"""Checkpoints in the training process (issue 19 items 1-2), in-process with real torch:
the round trip is bitwise (model, Adam state, scheduler, every RNG, the data-loader
generator), the files are safetensors and JSON written tensor by tensor (no pickle, no
checkpoint-sized Python buffer), and a checkpoint that does not fit the model, is altered
or is absent ends the process with one line and its exit code."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from auditor.record import checkpoint_io as cio
from auditor.record.checkpoints import checkpoint_error, diff_states


class Probe(cio.CheckpointMixin):
    """A run object with only the checkpoint part (spool in a folder, nothing stored)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ended = False
        self.stored: list[tuple[int, str]] = []

    def _spool_root(self) -> Path:
        return self.root

    def _stored(self, folder: Path, step: int, kind: str, files: Any) -> None:
        self.stored.append((step, kind))

    def _metrics_so_far(self) -> dict[str, tuple[int, float]]:
        return {"loss": (3, 0.25)}

    def end(self, status: str = "finished") -> None:
        self.wait_checkpoints()
        self.ended = True


def build(hidden: int = 16, seed: int = 0) -> tuple[Any, ...]:
    torch.manual_seed(seed)
    x = torch.randn(60, 4)
    y = (x.sum(1) > 0).long()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched, gen, loader


def train(model: Any, opt: Any, sched: Any, loader: Any, epochs: int) -> list[float]:
    losses = []
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            noise = random.random() * 1e-3 + float(np.random.rand()) * 1e-3
            loss = torch.nn.functional.cross_entropy(model(xb + noise), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
    return losses


def draws(gen: torch.Generator) -> tuple[Any, ...]:
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(),
            torch.rand(2, generator=gen).tolist())


def test_round_trip_is_bitwise_and_restores_every_rng(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    random.seed(1)
    np.random.seed(1)
    model, opt, sched, gen, loader = build()
    train(model, opt, sched, loader, 3)
    run = Probe(tmp_path / "a")
    assert run.checkpoint(3, model=model, optimizer=opt, scheduler=sched, generators=[gen],
                          extra={"epoch": 2})
    run.wait_checkpoints()
    expected_draws = draws(gen)  # what the uninterrupted process draws next
    after = train(model, opt, sched, loader, 2)

    folder = tmp_path / "a" / "step-00000003"
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["step"] == 3 and set(manifest["files"]) == {
        "model.safetensors", "optimizer.safetensors", "state.json"}
    # the optimizer tensors are named by parameter: the diff can name them
    assert "0.weight/exp_avg" in manifest["state"]["optimizer"]["tensors"]

    # a fresh process state: other seeds, other weights, other RNG positions
    random.seed(99)
    np.random.seed(99)
    model2, opt2, sched2, gen2, loader2 = build()  # same data, untrained weights
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    monkeypatch.setenv(cio.RESUME_ENV, str(folder))
    resumer = Probe(tmp_path / "b")
    assert resumer.resume(model2, opt2, scheduler=sched2, generators=[gen2]) == 3
    assert resumer.resumed_extra == {"epoch": 2}
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert n and a.shape == b.shape
    # the restored state snapshot equals the recorded one, part by part
    restored = json.loads((tmp_path / "b" / "resumed-00000003" / "manifest.json").read_bytes())
    assert restored["kind"] == "resumed" and restored["files"] == {}
    assert diff_states(manifest["state"], restored["state"]) == []
    assert draws(gen2) == expected_draws  # Python, numpy, torch CPU and the generator
    # ...and training on (both after the same draws) gives the same losses, bit for bit
    assert train(model2, opt2, sched2, loader2, 2) == after


def test_files_are_safetensors_and_json_written_tensor_by_tensor(tmp_path: Path) -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(16)])  # ~16 MB
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    run = Probe(tmp_path)
    size = sum(p.numel() * 4 for p in model.parameters())
    small = torch.nn.Linear(2, 2)
    run.checkpoint(0, model=small, optimizer=torch.optim.SGD(small.parameters()))  # warm
    run.wait_checkpoints()  # (lazy imports and caches of a first call are not the point)
    tracemalloc.start()  # the call, and the background thread hashing it (1 MB chunks)
    run.checkpoint(1, model=model, optimizer=opt)
    run.wait_checkpoints()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # model + momentum: 2 x 16.8 MB; a serialiser building the file in memory needs more
    assert peak < 4 << 20, f"{peak} bytes of Python buffers for a 2 x {size}-byte checkpoint"
    folder = tmp_path / "step-00000001"
    for name in ("model.safetensors", "optimizer.safetensors"):
        head = (folder / name).read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02") and head[:1] != b"\x80"  # no zip, no pickle
    # the safetensors package reads our streamed files, tensor for tensor
    loaded = load_file(folder / "model.safetensors")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded[name], t)
    momentum = load_file(folder / "optimizer.safetensors")
    assert torch.equal(momentum["0.weight/momentum_buffer"],
                       opt.state[model[0].weight]["momentum_buffer"])
    state = json.loads((folder / "state.json").read_bytes())
    assert state["step"] == 1 and "torch_cpu" in state["rng"]


def run_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: Path, *objs: Any,
               **kw: Any) -> int:
    monkeypatch.setenv(cio.RESUME_ENV, str(folder))
    return Probe(tmp_path / "resumer").resume(*objs, **kw)


def saved(tmp_path: Path) -> tuple[Path, tuple[Any, ...]]:
    model, opt, sched, gen, loader = build()
    train(model, opt, sched, loader, 1)
    run = Probe(tmp_path / "orig")
    run.checkpoint(3, model=model, optimizer=opt, scheduler=sched, generators=[gen])
    run.wait_checkpoints()
    return tmp_path / "orig" / "step-00000003", (model, opt, sched, gen, loader)


def test_a_model_that_does_not_fit_is_named_exit_2(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder, _ = saved(tmp_path)
    model, opt, sched, gen, _loader = build(hidden=8)
    with pytest.raises(SystemExit) as exc:
        run_resume(tmp_path, monkeypatch, folder, model, opt, scheduler=sched, generators=[gen])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor `0.weight` has shape [16, 4] in the checkpoint, [8, 4]" \
        in err[0], err


def test_a_forgotten_generator_and_a_missing_checkpoint_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder, (model, opt, sched, _gen, _loader) = saved(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_resume(tmp_path, monkeypatch, folder, model, opt, scheduler=sched)
    assert exc.value.code == 2
    assert "holds 1 generator state(s), resume was given 0" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        run_resume(tmp_path, monkeypatch, tmp_path / "empty", model, opt)
    assert exc.value.code == 2
    assert "resume requested but no checkpoint in" in capsys.readouterr().err
    # under a recorder the same line is left in the probe folder for the verifier
    monkeypatch.setenv("AUDITOR_PROBE_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        run_resume(tmp_path, monkeypatch, tmp_path / "empty", model, opt)
    found = checkpoint_error(tmp_path)
    assert found is not None and found[0] == 2 and "no checkpoint in" in found[1]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_an_altered_or_truncated_checkpoint_exit_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], damage: str) -> None:
    folder, (model, opt, sched, gen, _loader) = saved(tmp_path)
    target = folder / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[-3] ^= 1
    else:
        del data[-10:]
    target.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exc:
        run_resume(tmp_path, monkeypatch, folder, model, opt, scheduler=sched, generators=[gen])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "checkpoint step 3: file optimizer.safetensors" in err
    assert ("altered" if damage == "flip" else "truncated") in err


def test_not_resuming_returns_0_and_every_skips(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cio.RESUME_ENV, raising=False)
    model, opt, *_ = build()
    run = Probe(tmp_path)
    assert run.resume(model, opt) == 0
    assert run.checkpoint(5, model=model, every=10) is False
    assert run.checkpoint(10, model=model, every=10) is True
    assert run.checkpoint(10, model=model) is False  # not after the last one
    run.wait_checkpoints()
    assert run.stored == [(10, "api")]


def test_stop_at_ends_the_process_cleanly_after_writing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cio.STOP_ENV, "6")
    model, opt, *_ = build()
    run = Probe(tmp_path)
    assert run.checkpoint(3, model=model, optimizer=opt)
    with pytest.raises(SystemExit) as exc:
        run.checkpoint(6, model=model, optimizer=opt)
    assert exc.value.code == 0 and run.ended
    assert (tmp_path / "step-00000006" / "manifest.json").is_file()


def test_diff_names_the_optimizer_tensor_the_rng_and_an_untracked_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, (model, opt, sched, _gen, loader) = saved(tmp_path)
    original = json.loads((folder / "manifest.json").read_bytes())["state"]
    assert original["untracked_generators"] == {}  # the loader's generator was passed
    changed = json.loads(json.dumps(original))
    changed["optimizer"]["tensors"]["3.bias/exp_avg"]["sha256"] = "0" * 64
    changed["rng"]["torch_cpu"] = "1" * 64
    changed["scheduler"]["sha256"] = "2" * 64
    changed["scheduler"]["state"]["last_epoch"] = 0
    messages = [d.message for d in diff_states(original, changed)]
    assert "optimizer state `exp_avg` of `3.bias` differs" in messages
    assert "torch CPU RNG state differs" in messages
    assert any(m.startswith("scheduler state `last_epoch` differs") for m in messages)

    # a run that does not pass its DataLoader's generator: the resumed state shows it
    run = Probe(tmp_path / "forgot")
    run.checkpoint(3, model=model, optimizer=opt, scheduler=sched)
    run.wait_checkpoints()
    forgot = json.loads((tmp_path / "forgot" / "step-00000003" / "manifest.json").read_bytes())
    assert list(forgot["state"]["untracked_generators"]) == [
        "DataLoader `loader` (TensorDataset, batch_size=20)"]
    del loader  # the original's loader is gone, as in a new process
    assert restart(tmp_path, monkeypatch, tmp_path / "forgot" / "step-00000003") == 3
    resumed = json.loads((tmp_path / "resumer" / "resumed-00000003" / "manifest.json")
                         .read_bytes())
    found = diff_states(forgot["state"], resumed["state"])
    assert [d.part for d in found] == ["untracked_generator"], found
    assert "not checkpointed" in found[0].message


def restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: Path) -> int:
    """A restarted script: a fresh loader (its generator at its seed), resumed."""
    model, opt, sched, _gen, loader = build()
    assert loader is not None
    return run_resume(tmp_path, monkeypatch, folder, model, opt, scheduler=sched)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_registered_checkpoint_file_is_kept_with_per_tensor_digests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    from safetensors.torch import save_file

    model, _opt, *_ = build()
    path = tmp_path / ("last.pt" if fmt == "torch" else "last.safetensors")
    if fmt == "torch":
        torch.save({"model": model.state_dict(), "rng": torch.get_rng_state()}, path)
    else:
        save_file(model.state_dict(), str(path))
    run = Probe(tmp_path / "spool")
    run.log_checkpoint(path, 7)
    path.write_bytes(b"overwritten by the next save")  # our copy was taken at the call
    run.wait_checkpoints()
    folder = tmp_path / "spool" / "step-00000007"
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["kind"] == "registered" and list(manifest["files"]) == [f"files/{path.name}"]
    tensors = manifest["state"]["tensors"]
    key = "model/0.weight" if fmt == "torch" else "0.weight"
    assert tensors[key]["shape"] == [16, 4]
    if fmt == "torch":
        assert "rng" in tensors  # the script's own RNG tensor, digested like any other
    monkeypatch.setenv(cio.RESUME_ENV, str(folder))
    again = Probe(tmp_path / "again")
    restored = again.resume_file()
    assert restored is not None and again.resumed_step == 7
    assert restored.read_bytes() != b"overwritten by the next save"


def test_the_attached_api_loads_and_checkpoints_with_the_standard_library_alone(
        tmp_path: Path) -> None:
    """Inside a rerun only the mounted package is on the path: no pydantic, SQLAlchemy,
    numpy or torch. `python -S` with the repository alone on its path stands for it."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    probe = tmp_path / "probe"
    probe.mkdir()
    code = ("import sys, auditor\n"
            "run = auditor.start_run(params={'a': 1})\n"
            "assert type(run).__name__ == 'AttachedRun', run\n"
            "assert run.resume() == 0\n"
            "assert run.checkpoint(4, extra={'epoch': 0})\n"
            "run.end()\n"
            "heavy = {'pydantic', 'sqlalchemy', 'numpy', 'torch'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    env = {"PYTHONPATH": str(repo), "AUDITOR_RUN_ID": "0" * 26,
           "AUDITOR_PROBE_DIR": str(probe), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((probe / "checkpoints" / "step-00000004" / "manifest.json")
                          .read_bytes())
    assert manifest["step"] == 4 and list(manifest["files"]) == ["state.json"]


def test_a_small_checkpoint_encoded_in_memory_is_the_streamed_files_byte_for_byte(
        tmp_path: Path) -> None:
    """The in-memory path a store-owning run takes (``encode`` + ``build_manifest``) and
    the spooled files of the streaming path give the same bytes and the same manifest."""
    model, opt, sched, gen, loader = build()
    train(model, opt, sched, loader, 2)
    with torch.no_grad():  # a non-contiguous view: its bytes come from a fresh copy
        model[0].weight.set_(model[0].weight.detach().t().contiguous().t())
    assert not model[0].weight.is_contiguous()
    captured = cio.capture_api(2, model=model, optimizer=opt, scheduler=sched,
                               generators=[gen], extra={"epoch": 1}, metrics={"loss": (2, 0.5)},
                               loaders=None)
    encoded = captured.encode()
    files = captured.write(tmp_path / "spool")
    assert list(encoded) == list(files)
    for name, path in files.items():
        assert encoded[name] == path.read_bytes(), name
    assert cio.build_manifest(2, "api", encoded, captured.state) == cio.build_manifest(
        2, "api", files, captured.state) == cio.build_manifest(2, "api", files)
    loaded = load_file(str(files["model.safetensors"]))
    assert torch.equal(loaded["0.weight"], model[0].weight.detach())


def test_a_large_checkpoint_of_non_contiguous_tensors_writes_their_own_bytes(
        tmp_path: Path) -> None:
    """A streamed (large) checkpoint of tensors whose bytes need a copy first (a transposed
    weight here; a GPU tensor's CPU copy likewise): each copy lives until it is written."""
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048, bias=False),
                                torch.nn.Linear(2048, 2048, bias=False))  # 32 MB: streamed
    with torch.no_grad():
        for layer in model:
            layer.weight.set_(layer.weight.detach().t().contiguous().t())
    assert model[0].weight.nbytes > cio.SMALL_CHECKPOINT // 2
    run = Probe(tmp_path)
    assert run.checkpoint(1, model=model)
    run.wait_checkpoints()
    loaded = load_file(str(tmp_path / "step-00000001" / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
