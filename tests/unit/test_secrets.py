"""Secrets: planted credentials reach no output (T34), allowlist-first env capture (T35)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditor.record.capture.secrets import (
    DEFAULT_ENV_ALLOWLIST,
    REDACTED,
    clear_known_secrets,
    encoded_forms,
    find_secrets,
    known_secrets,
    looks_secret,
    redact_argv,
    redact_bytes,
    redact_env,
    redact_params,
    redact_text,
    redacted_env_value,
    register_known_secret,
    scan_file,
    scrub_strings,
    secret_name,
    strip_url_credentials,
)

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
GH_TOKEN = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"
WANDB_KEY = "3f5c2a9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
MLFLOW_PW = "mlflow-Pa55word!"
DB_PW = "S3cr3tDbPw"
COOKIE = "sessionid=9f8e7d6c5b4a39281706f5e4d3c2b1a0; csrftoken=Zq8Wm2Lx"
JWT = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
SVC_CRED = "Xk9pQ2vLr7TzW4mB8nYc1HsJ6dFgA3eK0uVoRiEq"
PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "QyNTUxOQAAACBmZXNlY3JldGtleWZvcnRlc3RzMTIzNDU2Nzg5MGFiY2RlZgAAAJg3k2Vx\n"
       "-----END OPENSSH PRIVATE KEY-----")
PEM_BODY = "QyNTUxOQAAACBmZXNlY3JldGtleWZvcnRlc3RzMTIzNDU2Nzg5MGFiY2RlZgAAAJg3k2Vx"
ARGV_KEY = "plainApiKeyValue123"
REMOTE_TOKEN = "t0k3nRemoteValue99"
PYPI_PW = "pypiPassw0rd"
CONDA_TOKEN = "ab-0123456789abcdef0123"
NPM_TOKEN = "npm_Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
CONFIG_PW = "hunter2hunter2"
SLACK = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
OPENAI = "sk-proj-Ab3De6Gh9Jk2Mn5Pq8St1Vw4Yz7Bc0Ef3Hi6"


@pytest.fixture(autouse=True)
def _fresh_known_secrets() -> Iterator[None]:
    clear_known_secrets()
    yield
    clear_known_secrets()


def _flatten(obj: Any) -> str:
    """Every key and leaf of a nested output, newline-joined (no JSON escaping)."""
    if isinstance(obj, dict):
        return "\n".join(f"{k}\n{_flatten(v)}" for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return "\n".join(_flatten(v) for v in obj)
    return str(obj)


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    return {secret, base64.b64encode(raw).decode(), quote(secret, safe=""),
            quote_plus(secret), raw.hex()}


def _assert_gone(secret: str, output: Any) -> None:
    text = _flatten(output)
    for form in _forms(secret):
        assert form not in text, f"{form!r} survived in {text!r}"


PLANTED_ENV = {
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
    "GITHUB_TOKEN": GH_TOKEN,
    "HF_TOKEN": HF_TOKEN,
    "WANDB_API_KEY": WANDB_KEY,
    "MLFLOW_TRACKING_PASSWORD": MLFLOW_PW,
    "DATABASE_URL": f"postgres://trainer:{DB_PW}@db.internal:5432/runs",
    "COOKIE": COOKIE,
    "AUTHORIZATION": f"Bearer {JWT}",
    "MY_SVC_CRED": SVC_CRED,
    "DEPLOY_MATERIAL": PEM,
    "CUDA_VISIBLE_DEVICES": "0,1",
}
ENV_SECRETS = [AWS_SECRET, AWS_KEY_ID, GH_TOKEN, HF_TOKEN, WANDB_KEY, MLFLOW_PW, DB_PW,
               COOKIE, JWT, SVC_CRED, PEM, PEM_BODY]


# T34: each planted shape, through the function that meets it ------------------------

@pytest.mark.parametrize("secret", ENV_SECRETS)
def test_planted_env_secret_is_redacted_and_named(secret: str) -> None:
    out = redact_env(PLANTED_ENV)
    assert set(out) == set(PLANTED_ENV)  # names are kept
    _assert_gone(secret, out)
    assert out["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert all(out[name] == REDACTED for name in PLANTED_ENV if name != "CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("secret", ENV_SECRETS)
def test_env_secrets_are_learned_and_scrubbed_from_logs_in_every_encoding(secret: str) -> None:
    redact_env(PLANTED_ENV)
    log = "\n".join(f"echo {form} | tee" for form in encoded_forms(secret) | _forms(secret))
    _assert_gone(secret, redact_text(log))


PLANTED_CALLS: list[tuple[str, str, Callable[[], Any]]] = [
    ("argv --api-key X", ARGV_KEY,
     lambda: redact_argv(["python", "train.py", "--api-key", ARGV_KEY, "--lr", "0.1"])),
    ("argv --token=X", ARGV_KEY, lambda: redact_argv(["train", f"--token={ARGV_KEY}"])),
    ("positional wandb login KEY", WANDB_KEY, lambda: redact_argv(["wandb", "login", WANDB_KEY])),
    ("git remote with token", REMOTE_TOKEN,
     lambda: strip_url_credentials(f"https://ci-bot:{REMOTE_TOKEN}@git.example.com/org/repo.git")),
    ("git remote in argv", REMOTE_TOKEN,
     lambda: redact_argv(["git", "clone", f"https://x:{REMOTE_TOKEN}@git.example.com/r.git"])),
    ("--index-url in requirements.txt", PYPI_PW,
     lambda: redact_text(f"--index-url https://deploy:{PYPI_PW}@pypi.internal/simple\n"
                         "numpy==1.26.4 \\\n    --hash=sha256:" + "ab" * 32 + "\n")),
    ("conda channel /t/<token>/", CONDA_TOKEN,
     lambda: strip_url_credentials(f"https://conda.anaconda.org/t/{CONDA_TOKEN}/private-chan")),
    ("conda channel in environment.yml", CONDA_TOKEN,
     lambda: redact_text(f"channels:\n  - https://repo.example.com/t/{CONDA_TOKEN}/main\n")),
    ("docker buildargs secret", NPM_TOKEN,
     lambda: redact_params({"buildargs": {"NPM_TOKEN": NPM_TOKEN, "PY": "3.11"}})),
    ("config value named password", CONFIG_PW,
     lambda: redact_params({"db": {"host": "h", "password": CONFIG_PW}, "lr": 0.1})),
    ("PEM private key in a log", PEM_BODY, lambda: redact_text(f"key:\n{PEM}\ndone")),
    ("Authorization header in a log", JWT,
     lambda: redact_text(f"GET /v1 HTTP/1.1\r\nAuthorization: Bearer {JWT}\r\n")),
    ("Slack token in a log", SLACK, lambda: redact_text(f"posting with {SLACK} now")),
    ("Google key as a param value", GOOGLE, lambda: redact_params({"maps": GOOGLE})),
    ("OpenAI key in json text", OPENAI, lambda: redact_text(f'{{"client": "{OPENAI}"}}')),
    ("AWS key id in text", AWS_KEY_ID, lambda: redact_text(f"using {AWS_KEY_ID} for s3")),
    ("secret key=value in text", AWS_SECRET,
     lambda: redact_text(f"aws_secret_access_key = {AWS_SECRET}\nregion = eu-west-1")),
    ("GitHub token in params list", GH_TOKEN, lambda: redact_params({"tokens": [GH_TOKEN]})),
    ("HF token as --hf_token flag value", HF_TOKEN,
     lambda: redact_argv(["train.py", "--hf_token", HF_TOKEN])),
    ("Basic auth header", "user:pass-w0rd",
     lambda: redact_text("Authorization: Basic " + base64.b64encode(b"user:pass-w0rd").decode())),
]


@pytest.mark.parametrize(("case", "secret", "call"), PLANTED_CALLS,
                         ids=[c[0] for c in PLANTED_CALLS])
def test_planted_secret_reaches_no_output(case: str, secret: str, call: Callable[[], Any]) -> None:
    _assert_gone(secret, call())


def test_commit_variables_are_redacted_but_not_learned() -> None:
    sha = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert redact_env({"GITHUB_SHA": sha, "MY_SVC_CRED": SVC_CRED}) == \
        {"GITHUB_SHA": REDACTED, "MY_SVC_CRED": REDACTED}
    assert sha not in known_secrets() and SVC_CRED in known_secrets()
    assert redact_text(f"HEAD is now at {sha}") == f"HEAD is now at {sha}"


def test_redacted_argv_values_are_learned_for_logs() -> None:
    redact_argv(["wandb", "login", WANDB_KEY])
    assert WANDB_KEY in known_secrets()
    assert redact_text(f"wandb: Appending key {WANDB_KEY} to netrc") == \
        f"wandb: Appending key {REDACTED} to netrc"


# T35: allowlist-first env ------------------------------------------------------------

ENV_TABLE: list[tuple[str, str, bool]] = [
    ("CUDA_VISIBLE_DEVICES", "0,1", True),
    ("CUDA_VISIBLE_DEVICES", "GPU-513536b6-7d19-9063-b049-1e69664bb298", True),
    ("CUBLAS_WORKSPACE_CONFIG", ":4096:8", True),
    ("PYTHONHASHSEED", "0", True),
    ("OMP_NUM_THREADS", "8", True),
    ("MKL_CBWR", "COMPATIBLE", True),
    ("NCCL_DEBUG", "INFO", True),
    ("NCCL_IB_DISABLE", "1", True),
    ("NCCL_SOCKET_IFNAME", "eth0", False),
    ("TORCH_CUDNN_V8_API_ENABLED", "1", True),
    ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", True),
    ("NVIDIA_TF32_OVERRIDE", "0", True),
    ("XLA_FLAGS", "--xla_gpu_deterministic_ops=true", True),
    ("TF_DETERMINISTIC_OPS", "1", True),
    ("LANG", "en_US.UTF-8", True),
    ("LC_ALL", "C.UTF-8", True),
    ("TZ", "UTC", True),
    ("AUDITOR_STORE", "/srv/auditor", True),
    ("AUDITOR_TOKEN", "abcdef123456", False),  # allowlisted prefix, secret name
    ("TORCH_EXTRA", GH_TOKEN, False),  # allowlisted name, secret-shaped value
    ("CUDA_NOTE", f"see https://u:{DB_PW}@h/x", False),  # allowlisted, URL with password
    ("OMP_PLACES", PEM, False),  # allowlisted, PEM value
    ("WANDB_API_KEY", WANDB_KEY, False),
    ("PYTHONPATH", "/home/alice/src", False),
    ("HOME", "/home/alice", False),
    ("PATH", "/usr/local/bin:/usr/bin", False),
    ("PWD", "/home/alice/project", False),
    ("HOSTNAME", "gpu-node-17", False),
    ("MASTER_ADDR", "10.0.0.7", False),
    ("WORLD_SIZE", "8", True),
    ("SOME_TOOL_SETTING", "plain", False),
]


@pytest.mark.parametrize(("name", "value", "kept"), ENV_TABLE,
                         ids=[f"{n}={'kept' if k else 'redacted'}" for n, _, k in ENV_TABLE])
def test_env_table(name: str, value: str, kept: bool) -> None:
    assert redact_env({name: value}) == {name: value if kept else REDACTED}


def test_extra_allow_widens_but_never_admits_secrets() -> None:
    env = {"MY_FLAG": "on", "MY_TOKEN": "tok-abcdef", "OTHER": "x"}
    assert redact_env(env, extra_allow=["MY_*"]) == {"MY_FLAG": "on", "MY_TOKEN": REDACTED,
                                                     "OTHER": REDACTED}


def test_env_output_is_sorted_and_every_name_kept() -> None:
    env = {"Z": "1", "A": "2", "OMP_NUM_THREADS": "4"}
    assert list(redact_env(env)) == ["A", "OMP_NUM_THREADS", "Z"]


def test_allowlist_leaves_out_identifying_variables() -> None:
    for name in ("PYTHONPATH", "HOME", "PATH", "USER", "HOSTNAME", "PWD"):
        assert name not in DEFAULT_ENV_ALLOWLIST


# shapes and names: hits and no false positives ---------------------------------------

@pytest.mark.parametrize("value", [
    AWS_KEY_ID, "ASIAY34FZKBOKMUTVV7A", GH_TOKEN, "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    HF_TOKEN, SLACK, GOOGLE, OPENAI, JWT, PEM, f"Bearer {JWT}", "Basic dXNlcjpwYXNzd29yZA==",
    f"https://u:{DB_PW}@host/x", "user=bob;password=hunter2", SVC_CRED, WANDB_KEY,
    "https://host/x?token=abc",
])
def test_looks_secret_hits(value: str) -> None:
    assert looks_secret(value)


ORDINARY = [
    "0", "1", "en_US.UTF-8", "/usr/local/cuda-12.2/lib64:/usr/lib", "12345678901234567890123",
    "GPU-513536b6-7d19-9063-b049-1e69664bb298", "huggingface/transformers-pytorch-gpu:4.41.0",
    "data/imagenet/train/n01440764/n01440764_10026.JPEG", "expandable_segments:True",
    "/home/alice/checkpoints/model-epoch=10-val_loss=0.123.ckpt", "basic instructions",
    "runs/2024-05-01_12-30-00_resnet50_lr0.1_bs256_seed42", "--xla_gpu_deterministic_ops=true",
    "git@github.com:org/repo.git", "https://github.com/org/repo.git", "3.11.7", "cuda>=12.2",
    "bearer of bad news", "max_tokens=512", "pad_token=<pad>", "True", "1e-4", "",
]


@pytest.mark.parametrize("value", ORDINARY)
def test_no_false_positives(value: str) -> None:
    assert not looks_secret(value)
    assert redact_text(value) == value
    assert redact_params({"v": value}) == {"v": value}


@pytest.mark.parametrize(("name", "secret"), [
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("GITHUB_TOKEN", True),
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("MLFLOW_TRACKING_PASSWORD", True),
    ("DATABASE_URL", True), ("COOKIE", True), ("AUTHORIZATION", True), ("MY_SVC_CRED", True),
    ("PGPASSWORD", True), ("SENTRY_DSN", True), ("apiKey", True), ("x-amz-signature", True),
    ("client_secret", True), ("private_key", True), ("SESSION_ID", True), ("token", True),
    ("pad_token", False), ("max_new_tokens", False), ("tokenizer", False),
    ("TOKENIZERS_PARALLELISM", False), ("GIT_AUTHOR_NAME", False), ("PWD", False),
    ("sort_key", False), ("key_file", False), ("GITHUB_TOKEN_FILE", False), ("commit", False),
    ("learning_rate", False), ("CUDA_VISIBLE_DEVICES", False), ("", False),
])
def test_secret_name(name: str, secret: bool) -> None:
    assert secret_name(name) is secret


def test_digest_rule_keeps_commits_under_digest_keys() -> None:
    sha = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    params = {"commit": sha, "git_sha": sha, "dataset_sha256": "sha256:" + "ab" * 32,
              "run_id": "513536b6-7d19-9063-b049-1e69664bb298", "note": sha,
              "revision": GH_TOKEN}
    out = redact_params(params)
    assert {k: out[k] for k in ("commit", "git_sha", "dataset_sha256", "run_id")} == \
        {k: params[k] for k in ("commit", "git_sha", "dataset_sha256", "run_id")}
    assert out["note"] == REDACTED  # the same hex under an ordinary key looks like a key
    assert out["revision"] == REDACTED  # vendor shapes are redacted under any key
    assert redact_argv(["train", "--commit", sha]) == ["train", "--commit", sha]


def test_redact_params_shapes_and_types() -> None:
    params = {"lr": 0.1, "layers": (64, 32), "tags": ["a"], "nested": {"api_key": {"x": 1}},
              "url": f"https://u:{DB_PW}@h/x", 3: None}
    assert redact_params(params) == {"lr": 0.1, "layers": (64, 32), "tags": ["a"],
                                     "nested": {"api_key": REDACTED}, "url": "https://h/x",
                                     3: None}


# URLs and argv -------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "want"), [
    ("https://user:tok@host/x", "https://host/x"),
    ("https://ghp_token@github.com/o/r.git", "https://github.com/o/r.git"),
    ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ("ssh://git@host:2222/org/repo.git", "ssh://git@host:2222/org/repo.git"),
    ("ssh://git:pw@host/repo", "ssh://git@host/repo"),
    ("https://conda.anaconda.org/t/tk-123/chan/linux-64",
     f"https://conda.anaconda.org/t/{REDACTED}/chan/linux-64"),
    ("https://h/p?token=a&page=2&key=b#top", f"https://h/p?token={REDACTED}&page=2&key={REDACTED}#top"),
    ("https://h/p?X-Amz-Signature=abc&X-Amz-Date=1", f"https://h/p?X-Amz-Signature={REDACTED}&X-Amz-Date=1"),
    ("https://pypi.org/simple", "https://pypi.org/simple"),
    ("/local/path", "/local/path"),
])
def test_strip_url_credentials(url: str, want: str) -> None:
    assert strip_url_credentials(url) == want
    assert strip_url_credentials(want) == want


@pytest.mark.parametrize(("argv", "want"), [
    (["python", "train.py", "--lr", "0.1", "-p", "8080"],
     ["python", "train.py", "--lr", "0.1", "-p", "8080"]),
    (["train", "--password", "pw", "--epochs", "3"],
     ["train", "--password", REDACTED, "--epochs", "3"]),
    (["train", "--token", "--verbose"], ["train", "--token", "--verbose"]),
    (["train", "--key-file", "/run/keys/k.pem"], ["train", "--key-file", "/run/keys/k.pem"]),
    (["pip", "install", "--index-url=https://u:p@h/simple", "numpy"],
     ["pip", "install", "--index-url=https://h/simple", "numpy"]),
    (["huggingface-cli", "login", "--token", HF_TOKEN],
     ["huggingface-cli", "login", "--token", REDACTED]),
    (["run", GH_TOKEN], ["run", REDACTED]),
    ([], []),
])
def test_redact_argv(argv: list[str], want: list[str]) -> None:
    assert redact_argv(argv) == want


# redact_text: structure kept, idempotent, never raises ---------------------------------

def test_redact_text_keeps_json_valid_and_digests() -> None:
    digest = "2a02aba9ed12e4ac4eb3ea9421c420301a0c6460d9830d74a9df87efa4912010"
    text = (f'{{"password": "correct horse", "token": null, "api_key": 12345, '
            f'"sha256": "{digest}", "name": "numpy"}}')
    assert redact_text(text) == (f'{{"password": "{REDACTED}", "token": null, '
                                 f'"api_key": "{REDACTED}", "sha256": "{digest}", '
                                 '"name": "numpy"}')


def test_redact_text_headers_and_flags() -> None:
    text = "Authorization: Bearer abc123\nCookie: a=1; b=2\npython t.py --api-key KEY --lr 1\n"
    assert redact_text(text) == (f"Authorization: {REDACTED}\nCookie: {REDACTED}\n"
                                 f"python t.py --api-key {REDACTED} --lr 1\n")


def test_known_secrets_ignore_short_values_and_the_marker() -> None:
    for value in ("1", "abc", "12345", "REDACT", "[REDACTED]"):
        register_known_secret(value)
    register_known_secret("longenough")
    assert known_secrets() == frozenset({"longenough"})
    assert redact_text("x=1 longenough") == f"x=1 {REDACTED}"


FRAGMENTS = st.sampled_from([
    GH_TOKEN, JWT, PEM, f"https://u:{DB_PW}@h/x", "password=", "Authorization: ", "Bearer ",
    "Basic ", '"token": ', "--api-key ", "[REDACTED]", "REDACTED", "/t/", "?key=", "=", ":",
    "\n", " ", '"', "'", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----",
])
TEXTS = st.one_of(st.text(max_size=200),
                  st.lists(st.one_of(FRAGMENTS, st.text(max_size=12)), max_size=12).map("".join))


@given(TEXTS)
def test_redact_text_is_idempotent_and_total(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(st.lists(st.text(alphabet="abcdefXYZ0189-_", min_size=6, max_size=16), max_size=4), TEXTS)
def test_redact_text_is_idempotent_with_known_secrets(secrets: list[str], text: str) -> None:
    clear_known_secrets()
    for value in secrets:
        register_known_secret(value)
    planted = text + "".join(secrets)
    once = redact_text(planted)
    assert redact_text(once) == once
    for value in secrets:
        assert value not in once


# issue 8: shapes once stored verbatim ---------------------------------------------------

NETRC_PW = "n3trc-Pa55w0rd"
SAS = "sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01T00:00:00Z&sig=q9W8e7R6t5%2BY4u3%3D"
ISSUE8_TEXT: list[tuple[str, str, str]] = [
    ("netrc on one line", NETRC_PW, f"machine pypi.internal login bot password {NETRC_PW}\n"),
    ("netrc over lines", NETRC_PW, f"machine h\n    login bot\n    password {NETRC_PW}\n"),
    ("netrc default entry", NETRC_PW, f"default login anonymous password {NETRC_PW}"),
    ("logging INFO prefix", "logKey-7Hq2Zx9w", "INFO: api_key=logKey-7Hq2Zx9w"),
    ("logging root prefix", "logPw-4Rt8Yu2i", "WARNING:root:password=logPw-4Rt8Yu2i\n"),
    ("token after other text", "tok-Xc5Vb7Nm3q",
     "step 3 done in 0.2s; retrying upload with token=tok-Xc5Vb7Nm3q"),
    ("pwd: value", "pwdV4lue-8Lk2", "pwd: pwdV4lue-8Lk2"),
    ("Azure SAS URL", "q9W8e7R6t5%2BY4u3%3D", f"https://a.blob.core.windows.net/c/x?{SAS}"),
    ("Azure SAS alone", "q9W8e7R6t5%2BY4u3%3D", f"export AZURE_SAS='?{SAS}'"),
    ("JSON config file", "cfgPw-5Ty7Ui9O", '{"db": {"host": "h", "password": "cfgPw-5Ty7Ui9O"}}'),
    ("YAML config file", "cfgKey-2Wq9Er7T", "wandb:\n  api_key: cfgKey-2Wq9Er7T\n"),
    ("camelCase key", "camel-K3y-9981", "{apiKey: 'camel-K3y-9981'}"),
    ("a key=value behind another", "hid-Pw-2231", "keyboard: password=hid-Pw-2231"),
    ("unclosed quote", "open-Pw-9912", 'password: "open-Pw-9912'),
]


@pytest.mark.parametrize(("case", "secret", "text"), ISSUE8_TEXT, ids=[c[0] for c in ISSUE8_TEXT])
def test_issue8_shapes_are_redacted_in_text(case: str, secret: str, text: str) -> None:
    out = redact_text(text)
    _assert_gone(secret, out)
    assert REDACTED in out and redact_text(out) == out
    assert find_secrets(text) and not find_secrets(out)


def test_issue8_shapes_keep_their_context() -> None:
    assert redact_text(f"machine h login bot password {NETRC_PW}") == \
        f"machine h login bot password {REDACTED}"
    assert redact_text("WARNING:root:password=x1y2z3w4") == f"WARNING:root:password={REDACTED}"
    url = redact_text(f"https://a.blob.core.windows.net/c/x?{SAS}")
    assert url.endswith(f"&sig={REDACTED}") and "sv=2022-11-02&ss=b" in url


@pytest.mark.parametrize("text", [
    "the password is wrong, try again", "Password reset done", "sigmoid: 0.5 tokens/s: 1234",
    "keyboard=us max_tokens=512 tokenizer: bert", "PWD=/home/alice/project", "pwd: ~/src",
    "Missing key(s) in state_dict", "session 3 of 5", "authors: alice", "basic instructions",
])
def test_issue8_ordinary_text_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_shape_labels_survive_the_record_scrub() -> None:
    # messages naming a shape are themselves stored: they must not look like secrets
    message = ("output run_config.json not stored, it holds a value named api_key, a value of "
               "flag api-key, a netrc entry, an Authorization header, a bearer token, basic "
               "credentials, a URL with credentials, a private key block, a ghp_ token, "
               "a known secret value (text file, first at line 3)")
    assert redact_text(message) == message


def test_env_derived_fields_are_scanned_like_env() -> None:
    from auditor.record.capture import determinism

    env = {"OMP_NUM_THREADS": "1;password=ompPw-6Gh3", "MKL_NUM_THREADS": SVC_CRED,
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    det = determinism.environment_only(env)
    assert (det.omp_num_threads, det.mkl_num_threads) == (REDACTED, REDACTED)
    assert det.cublas_workspace_config == ":4096:8"
    seen = determinism.from_observation({"env": env}, {})
    assert seen.omp_num_threads == REDACTED and seen.cublas_workspace_config == ":4096:8"
    assert redacted_env_value("PYTHONHASHSEED", "1;token=abcdef12") == REDACTED
    assert redacted_env_value("PYTHONHASHSEED", "42") == "42"
    assert redacted_env_value("OMP_NUM_THREADS", None) is None


def test_scrub_strings_walks_keys_values_and_containers() -> None:
    redact_env({"MY_SVC_CRED": SVC_CRED})
    data = {"a": [f"x {SVC_CRED}", ("password=abc12345",)], SVC_CRED: 1, "n": 2.5}
    assert scrub_strings(data) == {"a": [f"x {REDACTED}", (f"password={REDACTED}",)],
                                   REDACTED: 1, "n": 2.5}


def test_scan_file_names_the_shape_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "run_config.json"
    cfg.write_text('{\n  "lr": 0.1,\n  "api_key": "cfgKey-2Wq9Er7T"\n}\n')
    assert scan_file(cfg) == "a value named api_key (text file, first at line 3)"
    clean = tmp_path / "metrics.json"
    clean.write_text('{"loss": 0.25, "tokens_per_s": 1234}\n')
    assert scan_file(clean) is None
    register_known_secret(GH_TOKEN)
    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(256)) * 4 + GH_TOKEN.encode())
    assert scan_file(blob) == "a known secret value (binary file, first at byte 1024)"
    noisy = tmp_path / "weights.bin"  # shapes in binary data are noise: only known values count
    noisy.write_bytes(b"\0password=abcdef12\0")
    assert scan_file(noisy) is None


def test_scan_file_finds_a_secret_across_chunk_boundaries(tmp_path: Path) -> None:
    big = tmp_path / "log.txt"
    with big.open("w") as fh:
        fh.write("x" * ((1 << 20) - 5) + " password=acrossTheCut99\n")
    assert scan_file(big) == "a value named password (text file, first at line 1)"
    lines = tmp_path / "lines.txt"
    lines.write_text("ok\n" * 700_000 + "token=lateT0ken-123\n")
    assert scan_file(lines) == "a value named token (text file, first at line 700001)"


def test_long_runs_without_separators_are_scanned_whole() -> None:
    # issue 8: quadratic before (20k `x`: 11 s); bench/bench_redact.py measures the speed
    for filler in ("x" * 200_000, "a=" * 100_000, "-" * 200_000, "://" * 50_000):
        text = filler + " api_key=tail-Secret-991"
        out = redact_text(text)
        assert out.startswith(filler[:1000]) and out.endswith(f" api_key={REDACTED}")


def test_redact_bytes_matches_redact_text() -> None:
    text = f"token={GH_TOKEN} ünïcode password=p4ss-w0rd-1 \udcff"
    assert redact_bytes(text.encode("utf-8", "surrogatepass")) == \
        redact_text(text).encode("utf-8", "surrogatepass")


def test_the_stdlib_fallback_finds_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a rerun's interpreter ahocorasick_rs may be missing: same answers, slower."""
    from auditor.record.capture import secret_scan

    redact_env(PLANTED_ENV)
    texts = [t for _, _, t in ISSUE8_TEXT] + [f"{v} | {v.encode().hex()}" for v in ENV_SECRETS]
    fast = [redact_text(t) for t in texts]
    monkeypatch.setattr(secret_scan, "_finder", secret_scan._regex_finder)
    monkeypatch.setattr(secret_scan, "_anchor_cache", {})
    assert [redact_text(t) for t in texts] == fast


def test_a_rerun_output_holding_a_secret_is_withheld_and_named(tmp_path: Path) -> None:
    """What a rerun writes is scanned like the original's outputs (rerun_ingest)."""
    from auditor.rerun.ingest import collect_changed
    from auditor.store.blobs import BlobStore

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "run_config.json").write_text('{"hf_token": "hf-Secret-Value-123"}\n')
    (tree / "result.txt").write_text("42\n")
    blobs = BlobStore(tmp_path / "objects")
    got = collect_changed(blobs, tree, ".", ["run_config.json", "result.txt"], 1 << 20)
    assert [a.name for a in got.artifacts] == ["outputs/result.txt"]
    assert got.withheld == (("outputs/run_config.json",
                             "not stored, it holds a value named hf_token "
                             "(text file, first at line 1)"),)
    assert any("run_config.json not stored" in w for w in got.warnings)
    assert not any(b"hf-Secret" in p.read_bytes() for p in tmp_path.rglob("*")
                   if p.is_file() and "objects" in p.parts)
