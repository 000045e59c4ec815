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
* ``redact_text`` / ``redact_bytes`` replace what ``secret_scan.scan`` finds (the shapes
  and known secrets listed there, in time linear in the text's length); they deliberately
  run no entropy scan, because logs and ``pip inspect`` reports are full of legitimate
  digests. They never raise and are idempotent.
* Every string field of a record goes through ``scrub_strings`` before it is stored, and
  fields copied from the environment through ``redacted_env_value`` (the allowlist).
* ``scan_file`` / ``scan_stream`` say why an output must not be stored (shape and line),
  or None: text files for every shape, other files for known secrets only.
* ``redact_argv`` also redacts ``-pVALUE`` once a mysql tool (``mysql``, ``mysqldump``,
  ``mariadb`` ...) has appeared in the command line.
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

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

from auditor.record.capture.secret_scan import (
    KNOWN_SHAPE,
    MIN_KNOWN_SECRET,
    REDACTED,
    Finding,
    apply,
    as_bytes,
    as_text,
    clear_known_secrets,
    encoded_forms,
    known_secrets,
    register_known_secret,
    scan,
    secret_name,
    shapes,
    words,
)

__all__ = [
    "DEFAULT_ENV_ALLOWLIST", "ENV_DENYLIST", "MIN_KNOWN_SECRET", "REDACTED", "Finding",
    "clear_known_secrets", "encoded_forms", "find_secrets", "known_secrets", "looks_secret",
    "redact_argv", "redact_bytes", "redact_env", "redact_params", "redact_text",
    "register_known_secret", "secret_name", "shapes", "strip_url_credentials",
]

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

HIGH_ENTROPY_MIN_LEN = 20
BASE64_LIMIT = 4.5
HEX_LIMIT = 3.0

_DIGEST_WORDS = frozenset({
    "commit", "sha", "sha1", "sha256", "sha512", "md5", "hash", "digest", "checksum",
    "revision", "rev", "uuid", "etag", "fingerprint", "id", "oid", "head",
})


def _digest_name(name: str) -> bool:
    ws = words(name)
    return bool(ws) and ws[-1] in _DIGEST_WORDS


_DIGEST_VALUE = re.compile(
    r"(?:sha(?:1|256|512):)?[0-9a-fA-F]{7,128}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _keeps_digest(name: str, value: str) -> bool:
    return _digest_name(name) and _DIGEST_VALUE.fullmatch(value) is not None


# ---------------------------------------------------------------------------- shapes

_URL_RE = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s'\"<>`]+")
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


def looks_secret(value: str) -> bool:
    """True when the value has the shape of a credential (see the module contract)."""
    return bool(
        scan(as_bytes(value), known=False)
        or any(_high_entropy_word(w) for w in _WORD_SPLIT.split(value))
    )


def find_secrets(text: str) -> list[Finding]:
    """Where secret shapes and known secrets sit in ``text`` (spans over its UTF-8 bytes)."""
    return scan(as_bytes(text))


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


# ---------------------------------------------------------------------------- learning

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


# ---------------------------------------------------------------------------- text

def redact_bytes(data: bytes) -> bytes:
    """``redact_text`` over UTF-8 bytes (what logs are stored as)."""
    for _ in range(4):  # repeat to a fixed point so that the result is idempotent
        findings = scan(data)
        if not findings:
            break
        data = apply(data, findings)
    return data


def redact_text(text: str) -> str:
    """Replace every secret-shaped substring and every known secret with ``REDACTED``."""
    return as_text(redact_bytes(as_bytes(text)))


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


_MYSQL_PROGRAM = re.compile(r"(?:mysql|mariadb)(?:-?(?:dump|admin|import|show|check|slap|binlog"
                            r"|pump))?")


def _mysql_password(after_mysql: bool, arg: str) -> bool:
    """``-pVALUE`` of a mysql tool (``-p`` alone prompts, ``-p$VAR`` names a variable)."""
    return (after_mysql and arg.startswith("-p") and len(arg) > 2
            and arg[2] not in "$%" and arg[2:] != REDACTED)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with secret flag values, login keys, a mysql tool's ``-pVALUE``
    and secret-shaped words redacted."""
    out: list[str] = []
    after_mysql = False
    for i, arg in enumerate(argv):
        after_mysql = after_mysql or bool(_MYSQL_PROGRAM.fullmatch(Path(arg).name))
        if _mysql_password(after_mysql, arg):
            _learn(arg[2:])
            out.append(f"-p{REDACTED}")
        else:
            out.append(_redact_arg(argv[i - 1] if i else "", arg))
    return out


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


def redacted_env_value(name: str, value: str | None) -> str | None:
    """A value copied from the environment into another record field (determinism, seeds):
    ``REDACTED`` whenever ``redact_env`` would not keep it verbatim."""
    if value is None:
        return None
    return redact_env({name: value})[name]


def scrub_strings(obj: Any) -> Any:
    """A copy of nested data (dicts, lists, tuples) with ``redact_text`` applied to every
    string, keys included: the last net before a record is stored."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {scrub_strings(k): scrub_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_strings(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(scrub_strings(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------- files

SNIFF_BYTES = 8192
_CHUNK = 1 << 20
_OVERLAP = 1 << 16  # the longest span a finding can have that is still examined whole


def is_text(head: bytes) -> bool:
    """UTF-8 without NUL in the first ``SNIFF_BYTES`` (a cut last character is allowed)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def scan_file(path: Path) -> str | None:
    """Why the file must not be stored, or None. A text file (``is_text``) is scanned for
    every shape ``redact_text`` knows and for known secrets; any other file for known
    secrets and their encodings only (a pickled config holds its strings verbatim).
    Read in 1 MiB chunks with a 64 KiB overlap: linear time, bounded memory."""
    with path.open("rb") as fh:
        return scan_stream(fh)


def scan_stream(fh: BinaryIO) -> str | None:
    """``scan_file`` over an open binary file, read from where it stands to its end."""
    head = fh.read(SNIFF_BYTES)
    text = is_text(head)
    carry, offset, lines = head, 0, 0
    while True:
        block = fh.read(_CHUNK)
        data = carry + block
        hits = [f for f in scan(data)
                if text or f.shape == KNOWN_SHAPE]
        if hits:
            line = lines + data.count(b"\n", 0, hits[0].start) + 1
            where = (f"text file, first at line {line}" if text
                     else f"binary file, first at byte {offset + hits[0].start}")
            return f"{', '.join(shapes(hits))} ({where})"
        if not block:
            return None
        keep = data[-_OVERLAP:] if len(data) > _OVERLAP else data
        lines += data.count(b"\n", 0, len(data) - len(keep))
        offset += len(data) - len(keep)
        carry = keep
