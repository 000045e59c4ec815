"""The dashboard's batch pages, served by the real `audit ui` over a real store: the
batches list, one batch with each run's badge, node, GPU, seconds, rerun and report
links, the same as JSON; hostile text from the store is escaped, a hostile report link
is not a link, an unknown batch is a 400 page, and nothing writes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from auditor.store import open_store
from auditor.store.batches import ItemResult
from tests.uiserver import serve

P, L = "p" * 64, "l" * 64


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    location = tmp_path_factory.mktemp("ui-batches") / "store"
    store = open_store(str(location))
    tables = store.batches()
    tables.create("gh-1-1", policy_sha256=P, shards=2, executor="github")
    tables.add_items("gh-1-1", [("a" * 26, 1), ("b" * 26, 2), ("c" * 26, 2)])
    for run, result in (("a" * 26, ItemResult(
            "reproduced-bitwise", 0, node="node-7", gpu="NVIDIA H100 80GB HBM3", seconds=61.25,
            rerun_id="r" * 26, certificate_sha256="f" * 64,
            reports=("https://ci.example/r/a.html",))),
                        ("b" * 26, ItemResult(
            "could-not-verify", 3, node="<script>alert(1)</script>", gpu="cpu", seconds=2.0,
            reports=("javascript:alert(1)",), message="no engine <b>answered</b>"))):
        assert tables.claim("gh-1-1", run, P, L, worker="w", lease_s=60).owned
        tables.finish("gh-1-1", run, P, L, result, worker="w")
    store.close()
    with serve(location) as base:
        yield base


def test_batches_list_and_one_batch_with_badges(url: str) -> None:
    listed = httpx.get(f"{url}/batches", timeout=30)
    assert listed.status_code == 200
    assert 'href="/batches/gh-1-1"' in listed.text and "1 reproduced-bitwise" in listed.text
    page = httpx.get(f"{url}/batches/gh-1-1", timeout=30).text
    assert 'class="badge reproduced-bitwise">✅ reproduced (bitwise)' in page
    assert 'class="badge could-not-verify">⚠️ could not verify' in page
    assert 'class="badge pending">⏳ pending' in page
    assert "node-7" in page and "NVIDIA H100 80GB HBM3" in page and "61.2" in page
    assert f'href="/runs/{"r" * 26}"' in page
    assert 'href="https://ci.example/r/a.html"' in page


def test_hostile_store_text_is_escaped_and_not_a_link(url: str) -> None:
    page = httpx.get(f"{url}/batches/gh-1-1", timeout=30).text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "<b>answered</b>" not in page
    assert 'href="javascript:' not in page and "<code>javascript:alert(1)</code>" in page


def test_batch_api_and_unknown_batch(url: str) -> None:
    data = httpx.get(f"{url}/api/batches/gh-1-1", timeout=30).json()
    assert data["batch"]["states"] == {"done": 1, "failed": 1, "pending": 1}
    by_run = {i["run_id"]: i for i in data["items"]}
    assert by_run["a" * 26]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert by_run["b" * 26]["badge"] == "⚠️ could not verify"
    assert [b["id"] for b in httpx.get(f"{url}/api/batches", timeout=30).json()] == ["gh-1-1"]
    missing = httpx.get(f"{url}/batches/nope", timeout=30)
    assert missing.status_code == 400 and "no batch" in missing.text
    bad = httpx.get(f"{url}/api/batches/..%2F..", timeout=30)
    assert bad.status_code in (400, 404)
    assert httpx.post(f"{url}/api/batches", timeout=30).status_code in (403, 405)

