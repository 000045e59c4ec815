"""`audit ui` over HTTP, as a browser or an attacker talks to it: the real server process,
a real store, hostile names, a tampered object, a non-loopback bind, and schemathesis
fuzzing the app's own OpenAPI schema."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditor.store import open_store
from tests.conftest import audit
from tests.uifactory import put_run, sweep
from tests.uiserver import serve

pytestmark = pytest.mark.slow
HOSTILE = "<script>alert(1)</script>"
TEMPLATE = "{{ 7*7 }}"
QUOTES = "\"' onmouseover='alert(2)"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("ui")
    store = open_store(str(root / "store"))
    runs = sweep(store, seeds=2)
    model = root / "model.bin"
    model.write_bytes(b"weights" * 100)
    sha, size = store.blobs.put_file(model)
    from auditor.core.schema import ArtifactRef

    bad = put_run(store, name=HOSTILE, tags=(TEMPLATE, QUOTES),
                  params={HOSTILE: QUOTES, "note": TEMPLATE, "lr": 0.5},
                  final={"</script><b>x": 1.0, "accuracy": 0.1}, series={HOSTILE: [1.0, 2.0]})
    store.put_record(bad.model_copy(update={"artifacts": (
        ArtifactRef(name="outputs/model.bin", sha256=sha, size=size, kind="output"),)}))
    store.close()
    ids = {"hostile": bad.identity.id, "a": runs[0].identity.id, "b": runs[5].identity.id,
           "sha": sha}
    yield root / "store", ids


@pytest.fixture(scope="module")
def url(seeded: tuple[Path, dict[str, str]]) -> Iterator[str]:
    with serve(seeded[0]) as base:
        yield base


def test_security_headers_and_read_only(url: str) -> None:
    r = httpx.get(url + "/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1] \
        .split(";")[0] and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in re.sub(r'<script src="/static/[^"]+"></script>', "", r.text)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert httpx.request(method, url + "/api/runs").status_code == 405
    # DNS rebinding: a page served for another Host name is refused
    assert httpx.get(url + "/", headers={"Host": "evil.example"}).status_code == 400


def test_hostile_names_are_escaped_everywhere(url: str, seeded: tuple[Path, dict[str, str]]
                                              ) -> None:
    ids = seeded[1]
    pages = [httpx.get(url + "/").text,
             httpx.get(url + f"/runs/{ids['hostile']}").text,
             httpx.get(url + f"/compare?runs={ids['hostile']},{ids['a']}").text,
             httpx.get(url + "/", params={"where": "name ~ script", "col": "params.note"}).text]
    for page in pages:
        assert HOSTILE not in page and "<b>x" not in page
        assert "onmouseover='alert" not in page and "49" not in re.findall(r">([^<]*)<", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert TEMPLATE in pages[3] or "{{ 7*7 }}" in pages[0]  # literal, never evaluated
    # JSON in a script tag: no "</script" can close it, and it parses back to the name
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', pages[2],
                     re.S)
    assert data is not None and "</" not in data.group(1)
    assert json.loads(data.group(1))["runs"][0]["name"] == HOSTILE
    # the JSON API returns the name as data
    runs = httpx.get(url + "/api/runs", params={"where": "name ~ script"}).json()["runs"]
    assert [r["name"] for r in runs] == [HOSTILE]


def test_artifact_download_by_id_rechecks_digest(url: str,
                                                 seeded: tuple[Path, dict[str, str]]) -> None:
    store_dir, ids = seeded
    got = httpx.get(url + f"/api/runs/{ids['hostile']}/artifacts/{ids['sha']}")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == ids["sha"]
    # an object of another run, a path, a traversal: never served
    assert httpx.get(url + f"/api/runs/{ids['a']}/artifacts/{ids['sha']}").status_code == 404
    assert httpx.get(url + f"/api/runs/{ids['hostile']}/artifacts/..%2f..%2fstore.db"
                     ).status_code == 404
    assert httpx.get(url + "/static/../store.db").status_code == 404
    assert httpx.get(url + "/runs/..%2f..%2fetc%2fpasswd").status_code in (400, 404)
    # the object edited behind our back: refused, not served
    obj = store_dir / "objects" / "sha256" / ids["sha"][:2] / ids["sha"][2:]
    obj.chmod(0o644)
    obj.write_bytes(b"tampered" * 100)
    bad = httpx.get(url + f"/api/runs/{ids['hostile']}/artifacts/{ids['sha']}")
    assert bad.status_code == 409 and "altered" in bad.json()["error"]


def test_bad_input_is_a_4xx_with_one_message(url: str) -> None:
    r = httpx.get(url + "/api/runs", params={"where": "params.lr <<"})
    assert r.status_code == 400 and "bad filter clause" in r.json()["error"]
    assert httpx.get(url + "/compare").status_code == 400
    assert httpx.get(url + "/runs/zzzzzzzz").status_code == 404
    assert httpx.get(url + "/api/runs", params={"size": 10**6}).status_code == 422


def test_non_loopback_bind_needs_a_token(tmp_path: Path,
                                         seeded: tuple[Path, dict[str, str]]) -> None:
    out = audit("--store", str(seeded[0]), "ui", "--host", "0.0.0.0", "--port", "1",
                cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: refusing to serve on 0.0.0.0 without a token")
    assert len(out.stderr.strip().splitlines()) == 1
    short = audit("--store", str(seeded[0]), "ui", "--token", "abc", cwd=tmp_path, timeout=60)
    assert short.returncode == 2 and "too short" in short.stderr


def test_token_is_required_on_every_request(seeded: tuple[Path, dict[str, str]]) -> None:
    token = "t0ken-" + "x" * 20
    with serve(seeded[0], token=token) as base:
        assert httpx.get(base + "/api/runs").status_code == 401
        assert httpx.get(base + "/api/runs", headers={"Authorization": "Bearer nope"}
                         ).status_code == 401
        assert httpx.get(base + "/api/runs", headers={"Authorization": f"Bearer {token}"}
                         ).status_code == 200
        with httpx.Client() as client:
            first = client.get(base + "/", params={"token": token})
            assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
            assert client.get(base + "/api/runs").status_code == 200  # the cookie carries it


def test_schemathesis_finds_no_server_error(url: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=120)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query}: "
                                f"{response.status_code}")

        fuzz()
    assert failures == []
    assert len(calls) > 100 and {200, 400, 404} <= set(calls)
