"""`audit batch show|list` over a real store: one row per run with its verdict, node, GPU
and seconds; one JUnit file for the whole batch (a run that could not be verified is an
error suite, skipped runs are counted); exit codes like verify; an unknown or malformed
batch id is one line, exit 2; hostile text is escaped on the terminal."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from auditor.store import open_store
from auditor.store.batches import ItemResult
from tests.conftest import audit

P, L = "p" * 64, "l" * 64


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    location = tmp_path / "store"
    store = open_store(str(location))
    t = store.batches()
    t.create("nightly-1", policy_sha256=P, shards=2, executor="slurm")
    t.add_items("nightly-1", [("a" * 26, 1), ("b" * 26, 2), ("c" * 26, 1)])
    assert t.claim("nightly-1", "b" * 26, P, L, worker="w", lease_s=60).owned
    t.finish("nightly-1", "b" * 26, P, L, ItemResult(
        "could-not-verify", 3, node="gpu-node-\x1b[31m3", gpu="NVIDIA A100-SXM4-80GB",
        seconds=4.5, message="no node has an NVIDIA A100-SXM4-80GB"), worker="w")
    t.skip("nightly-1", "c" * 26, "has certificate 0123456789ab… under this policy")
    t.create("empty", policy_sha256=P)
    store.close()
    return location


def test_show_lists_each_run_and_exits_like_verify(store_dir: Path, tmp_path: Path) -> None:
    junit, md = tmp_path / "junit.xml", tmp_path / "summary.md"
    res = audit("--store", str(store_dir), "batch", "show", "nightly-1", "--junit", str(junit),
                "--markdown", str(md), cwd=tmp_path)
    assert res.returncode == 3, res.stderr  # a could-not-verify (and a pending run)
    out = res.stdout
    assert "executor slurm" in out and "3 runs: 1 failed, 1 pending, 1 skipped" in out
    assert "NVIDIA A100-SXM4-80GB" in out and "4.5" in out and "\x1b" not in out
    assert "gpu-node-\\x1b[31m3" in out  # escaped, not a colour
    root = ET.parse(junit).getroot()
    assert (root.get("errors"), root.get("failures"), root.get("skipped")) == ("1", "0", "1")
    error = root.find("testsuite/testcase/error")
    assert error is not None and "no node has an NVIDIA A100" in error.get("message", "")
    assert "could not verify" in md.read_text() and "skipped" in md.read_text()
    data = json.loads(audit("--store", str(store_dir), "--json", "batch", "show", "nightly-1",
                            cwd=tmp_path).stdout)
    assert {i["run_id"][:1]: i["state"] for i in data["items"]} == {
        "a": "pending", "b": "failed", "c": "skipped"}


def test_an_empty_batch_passes_and_list_counts(store_dir: Path, tmp_path: Path) -> None:
    res = audit("--store", str(store_dir), "batch", "show", "empty", cwd=tmp_path)
    assert res.returncode == 0 and "0 runs" in res.stdout
    listed = audit("--store", str(store_dir), "batch", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert "nightly-1" in listed.stdout and "1 failed, 1 pending, 1 skipped" in listed.stdout


@pytest.mark.parametrize(("batch", "message"), [("nope", "no batch 'nope'"),
                                                ("../etc", "invalid batch id")])
def test_unknown_or_malformed_batch_is_one_line_exit_2(store_dir: Path, tmp_path: Path,
                                                       batch: str, message: str) -> None:
    res = audit("--store", str(store_dir), "batch", "show", batch, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
