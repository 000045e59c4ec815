"""Secret redaction: nothing secret-shaped reaches the store, a report or a log.

Contract (scenarios T34-T36):

* ``redact_env`` is allowlist-first. Every variable *name* is kept; a value is kept
  verbatim only when the name matches ``DEFAULT_ENV_ALLOWLIST`` (plus ``extra_allow``),
  matches no ``ENV_DENYLIST`` pattern, is not a ``secret_name`` and the value passes
  ``looks_secret`` (the value scan applies to allowlisted values too). Everything else
  becomes ``REDACTED``.
* Learning: every value that ``redact_env``, ``redact_argv`` or ``redact_params``
  redacts because its name or shape is secret is passed to ``register_known_secret``
  (process-wide, values under 6 characters ignored), so that ``redact_text`` later scrubs
  it, and its base64, URL-encoded and hex forms, from logs and reports.
* ``looks_secret`` is a shape scan in the style of detect-secrets: vendor token formats,
  JWTs, PEM private keys, Bearer/Basic credentials, URLs with a password, ``key=value``
  with a secret key name, and high-entropy words (>= 20 characters; base64 alphabet with
  Shannon entropy > 4.5 bits, hex alphabet > 3.0 bits; all-digit words never count).
* ``redact_text`` replaces secret-shaped substrings and known secrets; it deliberately
  runs no entropy scan, because logs and ``pip inspect`` reports are full of legitimate
  digests. It never raises and is idempotent.
* Digest rule: a 40-character git commit is high-entropy hex, so ``looks_secret`` says
  yes. Under a key or flag whose name says it holds a digest (``commit``, ``sha256``,
  ``revision``, ``uuid``, ``run_id``, ...) ``redact_params`` and ``redact_argv`` keep a
  value that is only hex (7-128 digits, optionally ``sha256:``-prefixed) or a UUID.
  Vendor-shaped tokens are redacted under any key.

Allowlist decisions: ``PYTHONPATH``, ``HOME``, ``PATH``, ``PWD``, ``USER`` and
``HOSTNAME`` are not allowlisted (paths and host names identify people; the host is
recorded by ``system.py``); ``NCCL_*SOCKET*`` holds network interface names and is
denied.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import pairwise
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"

DEFAULT_ENV_ALLOWLIST: tuple[str, ...] = (
    # Python interpreter behaviour
    "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONOPTIMIZE",
    "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONFAULTHANDLER",
    # threads and math libraries
    "OMP_*", "KMP_*", "GOMP_*", "MKL_*", "OPENBLAS_*", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_*", "ONEDNN_*", "DNNL_*",
    # GPU stack
    "CUDA_*", "CUBLAS_*", "CUBLASLT_*", "CUDNN_*", "NCCL_*", "NVIDIA_*",
    "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
    # frameworks
    "TORCH_*", "PYTORCH_*", "TORCHINDUCTOR_*", "TF_*", "XLA_FLAGS", "JAX_*",
    "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE", "WANDB_MODE", "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
    # distributed topology (not MASTER_ADDR: a host name)
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
    "MASTER_PORT",
    # locale and time
    "LANG", "LANGUAGE", "LC_*", "TZ",
    # our own settings (secret-named ones are still redacted)
    "AUDITOR_*",
)
ENV_DENYLIST: tuple[str, ...] = ("NCCL_*SOCKET*",)

MIN_KNOWN_SECRET = 6
HIGH_ENTROPY_MIN_LEN = 20
BASE64_LIMIT = 4.5
HEX_LIMIT = 3.0

_known: set[str] = set()
_known_lock = threading.Lock()

# ---------------------------------------------------------------------------- names

_STRONG_WORDS = frozenset({
    "password", "passwd", "passphrase", "secret", "secrets", "credential",
    "credentials", "cred", "creds", "cookie", "cookies", "apikey", "authtoken",
    "auth", "authorization", "dsn", "sessionid", "signature",
})
_STRONG_FRAGMENTS = ("password", "passwd", "secret", "apikey", "credential")
_SPECIAL_TOKEN_WORDS = frozenset({
    "pad", "bos", "eos", "unk", "sep", "cls", "mask", "start", "end", "special",
    "decoder", "image", "audio", "video", "vocab", "new",
})
_BENIGN_KEY_WORDS = frozenset({
    "sort", "primary", "foreign", "partition", "cache", "dict", "group", "metric",
    "monitor", "index", "join", "lookup", "row", "column", "shard", "routing", "public",
    "hash", "batch", "input", "output", "label", "target", "image", "text", "data",
})
_DIGEST_WORDS = frozenset({
    "commit", "sha", "sha1", "sha256", "sha512", "md5", "hash", "digest", "checksum",
    "revision", "rev", "uuid", "etag", "fingerprint", "id", "oid", "head",
})
_WHOLE_NAMES = frozenset({"database_url", "db_url", "connection_string", "conn_str"})
_SECRET_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"),
    ("account", "key"), ("signing", "key"), ("encryption", "key"), ("master", "key"),
    ("client", "secret"), ("access", "token"), ("refresh", "token"), ("api", "token"),
    ("session", "token"), ("auth", "token"), ("id", "token"),
})


def _words(name: str) -> list[str]:
    """Split an identifier into lower-case words: ``myApiKey`` -> my, api, key."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _auth_word(word: str) -> bool:
    return word.startswith("auth") and not word.startswith(("author", "authority"))


@lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """True when a variable, key or flag name says its value is a credential."""
    words = _words(name)
    if not words:
        return False
    joined, last = "_".join(words), words[-1]
    prev = words[-2] if len(words) > 1 else ""
    return (
        joined in _WHOLE_NAMES or joined.endswith(("_database_url", "_dsn"))
        or any(w in _STRONG_WORDS or _auth_word(w) for w in words)
        or any(f in w for w in words for f in _STRONG_FRAGMENTS)
        or any(pair in _SECRET_PAIRS for pair in pairwise(words))
        or (last == "token" and prev not in _SPECIAL_TOKEN_WORDS)
        or (last in {"key", "keys"} and prev not in _BENIGN_KEY_WORDS)
        or ("private" in words and len(words) > 1)
        or ("session" in words and last in {"session", "id", "key", "token", "cookie"})
    )


def _digest_name(name: str) -> bool:
    words = _words(name)
    return bool(words) and words[-1] in _DIGEST_WORDS


_DIGEST_VALUE = re.compile(
    r"(?:sha(?:1|256|512):)?[0-9a-fA-F]{7,128}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _keeps_digest(name: str, value: str) -> bool:
    return _digest_name(name) and _DIGEST_VALUE.fullmatch(value) is not None


# ---------------------------------------------------------------------------- shapes

_VENDOR_TOKENS = [
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bglpat-[A-Za-z0-9_\-]{20,}\b",
    r"\bhf_[A-Za-z0-9]{30,}\b",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b",
    r"\bxapp-[A-Za-z0-9\-]{10,}\b",
    r"\bAIza[0-9A-Za-z\-_]{35}\b",
    r"\bsk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}\b",
    r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}\b",
    r"\bnpm_[A-Za-z0-9]{36}\b",
    r"\bpypi-[A-Za-z0-9_\-]{50,}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
]
_PEM_BLOCK = (r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
              r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PEM_HEAD = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:(?:\s|\\n)*[A-Za-z0-9+/=]{16,})*"
_TOKEN_RE = re.compile("|".join([_PEM_BLOCK, _PEM_HEAD, *_VENDOR_TOKENS]), re.DOTALL)
_BEARER_RE = re.compile(r"\b([Bb]earer|BEARER)(\s+)([A-Za-z0-9\-._~+/]{16,}=*)")
_BASIC_RE = re.compile(r"\b([Bb]asic|BASIC)(\s+)([A-Za-z0-9+/]{8,}={0,2})")
_HEADER_RE = re.compile(
    r"(?i)\b((?:proxy-)?authorization|set-cookie|cookie)([\"']?[ \t]*[:=][ \t]*[\"']?)"
    r"(?!\[REDACTED\])([^\s\"'][^\r\n\"']*)"
)
_URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_KV_RE = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<kq>[\"']?)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?:\"(?P<dq>(?:\\.|[^\"\\\n])*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s\"',;&<>]+))"
)
_FLAG_RE = re.compile(
    r"(?<!\S)(?P<flag>--?[A-Za-z][A-Za-z0-9_\-]*)(?P<sp>[ \t]+)(?P<val>[^\s\-]\S*)"
)
_WORD_SPLIT = re.compile(r"[\s\"'`,;:=()\[\]{}<>|&!?*\\]+")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
_HEX_CHARS = re.compile(r"[0-9a-fA-F]+")
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git", "sftp"})


def _entropy(text: str) -> float:
    counts, n = Counter(text), len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _high_entropy_word(word: str) -> bool:
    if len(word) < HIGH_ENTROPY_MIN_LEN or word.isdigit() or word.startswith(("/", "~", ".")):
        return False
    if _HEX_CHARS.fullmatch(word):
        return _entropy(word) > HEX_LIMIT
    return _BASE64_CHARS.fullmatch(word) is not None and _entropy(word) > BASE64_LIMIT


def _basic_credential(token: str) -> bool:
    """True when the token decodes to printable ``user:password`` (not an English word)."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw and raw.isascii() and raw.decode().isprintable()


def _has_url_secret(text: str) -> bool:
    return any(strip_url_credentials(m.group(0)) != m.group(0) for m in _URL_RE.finditer(text))


def _has_secret_kv(text: str) -> bool:
    return any(secret_name(m.group("key")) and _kv_value(m) not in ("", REDACTED)
               for m in _KV_RE.finditer(text))


def looks_secret(value: str) -> bool:
    """True when the value has the shape of a credential (see the module contract)."""
    return bool(
        _TOKEN_RE.search(value) or _BEARER_RE.search(value)
        or any(_basic_credential(m.group(3)) for m in _BASIC_RE.finditer(value))
        or _has_url_secret(value) or _has_secret_kv(value)
        or any(_high_entropy_word(w) for w in _WORD_SPLIT.split(value))
    )


# ---------------------------------------------------------------------------- URLs

def _redact_query(query: str) -> str:
    parts = re.split(r"([&;])", query)
    for i, part in enumerate(parts):
        key, eq, _ = part.partition("=")
        if eq and (secret_name(key) or key.lower() in {"sig", "key", "code"}):
            parts[i] = f"{key}={REDACTED}"
    return "".join(parts)


def _redact_path(path: str) -> str:
    return re.sub(r"/t/[^/?#]+/", f"/t/{REDACTED}/", path)


def strip_url_credentials(url: str) -> str:
    """Drop user:password@ (ssh keeps the user), conda ``/t/<token>/`` and secret query values."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # scp-like ``git@host:org/repo`` and plain paths are left alone
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if at and scheme.lower() in _SSH_SCHEMES:
        netloc = f"{userinfo.partition(':')[0]}@{host}"
    elif at:
        netloc = host
    tail, hsh, fragment = tail.partition("#")
    path, qm, query = tail.partition("?")
    return f"{scheme}://{netloc}{_redact_path(path)}{qm}{_redact_query(query)}{hsh}{fragment}"


# ---------------------------------------------------------------------------- known secrets

def register_known_secret(value: str) -> None:
    """Remember a secret value process-wide so ``redact_text`` scrubs it and its encodings."""
    if len(value) >= MIN_KNOWN_SECRET and value not in REDACTED:
        with _known_lock:
            _known.add(value)


def _url_passwords(text: str) -> list[str]:
    found = []
    for match in _URL_RE.finditer(text):
        userinfo = match.group(0).partition("://")[2].split("/", 1)[0].rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
    return found


def _learn(value: str) -> None:
    """Register a redacted value, the passwords of URLs in it, and its credential-like parts
    (>= 8 characters with letters and digits: a cookie value, a PEM line, a bearer token)."""
    register_known_secret(value)
    parts = re.split(r"[\s;,&]+", value)
    for part in parts + [p.partition("=")[2] for p in parts]:
        if len(part) >= 8 and re.search(r"\d", part) and re.search(r"[A-Za-z]", part):
            register_known_secret(part)
    for password in _url_passwords(value):
        register_known_secret(password)


def known_secrets() -> frozenset[str]:
    """The values registered so far in this process."""
    with _known_lock:
        return frozenset(_known)


def clear_known_secrets() -> None:
    """Forget every registered value (for tests and long-lived workers)."""
    with _known_lock:
        _known.clear()


def encoded_forms(value: str) -> set[str]:
    """The value itself plus the base64, URL-encoded and hex spellings a log may hold."""
    raw = value.encode()
    b64 = base64.b64encode(raw).decode()
    forms = {value, b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             quote(value, safe=""), quote_plus(value), raw.hex(), raw.hex().upper()}
    return {f for f in forms if len(f) >= MIN_KNOWN_SECRET}


_pattern_cache: dict[frozenset[str], re.Pattern[str] | None] = {}


def _known_pattern() -> re.Pattern[str] | None:
    """One alternation of every form of every known secret, longest first; cached."""
    known = known_secrets()
    if known not in _pattern_cache:
        forms = sorted({f for v in known for f in encoded_forms(v)}, key=len, reverse=True)
        _pattern_cache.clear()  # only the current set is ever needed again
        _pattern_cache[known] = re.compile("|".join(map(re.escape, forms))) if forms else None
    return _pattern_cache[known]


def _replace_known(text: str) -> str:
    pattern = _known_pattern()
    return pattern.sub(REDACTED, text) if pattern else text


# ---------------------------------------------------------------------------- text

def _kv_value(match: re.Match[str]) -> str:
    for group in ("dq", "sq", "bare"):
        if match.group(group) is not None:
            return match.group(group)
    return ""


_JSON_LITERALS = frozenset({"null", "true", "false", "None", "True", "False"})


def _kv_sub(match: re.Match[str]) -> str:
    bare = match.group("bare")
    if not secret_name(match.group("key")) or bare in _JSON_LITERALS:
        return match.group(0)
    # a quoted key means JSON or YAML: keep the value a string so the document still parses
    quoted = match.group("sq") is None and (match.group("dq") is not None or match.group("kq"))
    mark = '"' if quoted else "'" if match.group("sq") is not None else ""
    head = match.group("key") + match.group("kq") + match.group("sep")
    return f"{head}{mark}{REDACTED}{mark}"


def _flag_sub(match: re.Match[str]) -> str:
    if not secret_name(match.group("flag").lstrip("-")):
        return match.group(0)
    return f"{match.group('flag')}{match.group('sp')}{REDACTED}"


def _basic_sub(match: re.Match[str]) -> str:
    if not _basic_credential(match.group(3)):
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _redact_once(text: str) -> str:
    text = _replace_known(text)
    text = _TOKEN_RE.sub(REDACTED, text)
    text = _URL_RE.sub(lambda m: strip_url_credentials(m.group(0)), text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BASIC_RE.sub(_basic_sub, text)
    text = _HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _KV_RE.sub(_kv_sub, text)
    return _FLAG_RE.sub(_flag_sub, text)


def redact_text(text: str) -> str:
    """Replace every secret-shaped substring and every known secret with ``REDACTED``."""
    for _ in range(4):  # repeat to a fixed point so that the result is idempotent
        new = _redact_once(text)
        if new == text:
            break
        text = new
    return text


# ---------------------------------------------------------------------------- env, argv, params

def _allowed(name: str, allow: Sequence[str]) -> bool:
    return (any(fnmatchcase(name, p) for p in allow)
            and not any(fnmatchcase(name, p) for p in ENV_DENYLIST))


def redact_env(env: Mapping[str, str], extra_allow: Iterable[str] = ()) -> dict[str, str]:
    """Every name, sorted; values verbatim only when allowlisted and not secret."""
    allow = (*DEFAULT_ENV_ALLOWLIST, *extra_allow)
    out: dict[str, str] = {}
    for name in sorted(env):
        value = env[name]
        secret = secret_name(name) or (looks_secret(value) and not _keeps_digest(name, value))
        if secret:
            _learn(value)
        out[name] = value if _allowed(name, allow) and not secret else REDACTED
    return out


def _redacted(value: str) -> str:
    _learn(value)  # so that logs echoing it are scrubbed too
    return REDACTED


def _scrub(value: str) -> str:
    """A URL loses its credentials; anything still secret-shaped is redacted whole."""
    stripped = strip_url_credentials(value)
    return _redacted(value) if looks_secret(stripped) else stripped


def _redact_value(flag: str, value: str) -> str:
    if secret_name(flag) and value:
        return _redacted(value)
    return value if _keeps_digest(flag, value) else _scrub(value)


_LOGIN_WORDS = frozenset({"login", "auth", "authenticate"})


def _redact_arg(prev: str, arg: str) -> str:
    if arg.startswith("-") and "=" in arg:
        flag, _, value = arg.partition("=")
        return f"{flag}={_redact_value(flag.lstrip('-'), value)}"
    if prev.startswith("-") and "=" not in prev and not arg.startswith("--"):
        return _redact_value(prev.lstrip("-"), arg)
    if prev in _LOGIN_WORDS and not arg.startswith("-"):
        return _redacted(arg)
    return _scrub(arg)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with secret flag values, login keys and secret-shaped words redacted."""
    return [_redact_arg(argv[i - 1] if i else "", arg) for i, arg in enumerate(argv)]


def redact_params(obj: Any) -> Any:
    """A copy of nested params with secret-keyed and secret-shaped values redacted."""
    if isinstance(obj, Mapping):
        return {k: _redact_item(str(k), v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_params(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_params(v) for v in obj)
    return _scrub(obj) if isinstance(obj, str) else obj


def _redact_item(key: str, value: Any) -> Any:
    if secret_name(key):
        if isinstance(value, str):
            _learn(value)
        return REDACTED
    if isinstance(value, str) and _keeps_digest(key, value):
        return value
    return redact_params(value)
