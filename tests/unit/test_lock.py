"""Lockfile parsing, compiling and checks (T16, T18, T19, T20) on real and bad fixtures."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from auditor.core.errors import LockfileError
from auditor.core.lockfile import (
    LOCK_SCHEMA_VERSION,
    Lock,
    check_python_compat,
    drift,
    find_project_lockfile,
    parse_conda_lock,
    parse_requirements_lock,
    sha256_text,
)
from auditor.env.lock import compile_lock, lock_from_packages

ROOT = Path(__file__).resolve().parents[2]
PIP = ROOT / "fixtures" / "locks" / "pip"
CONDA = ROOT / "fixtures" / "locks" / "conda"
MLOPS = CONDA / "mlops-kickoff.conda-lock.yml"
MULTI = CONDA / "repro-course-ci.conda-lock.yml"
TORCH_WHEEL_SHA = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"
H1 = "a" * 64
H2 = "b" * 64


def _parse(text: str, **kwargs: object) -> Lock:
    return parse_requirements_lock(text, **kwargs)  # type: ignore[arg-type]


def _error(text: str, **kwargs: object) -> str:
    with pytest.raises(LockfileError) as info:
        _parse(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


# ---- good requirements locks ---------------------------------------------------------


def test_small_fixture_parses_with_hashes_python_and_digest() -> None:
    text = (PIP / "small.requirements.lock").read_text()
    lock = _parse(text, name="small.requirements.lock")
    assert lock.kind == "pip" and lock.schema_version == LOCK_SCHEMA_VERSION
    assert [(p.name, p.version, p.line) for p in lock.packages] == [("six", "1.17.0", 7)]
    assert len(lock.packages[0].hashes) == 2
    assert lock.python == "3.11"
    assert lock.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert lock.text == text and lock.hashed


def test_torch_fixture_pins_the_local_cpu_wheel_by_its_hash() -> None:
    lock = _parse((PIP / "torch-cpu.requirements.lock").read_text())
    torch = next(p for p in lock.packages if p.name == "torch")
    assert torch.version == "2.13.0+cpu"
    assert torch.hashes == (f"sha256:{TORCH_WHEEL_SHA}",)
    assert {"sympy", "networkx", "setuptools", "typing-extensions"} <= lock.versions().keys()


def test_continuations_comments_markers_and_names_are_normalized() -> None:
    text = (f"# header\n\nTyping_Extensions==4.16.0 \\\n    --hash=sha256:{H1} \\\n"
            f"    --hash sha256:{H2}  # trailing comment\n"
            f'    # via torch\ncolorama==0.4.6 ; sys_platform == "win32" \\\n'
            f"    --hash=sha256:{H1}\n")
    lock = _parse(text)
    first, second = lock.packages
    assert (first.name, first.hashes, first.line) == (
        "typing-extensions", (f"sha256:{H1}", f"sha256:{H2}"), 3)
    assert (second.name, second.markers, second.line) == ("colorama", 'sys_platform == "win32"', 7)


def test_url_with_hash_and_wheel_name_is_accepted() -> None:
    url = "https://example.org/wheels/six-1.17.0-py2.py3-none-any.whl"
    lock = _parse(f"{url} --hash=sha256:{H1}\n")
    assert (lock.packages[0].name, lock.packages[0].version) == ("six", "1.17.0")


def test_index_and_find_links_lines_are_kept_without_credentials() -> None:
    text = ("--index-url https://alice:s3cret-token@pypi.example.org/simple\n"
            "--extra-index-url=https://__token__:pypi-AgEI@extra.example.org/simple\n"
            "--find-links /opt/wheels\n--trusted-host pypi.example.org\n"
            f"six==1.17.0 --hash=sha256:{H1}\n")
    lock = _parse(text)
    dumped = lock.model_dump_json()
    assert "s3cret-token" not in dumped and "pypi-AgEI" not in dumped and "alice" not in dumped
    assert lock.index_urls == ("https://pypi.example.org/simple", "https://extra.example.org/simple")
    assert lock.find_links == ("/opt/wheels",)
    assert lock.sha256 == sha256_text(lock.text)


def test_allow_unhashed_accepts_a_fully_unhashed_lock() -> None:
    lock = _parse("six==1.17.0\nidna==3.10\n", allow_unhashed=True)
    assert not lock.hashed and len(lock.packages) == 2


# ---- refused requirements locks (T16, T19, malformed) ----------------------------------


@pytest.mark.parametrize(("fixture", "line", "phrase"), [
    ("unhashed.txt", 4, "`idna==3.10` has no --hash"),
    ("loose.txt", 2, "`numpy>=1` is not pinned"),
    ("editable.txt", 2, "editable install `-e .`"),
    ("vcs.txt", 2, "VCS requirement"),
    ("bare-url.txt", 2, "has no --hash, so its content is not pinned"),
    ("malformed.txt", 2, "cannot parse `six=1.17.0`"),
    ("bad-hash.txt", 2, "malformed hash `sha256:4721f391`"),
    ("nested.txt", 2, "nested include `-r base.txt`"),
])
def test_bad_fixture_is_refused_naming_the_line(fixture: str, line: int, phrase: str) -> None:
    message = _error((PIP / "bad" / fixture).read_text(), name=fixture)
    assert f"{fixture} line {line}:" in message
    assert phrase in message


def test_unhashed_line_is_refused_even_when_allowed_if_others_are_hashed() -> None:
    message = _error((PIP / "bad" / "unhashed.txt").read_text(), allow_unhashed=True)
    assert "pip checks hashes on every line or on none" in message


@pytest.mark.parametrize(("text", "phrase"), [
    ("numpy==1.*\n", "is not pinned"),
    ("numpy>=1,<2\n", "is not pinned"),
    ("foo @ git+https://github.com/a/foo@abc\n", "VCS requirement"),
    ("./dist/foo-1.0-py3-none-any.whl --hash=sha256:" + H1 + "\n", "local path"),
    ("https://example.org/foo-1.0.tar.gz --hash=sha256:" + H1 + "\n", "is not a wheel"),
    ("--frobnicate\n", "unknown or incomplete option"),
    ("six==1.17.0 --config-settings=x=y\n", "is not allowed on a requirement"),
    (f"six==1.17.0 --hash=sha256:{H1}\nsix==1.17.0 --hash=sha256:{H2}\n", "listed twice"),
])
def test_loose_or_malformed_specs_are_refused(text: str, phrase: str) -> None:
    assert phrase in _error(text, allow_unhashed=True)


def test_editable_is_refused_even_with_allow_unhashed() -> None:
    assert "editable install" in _error("-e .\n", allow_unhashed=True)


# ---- finding a project's lockfile ----------------------------------------------------


def test_find_project_lockfile_prefers_requirements_lock(tmp_path: Path) -> None:
    assert find_project_lockfile(tmp_path) is None
    (tmp_path / "conda-lock.yml").write_text(MLOPS.read_text())
    assert find_project_lockfile(tmp_path) == tmp_path / "conda-lock.yml"
    (tmp_path / "requirements.txt").write_text("numpy>=1\n")
    assert find_project_lockfile(tmp_path) == tmp_path / "conda-lock.yml"
    (tmp_path / "requirements.txt").write_text((PIP / "small.requirements.lock").read_text())
    assert find_project_lockfile(tmp_path) == tmp_path / "requirements.txt"
    (tmp_path / "requirements-lock.txt").write_text("x")
    assert find_project_lockfile(tmp_path) == tmp_path / "requirements-lock.txt"
    (tmp_path / "requirements.lock").write_text("x")
    assert find_project_lockfile(tmp_path) == tmp_path / "requirements.lock"


# ---- conda-lock (T18) ----------------------------------------------------------------


def _yaml_count(path: Path, platform: str) -> int:
    return sum(p["platform"] == platform for p in yaml.safe_load(path.read_text())["package"])


@pytest.mark.parametrize(("path", "platform", "count", "python"), [
    (MLOPS, "linux-64", 92, "3.11"),
    (MULTI, "linux-64", 43, "3.12"),
    (MULTI, "osx-arm64", 33, "3.12"),
    (MULTI, "win-64", 37, "3.12"),
])
def test_real_conda_locks_parse_with_their_package_counts(
    path: Path, platform: str, count: int, python: str
) -> None:
    lock = parse_conda_lock(path, platform=platform)
    assert len(lock.packages) == count == _yaml_count(path, platform)
    assert (lock.kind, lock.platform, lock.python) == ("conda", platform, python)
    assert all(p.hashes[0].startswith("sha256:") and p.line > 0 for p in lock.packages)
    assert [p.line for p in lock.packages] == sorted(p.line for p in lock.packages)
    assert lock.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_conda_lock_keeps_pip_entries_with_pip_names() -> None:
    lock = parse_conda_lock(MLOPS)
    versions = lock.versions()
    assert versions["pydantic-core"] == "2.23.4" and versions["python_abi"] == "3.11"
    wandb = next(p for p in lock.packages if p.name == "wandb")
    assert wandb.hashes == (
        "sha256:405000bc3d2e369934ff1266fcc55ff968e4a0f24c2fdaa9a0585b170c01b60c",)


def _conda_error(tmp_path: Path, text: str, platform: str = "linux-64") -> str:
    path = tmp_path / "conda-lock.yml"
    path.write_text(text)
    with pytest.raises(LockfileError) as info:
        parse_conda_lock(path, platform=platform)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    return str(info.value)


def test_conda_lock_without_version(tmp_path: Path) -> None:
    text = MLOPS.read_text().replace("version: 1\n", "", 1)
    assert "MissingLockfileVersion" in _conda_error(tmp_path, text)


def test_conda_lock_with_unknown_version(tmp_path: Path) -> None:
    text = MLOPS.read_text().replace("version: 1\n", "version: 3\n", 1)
    assert "UnknownLockfileVersion" in _conda_error(tmp_path, text)


def test_conda_lock_with_invalid_yaml(tmp_path: Path) -> None:
    message = _conda_error(tmp_path, MLOPS.read_text() + "  - : : [unclosed\n")
    assert "invalid YAML" in message and "line" in message


def test_conda_lock_without_the_platform(tmp_path: Path) -> None:
    message = _conda_error(tmp_path, MLOPS.read_text(), platform="osx-arm64")
    assert "platform osx-arm64 is not in metadata.platforms" in message
    assert "conda-lock -p osx-arm64" in message


def test_conda_package_without_sha256(tmp_path: Path) -> None:
    text = MLOPS.read_text().replace(
        "    sha256: 1dd3fffd892081df9726d7eb7e0dea6198962ba775bd88842135a4ddb4deb3c9\n", "")
    message = _conda_error(tmp_path, text)
    assert "_openmp_mutex (linux-64) has no hash.sha256" in message
    assert "line 27:" in message


def test_conda_lock_pydantic_error_is_one_line(tmp_path: Path) -> None:
    url = "  url: https://conda.anaconda.org/conda-forge/linux-64/_openmp_mutex-4.5-20_gnu.conda\n"
    message = _conda_error(tmp_path, MLOPS.read_text().replace(url, "", 1))
    assert "package.0.url: Field required" in message


# ---- drift and Python compatibility (T20) --------------------------------------------


def test_drift_reports_changed_missing_and_absent() -> None:
    lock = _parse(f"numpy==1.26.4 --hash=sha256:{H1}\nbar==1.0 --hash=sha256:{H1}\n"
                  f'winonly==1.0 ; sys_platform == "nonesuch" --hash=sha256:{H1}\n')
    lines = drift(lock, {"NumPy": "2.1.0", "foo": "1.0", "pip": "24.0", "setuptools": "65"})
    assert lines == ["numpy: locked 1.26.4, installed 2.1.0", "missing from lock: foo==1.0",
                     "locked but not installed: bar"]


def test_drift_is_empty_for_equal_sets() -> None:
    lock = _parse((PIP / "small.requirements.lock").read_text())
    assert drift(lock, {"six": "1.17.0", "pip": "23.0.1"}) == []


def test_python_compat_refuses_another_minor_with_a_fix_hint() -> None:
    lock = _parse((PIP / "py312.requirements.lock").read_text(), name="py312.requirements.lock")
    assert lock.python == "3.12"
    check_python_compat(lock, "3.12.7")
    with pytest.raises(LockfileError) as info:
        check_python_compat(lock, "3.11.2")
    message = str(info.value)
    assert "compiled for Python 3.12 but the image has Python 3.11.2" in message
    assert "--base-image" in message and "audit lock" in message


def test_python_compat_without_header_passes() -> None:
    check_python_compat(_parse(f"six==1.17.0 --hash=sha256:{H1}\n"), "3.9.1")


# ---- compiling (offline: a local wheelhouse and no index) -----------------------------


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(folder: Path, name: str, version: str) -> Path:
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
             .encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
             b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={_record_hash(data)},{len(data)}\n"
                     for path, data in files.items())
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    return path


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    _wheel(folder, "auditor_canary", "1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return folder


def test_compile_lock_generates_hashes(tmp_path: Path, wheelhouse: Path) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("auditor-canary==1.0\n")
    lock = compile_lock(source, tmp_path / "requirements.lock", find_links=[wheelhouse])
    wheel_sha = hashlib.sha256(next(wheelhouse.iterdir()).read_bytes()).hexdigest()
    assert lock.versions() == {"auditor-canary": "1.0"}
    assert lock.packages[0].hashes == (f"sha256:{wheel_sha}",)
    assert (tmp_path / "requirements.lock").read_text() == lock.text
    assert str(wheelhouse) not in lock.text.split("\n", 5)[-1]


def test_lock_from_packages_skips_pip(wheelhouse: Path) -> None:
    lock = lock_from_packages({"Auditor_Canary": "1.0", "pip": "24.0"}, find_links=[wheelhouse])
    assert lock.versions() == {"auditor-canary": "1.0"} and lock.hashed


def test_compile_lock_failure_is_a_lockfile_error(tmp_path: Path, wheelhouse: Path) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("auditor-canary==9.9\n")
    with pytest.raises(LockfileError) as info:
        compile_lock(source, tmp_path / "requirements.lock", find_links=[wheelhouse])
    assert "pip-compile could not lock requirements.in" in str(info.value)
