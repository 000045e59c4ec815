"""Shared fixtures: throwaway git repositories, stores, and the real `audit` command."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from auditor.store import SqlStore, open_store

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
AUDIT = str(Path(sys.executable).parent / "audit")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    """Run git with a fixed identity."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout


def commit_repo(root: Path, files: dict[str, str]) -> Path:
    """Make root (new) a git repo on branch main with these files (name -> text) committed."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a git repo with the given files committed (name -> text)."""

    def make(files: dict[str, str] | None = None, name: str = "proj") -> Path:
        return commit_repo(tmp_path / name, files or {"README": "x\n"})

    return make


def add_training_files(root: Path) -> None:
    """Copy the bundled torch fixture (script, lockfile, data/blobs.csv) into root."""
    shutil.copy(FIXTURES / "train" / "train_mlp.py", root)
    shutil.copy(FIXTURES / "train" / "requirements.lock", root)
    (root / "data").mkdir()
    shutil.copy(FIXTURES / "data" / "blobs.csv", root / "data")


@pytest.fixture
def train_repo(make_repo: Callable[..., Path]) -> Path:
    """A git repo holding the bundled torch fixture (script, lockfile, data)."""
    root = make_repo({".gitignore": "outputs/\n.auditor/\n"}, name="train")
    add_training_files(root)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    return root


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[SqlStore]:
    """A fresh SQLite store at tmp_path/store (a path the CLI can open)."""
    opened = open_store(str(tmp_path / "store"))
    yield opened
    opened.close()


@pytest.fixture
def store(local_store: SqlStore) -> SqlStore:
    """A fresh SQLite store in a temp directory (files override it with `any_store`)."""
    return local_store


# -- PostgreSQL (the team store): the URL of a server .ci/run starts --------------------
PG_ENV = "AUDITOR_TEST_POSTGRES"


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail under CI, where nothing may pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL URL whose role may create schemas ($AUDITOR_TEST_POSTGRES)."""
    url = os.environ.get(PG_ENV, "")
    if not url:
        skip_or_fail(f"no PostgreSQL server: set {PG_ENV} (.ci/run starts one)")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.SQLAlchemyError as exc:
        skip_or_fail(f"PostgreSQL at {PG_ENV} does not answer: {exc.__class__.__name__}")
    finally:
        engine.dispose()
    return url


def pg_schema_url(postgres_url: str, schema: str) -> str:
    """The server URL with ``search_path`` set to ``schema`` (one empty store per test)."""
    url = sa.engine.make_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """An empty store database on the test server: a fresh schema, dropped afterwards."""
    schema = "t_" + secrets.token_hex(6)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield pg_schema_url(postgres_url, schema)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(metadata location, artifact location) of an empty store of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "store"), None
    return request.getfixturevalue("pg_url"), str(tmp_path / "blobs")


@pytest.fixture
def any_store(store_location: tuple[str, str | None]) -> Iterator[SqlStore]:
    """A fresh store, once on SQLite and once on PostgreSQL."""
    opened = open_store(store_location[0], blobs=store_location[1])
    yield opened
    opened.close()


# -- S3 (team artifacts): moto's standalone server on 127.0.0.1 --------------------------
S3_ENV = "AUDITOR_TEST_S3"  # endpoint of a running server (.ci/run starts moto_server)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-speaking server on 127.0.0.1: $AUDITOR_TEST_S3, else moto's server started here."""
    if os.environ.get(S3_ENV):
        yield os.environ[S3_ENV]
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # moto[server] is in the dev extra
        skip_or_fail(f"no S3 server: {exc}")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment (set here too) that points boto at the test server with test keys."""
    env = {
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> str:
    """A fresh, empty bucket on the test server; returns its s3:// URL with a prefix."""
    import s3fs

    name = "t-" + secrets.token_hex(6)
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}/team"


def audit(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real `audit` command; past ``timeout`` its whole process group is killed
    (a pip-compile or a rerun it started is not left running into later tests)."""
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    with subprocess.Popen([AUDIT, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess([AUDIT, *args], proc.returncode, out, err)


def default_sigint() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT: CI started in the
    background (``cmd &`` without job control) ignores SIGINT, the child inherits that,
    and Python then installs no KeyboardInterrupt handler of its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI nothing may pass by skipping: a skipped test is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"CI must not skip: {report.longrepr}"


def audit_compare(runs: dict[str, str], a: str, b: str,
                  *flags: str) -> tuple[int, dict[str, Any], str]:
    """`audit --json compare --as-rerun` of runs[a] and runs[b] (runs[b] taken as a rerun
    of runs[a]; runs also names "_repo" and "_store"): exit code, parsed JSON ({} when
    none) and stderr."""
    res = audit("--json", "compare", "--as-rerun", runs[a], runs[b], *flags,
                cwd=Path(runs["_repo"]),
                env={"AUDITOR_STORE": runs["_store"]})
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else {}), res.stderr
