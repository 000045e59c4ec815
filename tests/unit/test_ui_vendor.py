"""The dashboard's shipped JavaScript: pinned, licensed, and matching its sha256 manifest."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

from auditor.ui.app import STATIC, static_bytes

VENDOR = resources.files("auditor.ui") / "static" / "vendor"


def test_vendored_files_match_their_manifest() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    assert manifest["package"] == "echarts" and manifest["license"] == "Apache-2.0"
    names = {p.name for p in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert names == set(manifest["sha256"])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (VENDOR / "LICENSE-echarts").read_text()
    assert f"vendor/echarts-{manifest['version']}.min.js" in STATIC


def test_no_script_loads_from_elsewhere() -> None:
    for name in STATIC:
        text = static_bytes(name).decode()
        assert "cdn." not in text.lower() or name.startswith("vendor/")
    app = static_bytes("app.js").decode()
    assert "innerHTML" not in app and "eval(" not in app and "http" not in app
