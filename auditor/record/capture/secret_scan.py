"""The secret scanner: where in a text secrets sit, in time linear in its length.

``scan(data)`` returns ``Finding`` spans (start, end, replacement, shape) over UTF-8
bytes. It is anchored, never a sliding regex: one Aho-Corasick pass (``ahocorasick_rs``,
Rust; a stdlib regex fallback where it is not installed, e.g. inside a rerun) finds every
*anchor*, and each anchor is examined by a short anchored ``match`` at that position:

* known secret values and their encodings (``known`` forms): the whole occurrence;
* vendor token prefixes (``AKIA``, ``ghp_``, ``hf_``, ``eyJ``, ``-----BEGIN`` ...);
* ``://``: a URL, whose password, conda ``/t/<token>/`` and secret query values go;
* secret-name fragments (``pass``, ``secret``, ``key``, ``token``, ``auth``, ``cookie``,
  ``pwd``, ``sig`` ... in lower, Capitalised and UPPER case): the identifier around the
  fragment is taken (at most ``MAX_KEY`` characters) and, when ``secret_name`` says it is a
  credential name, the value after it goes, in each of these shapes: ``key=value``,
  ``key: value``, ``"key": "value"`` (also after a logging prefix such as
  ``WARNING:root:``), ``--key value``, netrc ``password value``, and HTTP headers
  ``Authorization: ...`` / ``Cookie: ...`` (to the end of the line);
* ``Bearer`` / ``Basic`` credentials;
* ``mysql``/``mysqldump``/``mariadb`` (and their ``admin``, ``import``... tools): a
  ``-pVALUE`` later in the same command (up to ``;``, ``|``, ``&`` or the line's end,
  also in a JSON/Python list of arguments); ``-p`` alone prompts and ``-p$VAR`` names a
  variable, neither is a secret.

A name whose separator ends the line takes its value from the next line when that is
plainly a continuation: after ``\\`` or a YAML block indicator (``|``, ``>``), a line
indented deeper than the name's own, or (after ``=``) a line holding one word that is not
itself ``key=``/``key:`` (shape ``a value named NAME (on the next line)``).

Every regex is bounded or anchored at one position, and an anchor that falls inside a
span already found is skipped, so no byte is re-examined more than a bounded number of
times: no catastrophic backtracking, no quadratic runs (a 50 MB line without separators
costs one pass). Entropy is not scanned here (logs are full of legitimate digests);
``looks_secret`` in ``secrets.py`` adds it for short values.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from operator import itemgetter
from typing import NamedTuple
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
_MARK = REDACTED.encode()
MIN_KNOWN_SECRET = 6
KNOWN_SHAPE = "a known secret value"
MAX_KEY = 64  # longest identifier taken as a key name
MAX_NETLOC = 1024  # user:password@host is looked for this far after `://`
MAX_PEM = 65536

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
_WHOLE_NAMES = frozenset({"database_url", "db_url", "connection_string", "conn_str"})
_SECRET_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"),
    ("account", "key"), ("signing", "key"), ("encryption", "key"), ("master", "key"),
    ("client", "secret"), ("access", "token"), ("refresh", "token"), ("api", "token"),
    ("session", "token"), ("auth", "token"), ("id", "token"),
})
# Names that are credentials in text (``pwd: hunter2``, ``&sig=...``) but not as
# environment variables (``PWD`` is the working directory).
_TEXT_ONLY_NAMES = frozenset({"pwd", "sig"})


def words(name: str) -> list[str]:
    """Split an identifier into lower-case words: ``myApiKey`` -> my, api, key."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _auth_word(word: str) -> bool:
    return word.startswith("auth") and not word.startswith(("author", "authority"))


@lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """True when a variable, key or flag name says its value is a credential."""
    ws = words(name)
    if not ws:
        return False
    joined, last = "_".join(ws), ws[-1]
    prev = ws[-2] if len(ws) > 1 else ""
    return (
        joined in _WHOLE_NAMES or joined.endswith(("_database_url", "_dsn"))
        or any(w in _STRONG_WORDS or _auth_word(w) for w in ws)
        or any(f in w for w in ws for f in _STRONG_FRAGMENTS)
        or any(pair in _SECRET_PAIRS for pair in pairwise(ws))
        or (last == "token" and prev not in _SPECIAL_TOKEN_WORDS)
        or (last in {"key", "keys"} and prev not in _BENIGN_KEY_WORDS)
        or ("private" in ws and len(ws) > 1)
        or ("session" in ws and last in {"session", "id", "key", "token", "cookie"})
    )


@lru_cache(maxsize=4096)
def text_secret_name(name: str) -> bool:
    """``secret_name`` plus the names that are credentials only in text (pwd, sig)."""
    return secret_name(name) or "_".join(words(name)) in _TEXT_ONLY_NAMES


# ---------------------------------------------------------------------------- shapes

# Vendor token formats (detect-secrets / gitleaks rules), keyed by their literal prefix.
_VENDOR: dict[str, str] = {
    **{p: rf"{p}[A-Z0-9]{{16}}\b" for p in
       ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ABIA", "ACCA")},
    **{f"gh{c}_": rf"gh{c}_[A-Za-z0-9]{{36,255}}\b" for c in "pousr"},
    "github_pat_": r"github_pat_[A-Za-z0-9_]{22,255}\b",
    "glpat-": r"glpat-[A-Za-z0-9_\-]{20,255}\b",
    "hf_": r"hf_[A-Za-z0-9]{30,255}\b",
    "xox": r"xox[abposr]-[A-Za-z0-9\-]{10,255}\b",
    "xapp-": r"xapp-[A-Za-z0-9\-]{10,255}\b",
    "AIza": r"AIza[0-9A-Za-z\-_]{35}\b",
    "sk-": r"sk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,255}\b",
    **{p: rf"{p}[0-9A-Za-z]{{16,255}}\b" for p in ("sk_live_", "sk_test_", "rk_live_",
                                                     "rk_test_")},
    "npm_": r"npm_[A-Za-z0-9]{36}\b",
    "pypi-": r"pypi-[A-Za-z0-9_\-]{50,255}\b",
    "eyJ": r"eyJ[A-Za-z0-9_\-]{8,8192}\.[A-Za-z0-9_\-]{8,8192}\.[A-Za-z0-9_\-]{8,8192}",
}
_VENDOR_RE = {p: re.compile(v.encode()) for p, v in _VENDOR.items()}
_PEM_ANCHOR = "-----BEGIN"
_PEM_BLOCK = re.compile(
    rb"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]{0,%d}?"
    rb"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----" % MAX_PEM
)
_PEM_HEAD = re.compile(
    rb"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    rb"(?:(?:\s|\\n){0,8}[A-Za-z0-9+/=]{16,128}){0,1024}"
)
_BEARER = re.compile(rb"(?:[Bb]earer|BEARER)\s{1,8}([A-Za-z0-9\-._~+/]{16,8192}=*)")
_BASIC = re.compile(rb"(?:[Bb]asic|BASIC)\s{1,8}([A-Za-z0-9+/]{8,8192}={0,2})")
_SCHEME_BEFORE = re.compile(rb"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}\Z")
_NETLOC = re.compile(rb"[^\s'\"<>`/?#]{1,%d}" % MAX_NETLOC)
_CONDA_TOKEN = re.compile(rb"/t/([^/?#\s'\"<>`]{1,256})/")
_TOKEN_START = re.compile(rb"[\s'\"<>`]")
_SSH_SCHEMES = frozenset({b"ssh", b"git+ssh", b"ssh+git", b"sftp"})
# names that are credentials only as URL query keys (`?code=`, `&sig=`, `&key=`)
_QUERY_NAMES = frozenset({"code", "sig", "key"})
_KEY_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_KEY_CHARS = frozenset(_KEY_ALPHABET)
_SEP = re.compile(rb"([\"']?)([ \t]{0,8}[:=][ \t]{0,8})")
_DQ = re.compile(rb'"((?:\\.|[^"\\\n])*)"')
_SQ = re.compile(rb"'([^'\n]*)'")
_OPEN_QUOTE = re.compile(rb"[\"']([^\"'\s]+)")
_BARE = re.compile(rb"[^\s\"',;&<>]+")
_HEADER_VALUE = re.compile(rb"[^\s\"'][^\r\n\"']*")
_SPACE_VALUE = re.compile(rb"[ \t]{1,8}([^\s\-][^\s]*)")
_LINE_START = re.compile(rb"[ \t]*\Z")
_NETRC_WORDS = re.compile(rb"(?:^|\s)(?:machine|default|login|account)\s", re.MULTILINE)
_EOL_CONT = re.compile(rb"(?:\\|[|>][+-]?[0-9]?)?[ \t]{0,8}(?=\r?\n)")
_NEXT_LINE = re.compile(rb"\r?\n([ \t]{0,64})([^\s][^\r\n]{0,1023})")
_KEYLIKE = re.compile(rb"[\"']?[A-Za-z0-9_.\-]{1,64}[\"']?[ \t]{0,8}[:=]")
_NOT_A_VALUE_START = frozenset(b"#;[{}-")
_MYSQL = re.compile(rb"(?:mysql|mariadb)(?:-?(?:dump|admin|import|show|check|slap|binlog|pump))?"
                    rb"(?=[\s\"',])")
_MYSQL_P = re.compile(rb"(?<=[\s\"',])-p([^\s\"',;&|<>()\]]+)")
_MYSQL_END = re.compile(rb"[\n;|&]|mysql|mariadb")  # the next anchor ends it too: linear
MAX_COMMAND = 4096  # how far after `mysql` its `-pVALUE` is looked for
_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_JSON_LITERALS = frozenset({b"null", b"true", b"false", b"None", b"True", b"False"})

# Anchors for names. A fragment that makes any identifier a credential name is an anchor
# wherever it stands; a word is one only where the word ends (followed by a separator, or an
# upper-case letter in camelCase), so `tokens/s`, `keyboard` and `sigmoid` cost nothing.
_FRAGMENT_HINTS = ("secret", "password", "passwd", "credential", "apikey", "auth")
_WORD_HINTS = ("code", "passphrase", "cred", "creds", "cookie", "cookies", "key", "keys", "session",
               "sessionid", "sig", "signature", "token", "private", "database", "pwd", "dsn",
               "conn_str", "connection_string", "connectionString", "db_url", "dburl", "dbUrl")
_WORD_END = b"_-.\"' \t:="
_UPPER = bytes(range(0x41, 0x5B))


def _name_hints() -> dict[bytes, str]:
    table: dict[bytes, str] = {}
    for hint in _FRAGMENT_HINTS:
        for v in (hint, hint.capitalize(), hint.upper()):
            table[v.encode()] = "name"
    for hint in _WORD_HINTS:
        for v in {hint, hint[0].upper() + hint[1:], hint.upper()}:
            ends = _WORD_END if v.isupper() else _WORD_END + _UPPER
            for end in ends:
                table[v.encode() + bytes([end])] = "name+1"
    return table


_BEARER_HINTS = tuple(f"{w}{sp}" for w in ("Bearer", "bearer", "BEARER", "Basic", "basic",
                                            "BASIC") for sp in " \t")


class Finding(NamedTuple):
    """A span of the scanned bytes to replace, the bytes it becomes, and its shape."""

    start: int
    end: int
    replacement: bytes
    shape: str


# ---------------------------------------------------------------------------- known values

_known: set[str] = set()
_known_lock = threading.Lock()


def register_known_secret(value: str) -> None:
    """Remember a secret value process-wide so that scans find it and its encodings."""
    if len(value) >= MIN_KNOWN_SECRET and value not in REDACTED:
        with _known_lock:
            _known.add(value)


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
    raw = value.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode()
    forms = {value, b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             quote(value, safe=""), quote_plus(value), raw.hex(), raw.hex().upper()}
    return {f for f in forms if len(f) >= MIN_KNOWN_SECRET}


# ---------------------------------------------------------------------------- anchors

@dataclass(frozen=True)
class _Anchors:
    """Every literal the scan starts from, with what each one means."""

    patterns: tuple[bytes, ...]
    kinds: tuple[str, ...]  # known, vendor:<prefix>, pem, url, conda, name, name+1, bearer
    find: Callable[[bytes], list[tuple[int, int, int]]]


def _finder(patterns: tuple[bytes, ...]) -> Callable[[bytes], list[tuple[int, int, int]]]:
    try:
        import ahocorasick_rs
    except ImportError:  # inside a rerun's interpreter: slower, same answers
        return _regex_finder(patterns)
    auto = ahocorasick_rs.BytesAhoCorasick(list(patterns))

    def find(data: bytes) -> list[tuple[int, int, int]]:
        return list(auto.find_matches_as_indexes(data, overlapping=True))

    return find


def _regex_finder(patterns: tuple[bytes, ...]) -> Callable[[bytes], list[tuple[int, int, int]]]:
    index = {p: i for i, p in enumerate(patterns)}
    alternation = b"|".join(re.escape(p) for p in sorted(patterns, key=len, reverse=True))
    rx = re.compile(b"(?=(" + alternation + b"))")

    def find(data: bytes) -> list[tuple[int, int, int]]:
        # every start position, longest pattern there (enough: each anchor is re-checked)
        return [(index[m.group(1)], m.start(), m.start() + len(m.group(1)))
                for m in rx.finditer(data)]

    return find


_anchor_cache: dict[frozenset[str], _Anchors] = {}
_anchor_lock = threading.Lock()


def _anchors(known: frozenset[str]) -> _Anchors:
    with _anchor_lock:
        if known not in _anchor_cache:
            table = _name_hints()
            for hint in _BEARER_HINTS:
                table[hint.encode()] = "bearer"
            for prefix in _VENDOR:
                table[prefix.encode()] = f"vendor:{prefix}"
            table[_PEM_ANCHOR.encode()] = "pem"
            table[b"://"] = "url"
            table[b"/t/"] = "conda"
            table[b"mysql"] = table[b"mariadb"] = "mysql"
            for value in known:
                for form in encoded_forms(value):
                    table[form.encode("utf-8", "surrogatepass")] = "known"
            patterns = tuple(table)
            _anchor_cache.clear()  # only the current set is needed again
            _anchor_cache[known] = _Anchors(patterns, tuple(table.values()), _finder(patterns))
        return _anchor_cache[known]


# ---------------------------------------------------------------------------- examiners

def _boundary_before(data: bytes, i: int) -> bool:
    return i == 0 or not (chr(data[i - 1]).isalnum() or data[i - 1] == 0x5F)


def _vendor(data: bytes, s: int, prefix: str) -> Finding | None:
    if not _boundary_before(data, s):
        return None
    m = _VENDOR_RE[prefix].match(data, s)
    return Finding(s, m.end(), _MARK, f"a {prefix} token") if m else None


def _pem(data: bytes, s: int) -> Finding | None:
    m = _PEM_BLOCK.match(data, s) or _PEM_HEAD.match(data, s)
    return Finding(s, m.end(), _MARK, "a private key block") if m else None


def _bearer(data: bytes, s: int) -> Finding | None:
    if not _boundary_before(data, s):
        return None
    if m := _BEARER.match(data, s):
        return Finding(m.start(1), m.end(1), _MARK, "a bearer token")
    m = _BASIC.match(data, s)
    if m and _basic_credential(m.group(1)):
        return Finding(m.start(1), m.end(1), _MARK, "basic credentials")
    return None


def _mysql(data: bytes, s: int) -> Finding | None:
    """``mysql ... -pVALUE``: the password glued to ``-p`` in the same command."""
    if not _boundary_before(data, s):
        return None
    m = _MYSQL.match(data, s)
    if m is None:
        return None
    limit = min(len(data), m.end() + MAX_COMMAND)
    end = _MYSQL_END.search(data, m.end(), limit)
    for p in _MYSQL_P.finditer(data, m.end(), end.start() if end else limit):
        if p.group(1)[:1] not in (b"$", b"%") and not data.startswith(_MARK, p.start(1)):
            return Finding(p.start(1), p.end(1), _MARK, "a mysql -p password")
    return None


def _basic_credential(token: bytes) -> bool:
    """True when the token decodes to printable ``user:password`` (not an English word)."""
    try:
        raw = base64.b64decode(token + b"=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw and raw.isascii() and raw.decode().isprintable()


def _url(data: bytes, s: int) -> Finding | None:
    """``scheme://user:password@host``: the user info goes (ssh keeps the user name).
    Query values go through the names (``?token=``, ``&sig=``), conda tokens by ``/t/``."""
    head = _SCHEME_BEFORE.search(data, max(0, s - 32), s)
    netloc = _NETLOC.match(data, s + 3)
    if head is None or netloc is None:
        return None
    at = data.rfind(b"@", netloc.start(), netloc.end())
    if at < 0:
        return None
    if data[head.start():s].lower() in _SSH_SCHEMES:
        colon = data.find(b":", netloc.start(), at)
        return Finding(colon, at, b"", "a URL with credentials") if colon >= 0 else None
    return Finding(netloc.start(), at + 1, b"", "a URL with credentials")


def _conda(data: bytes, s: int) -> Finding | None:
    m = _CONDA_TOKEN.match(data, s)
    if m is None:
        return None
    token_start = max(0, s - 4096)
    for sep in _TOKEN_START.finditer(data, token_start, s):
        token_start = sep.end()  # (bounded: at most 4096 bytes are looked at)
    if data.find(b"://", token_start, s) < 0:
        return None  # a path such as data/t/x/, not a channel URL
    return Finding(m.start(1), m.end(1), _MARK, "a conda channel token")


def _key_around(data: bytes, s: int, e: int) -> tuple[int, int] | None:
    # bytes.rstrip/lstrip with the key alphabet: the run of key characters either side
    before = data[max(0, s - MAX_KEY):s]
    start = s - (len(before) - len(before.rstrip(_KEY_ALPHABET)))
    after = data[e:e + MAX_KEY + 1]
    end = e + (len(after) - len(after.lstrip(_KEY_ALPHABET)))
    if end - start > MAX_KEY or (start == s - MAX_KEY and start > 0
                                 and data[start - 1] in _KEY_CHARS):
        return None  # longer than MAX_KEY: not a name
    while start < s and data[start] in b".-":
        start += 1  # `--api-key`: the dashes are the flag, not the name
    return start, end


def _query_key(data: bytes, ks: int, key: bytes) -> bool:
    return ks > 0 and data[ks - 1] in b"?&;" and key.decode("ascii").lower() in _QUERY_NAMES


@lru_cache(maxsize=8192)
def _secret_key(key: bytes) -> bool:
    return text_secret_name(key.decode("ascii"))


def _name(data: bytes, s: int, e: int) -> Finding | None:
    around = _key_around(data, s, e)
    if around is None:
        return None
    ks, ke = around
    key = data[ks:ke]
    if not (_secret_key(key) or _query_key(data, ks, key)):
        return None
    name = key.decode("ascii")
    return _kv(data, ks, ke, name) or _flag(data, ks, ke, name) or _netrc(data, ks, ke, name)


def _kv(data: bytes, ks: int, ke: int, key: str) -> Finding | None:
    sep = _SEP.match(data, ke)
    if sep is None:
        return None
    at, quoted_key = sep.end(), bool(sep.group(1))
    shape = f"a value named {key}"
    if key.lower() in _HEADERS:
        if data.startswith(_MARK, at) or data.startswith(b'"' + _MARK, at):
            return None
        quote_ = data[at:at + 1] if data[at:at + 1] in (b'"', b"'") else b""
        m = _HEADER_VALUE.match(data, at + len(quote_))
        return Finding(m.start(), m.end(), _MARK, f"an {key} header") if m else None
    for rx in (_DQ, _SQ):
        if m := rx.match(data, at):
            return _value(m.start(1), m.end(1), m.group(1), _MARK, shape, key)
    if cont := _EOL_CONT.match(data, at):
        return _next_line(data, ks, cont, sep.group(2).strip(), key)
    if m := _BARE.match(data, at):
        value = m.group(0)
        if value in _JSON_LITERALS:
            return None
        mark = b'"' + _MARK + b'"' if quoted_key else _MARK
        return _value(m.start(), m.end(), value, mark, shape, key)
    if m := _OPEN_QUOTE.match(data, at):
        return _value(m.start(1), m.end(1), m.group(1), _MARK, shape, key)
    return None


def _indent(data: bytes, ks: int) -> int:
    line_start = data.rfind(b"\n", max(0, ks - 4096), ks) + 1
    line = data[line_start:ks]
    return len(line) - len(line.lstrip(b" \t"))


def _next_line(data: bytes, ks: int, cont: re.Match[bytes], sep: bytes, key: str
               ) -> Finding | None:
    """``NAME=`` (or ``NAME:``) ending its line: the value, when the next line plainly
    continues it (see the module contract)."""
    m = _NEXT_LINE.match(data, cont.end())
    if m is None:
        return None
    marked = cont.group(0).strip() != b""  # `\` or a YAML block indicator
    deeper = len(m.group(1)) > _indent(data, ks)
    text = m.group(2).rstrip()
    start = m.start(2)
    if not marked:
        if (text[0] in _NOT_A_VALUE_START or _KEYLIKE.match(text)
                or not (deeper or (sep == b"=" and b" " not in text and b"\t" not in text))):
            return None
        if text[:1] in (b'"', b"'") and text[-1:] == text[:1] and len(text) > 1:
            start, text = start + 1, text[1:-1]
    return _value(start, start + len(text), text, _MARK, f"a value named {key} (on the next line)",
                  key)


def _value(s: int, e: int, value: bytes, mark: bytes, shape: str, key: str) -> Finding | None:
    if not value or value == _MARK:
        return None
    if key.lower() == "pwd" and value[:1] in (b"/", b"~"):
        return None  # `PWD=/home/alice`: the working directory, not a password
    return Finding(s, e, mark, shape)


def _flag(data: bytes, ks: int, ke: int, key: str) -> Finding | None:
    if data[max(0, ks - 2):ks] == b"--":
        dashes = ks - 2
    elif data[max(0, ks - 1):ks] == b"-":
        dashes = ks - 1
    else:
        return None
    if dashes > 0 and not data[dashes - 1:dashes].isspace():
        return None
    m = _SPACE_VALUE.match(data, ke)
    if m is None or m.group(1) == _MARK:
        return None
    return Finding(m.start(1), m.end(1), _MARK, f"a value of flag {key}")


def _netrc(data: bytes, ks: int, ke: int, key: str) -> Finding | None:
    if key.lower() not in ("password", "passwd"):
        return None
    m = _SPACE_VALUE.match(data, ke)
    if m is None or m.group(1) == _MARK:
        return None
    line_start = data.rfind(b"\n", max(0, ks - 4096), ks) + 1
    before = data[line_start:ks]
    if not (_LINE_START.search(before) or _NETRC_WORDS.search(before)):
        return None
    line_end = data.find(b"\n", m.end())
    if not _LINE_START.search(before):
        return Finding(m.start(1), m.end(1), _MARK, "a netrc entry")
    # `password VALUE` alone on a line (a netrc entry split over lines), not prose
    rest = data[m.end():line_end if line_end >= 0 else len(data)]
    return Finding(m.start(1), m.end(1), _MARK, "a netrc entry") if not rest.strip() else None


# ---------------------------------------------------------------------------- scan

def scan(data: bytes, *, known: bool = True) -> list[Finding]:
    """Every secret span in ``data`` (see the module contract), sorted, possibly overlapping."""
    anchors = _anchors(known_secrets() if known else frozenset())
    found: list[Finding] = []
    covered = -1  # an anchor inside a span already found is not examined again
    for index, s, e in sorted(anchors.find(data), key=itemgetter(1)):
        kind = anchors.kinds[index]
        if kind == "known":
            found.append(Finding(s, e, _MARK, KNOWN_SHAPE))
            continue
        if s < covered:
            continue
        if kind == "name+1":
            kind, e = "name", e - 1  # the separator after the word is not part of it
        hit = _examine(data, kind, s, e)
        if hit is not None:
            found.append(hit)
            covered = max(covered, hit.end)
    return sorted(found)


def _examine(data: bytes, kind: str, s: int, e: int) -> Finding | None:
    if kind == "name":
        return _name(data, s, e)
    if kind == "url":
        return _url(data, s)
    if kind == "conda":
        return _conda(data, s)
    if kind == "bearer":
        return _bearer(data, s)
    if kind == "pem":
        return _pem(data, s)
    if kind == "mysql":
        return _mysql(data, s)
    return _vendor(data, s, kind.partition(":")[2])


def apply(data: bytes, findings: Iterable[Finding]) -> bytes:
    """``data`` with each finding replaced; overlapping findings become one ``REDACTED``,
    unless one lies inside another whose replacement already drops it."""
    out: list[bytes] = []
    pos = 0
    for f in _merge(findings, data):
        out += [data[pos:f.start], f.replacement]
        pos = f.end
    out.append(data[pos:])
    return b"".join(out)


def _merge(findings: Iterable[Finding], data: bytes) -> Iterator[Finding]:
    current: Finding | None = None
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if current is None or f.start >= current.end:
            if current is not None:
                yield current
            current = f
        elif f.end <= current.end and data[f.start:f.end] not in current.replacement:
            continue  # inside, and the outer replacement already drops it
        else:
            current = Finding(current.start, max(current.end, f.end), _MARK, current.shape)
    if current is not None:
        yield current


def shapes(findings: Iterable[Finding]) -> list[str]:
    """The distinct shapes of some findings, in order of first appearance."""
    return list(dict.fromkeys(f.shape for f in findings))


def as_text(data: bytes) -> str:
    """Decode what ``scan`` saw (lossless for what ``as_bytes`` made)."""
    return data.decode("utf-8", "surrogatepass")


def as_bytes(text: str) -> bytes:
    """Encode text for ``scan`` (lone surrogates survive the round trip)."""
    return text.encode("utf-8", "surrogatepass")
