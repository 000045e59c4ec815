"""Which secrets keep a source file, or the uncommitted changes, out of the store.

The scanner (``secret_scan.scan``) says where secret *shapes* are; what a shape means in
a run's source tree depends on the kind of file it sits in (``file_kind``):

* **certain** shapes count in every file: vendor tokens, private keys, URL passwords,
  bearer tokens, known secret values, ``mysql ... -pVALUE``;
* **name** shapes (``password = VALUE``, ``--token VALUE``, netrc ``password VALUE``, a
  value on the line after ``password=``) count when the value is a *literal*
  (``literal``: not empty, at least ``MIN_LITERAL`` characters, not a number, boolean,
  reference, template, path, URL or placeholder such as ``changeme``, ``<password>``,
  ``${DB_PASSWORD}``, ``your-token-here``) and the name is a credential's, not a setting
  about one (``secret_name`` minus a bare ``key``/``keys`` and names ending in ``_file``,
  ``_path``, ``_env``, ``_type``, ``_url``... see ``_META_LAST``):

  - in **config** files (``CONFIG_SUFFIXES``, ``CONFIG_NAMES``: ini, cfg, conf, env,
    toml, yaml, json, properties, credentials, secrets, .env*, .netrc, .pgpass ...):
    quoted or bare;
  - in **shell** files (sh, bash, Makefile, Dockerfile ...): quoted or bare on the
    name's own line (``export DB_PASSWORD=hunter2``); on the next line only quoted;
  - in other **code**: only a quoted string literal (``db_password = 'hunter2'``,
    ``"api_key": "..."``, ``password: str = "..."``), never ``password = input(...)``,
    ``os.environ[...]`` or ``password: str``;
* a ``.pgpass`` line (``host:port:db:user:password``) holds a password in its last field.

A patch (``git diff``) is judged file by file, each part by its own file's kind, with the
diff markers blanked so that the lines read as the file does.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

from auditor.record.capture.secret_scan import Finding, scan, secret_name, words

Kind = Literal["config", "shell", "code"]

CONFIG_SUFFIXES = frozenset({
    ".ini", ".cfg", ".conf", ".cnf", ".env", ".toml", ".yaml", ".yml", ".json", ".properties",
    ".netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials", ".dockercfg", ".htpasswd",
})
CONFIG_NAMES = frozenset({
    "credentials", "credential", "secrets", "secret", ".env", ".netrc", "_netrc", "netrc",
    ".pgpass", "pgpass", ".my.cnf", ".npmrc", ".pypirc", ".git-credentials", ".dockercfg",
    ".boto", ".s3cfg", "config", ".htpasswd",
})
SHELL_SUFFIXES = frozenset({".sh", ".bash", ".zsh", ".ksh", ".mk", ".dockerfile"})
SHELL_NAMES = frozenset({"makefile", "gnumakefile", "dockerfile", "containerfile", "procfile",
                         ".bashrc", ".zshrc", ".profile", ".bash_profile", ".envrc"})

MIN_LITERAL = 4
_CERTAIN_EXCEPT = ("a value named ", "a value of flag ", "a netrc entry")
_NEXT = "(on the next line)"
_META_LAST = frozenset({
    "type", "types", "mode", "method", "kind", "enabled", "enable", "disabled", "required",
    "provider", "url", "uri", "endpoint", "host", "server", "name", "names", "ref", "file",
    "files", "path", "paths", "dir", "env", "var", "variable", "header", "field", "length",
    "len", "size", "min", "max", "count", "ttl", "expiry", "expires", "expiration", "timeout",
    "version", "format", "algorithm", "alg", "prefix", "suffix", "scope", "scopes", "policy",
    "rotation", "backend", "store", "source", "location", "manager", "helper", "cmd",
    "command", "id", "ids", "index", "lifetime", "interval", "limit",
})
_PLACEHOLDERS = frozenset({
    "changeme", "changeit", "password", "passwd", "secret", "example", "placeholder",
    "todo", "tbd", "fixme", "none", "null", "nil", "true", "false", "yes", "no", "on",
    "off", "redacted", "dummy", "fake", "sample", "notset", "unset", "empty", "default",
    "basic", "bearer", "oauth", "oauth2", "jwt", "token", "disabled", "enabled",
    "required", "optional", "iam", "kerberos", "ldap", "saml", "oidc", "apikey", "key",
})
_REFERENCE_PREFIXES = (b"$", b"%", b"!", b"<", b"{", b"[", b"(", b"@", b"&", b"*", b"/",
                       b"~/", b"./", b"../", b"env:", b"vault:", b"file:", b"secret:", b"ref:",
                       b"keyring:", b"arn:")
_TEMPLATE_PARTS = (b"${", b"$(", b"{{", b"%(", b"#{", b"://")
_NUMBER = re.compile(rb"[+-]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FILLER = re.compile(rb"(?:x+|\*+|\.+|-+|_+|#+|0+)", re.IGNORECASE)
_ANNOTATED = re.compile(rb"[A-Za-z_][\w\[\], .|]{0,64}[ \t]*=[ \t]*([\"'])([^\"'\n]+)\1")
_PGPASS_LINE = re.compile(rb"^[ \t]*([^#\s:][^:\n]*|\*):[^:\n]*:[^:\n]*:[^:\n]*:([^\n]+)$",
                          re.MULTILINE)


def file_kind(rel: str) -> Kind:
    """Config, shell or code, by the file's name (see the module contract)."""
    name = PurePosixPath(rel).name.lower()
    suffix = PurePosixPath(name).suffix
    stem = name.removesuffix(suffix) if suffix else name
    if (suffix in CONFIG_SUFFIXES or name in CONFIG_NAMES or stem in CONFIG_NAMES
            or name.startswith(".env") or name.endswith((".env", "-credentials"))):
        return "config"
    if suffix in SHELL_SUFFIXES or name in SHELL_NAMES or name.startswith("dockerfile"):
        return "shell"
    return "code"


def literal(value: bytes) -> bool:
    """True when a value written after a secret name is a literal credential, not a
    reference, a template, a path, a number or a placeholder."""
    v = value.strip().strip(b"\"'")
    if len(v) < MIN_LITERAL or v.startswith(_REFERENCE_PREFIXES):
        return False
    if any(part in v for part in _TEMPLATE_PARTS) or _NUMBER.fullmatch(v) or _FILLER.fullmatch(v):
        return False
    text = re.sub(r"[^a-z0-9]", "", v.decode("utf-8", "replace").lower())
    if text in _PLACEHOLDERS or text.startswith("your") or text.endswith("here"):
        return False
    # `password: DB_PASSWORD`: the name of the variable that holds it, not the secret
    names_a_variable = re.fullmatch(rb"[A-Z][A-Z0-9_]*", v) is not None
    return not (names_a_variable and secret_name(v.decode("ascii")))


def _credential_name(shape: str) -> bool:
    if shape.startswith("a netrc entry"):
        return True
    name = shape.removeprefix("a value named ").removeprefix("a value of flag ")
    ws = words(name.removesuffix(_NEXT).strip())
    return bool(ws) and ws not in (["key"], ["keys"]) and ws[-1] not in _META_LAST


def _quoted(data: bytes, f: Finding) -> bool:
    q = data[f.start - 1:f.start] if f.start else b""
    return q in (b'"', b"'") and data[f.end:f.end + 1] == q


def _counts(data: bytes, f: Finding, kind: Kind) -> tuple[str, int] | None:
    """``f`` as a secret of this kind of file (shape, offset), or None."""
    if not f.shape.startswith(_CERTAIN_EXCEPT):
        return f.shape, f.start
    inner = [g for g in scan(data[f.start:f.end]) if not g.shape.startswith(_CERTAIN_EXCEPT)]
    if inner:  # `token: hf_...`: a certain shape inside a name's value
        return inner[0].shape, f.start
    if not _credential_name(f.shape):
        return None
    value = data[f.start:f.end]
    quoted = _quoted(data, f)
    if kind == "code" and not quoted:
        annotated = _ANNOTATED.match(data, f.start)  # `password: str = "hunter2"`
        if annotated is None or not literal(annotated.group(2)):
            return None
        return f.shape, annotated.start(2)
    if kind == "shell" and f.shape.endswith(_NEXT) and not quoted:
        return None
    return (f.shape, f.start) if literal(value) else None


def _pgpass(data: bytes) -> tuple[str, int] | None:
    for m in _PGPASS_LINE.finditer(data):
        if m.group(2).strip() not in (b"", b"*"):
            return "a .pgpass entry", m.start(2)
    return None


def secret_in_file(rel: str, data: bytes) -> tuple[str, int] | None:
    """The first secret ``data`` (the bytes of ``rel``) holds: its shape and offset."""
    kind = file_kind(rel)
    for f in scan(data):
        if (found := _counts(data, f, kind)) is not None:
            return found
    name = PurePosixPath(rel).name.lower()
    if name in (".pgpass", "pgpass") or name.endswith(".pgpass"):
        return _pgpass(data)
    return None


def _blanked(part: bytes) -> bytes:
    """A diff part with the ``+``/``-``/`` `` marker of every hunk line made a space."""
    lines = part.split(b"\n")
    in_hunk = False
    for i, line in enumerate(lines):
        if line.startswith(b"@@"):
            in_hunk = True
        elif in_hunk and line[:1] in (b"+", b"-", b" "):
            lines[i] = b" " + line[1:]
    return b"\n".join(lines)


def secret_in_patch(diff: bytes) -> tuple[str, int, str] | None:
    """The first secret a ``git diff`` holds: shape, offset in ``diff`` and file."""
    starts = [m.start() for m in re.finditer(rb"^diff --git a/", diff, re.MULTILINE)] or [0]
    for start, end in zip(starts, [*starts[1:], len(diff)], strict=True):
        part = diff[start:end]
        header = part[:part.find(b"\n")].decode("utf-8", "replace")
        rel = header.removeprefix("diff --git a/").partition(" b/")[2] or "a changed file"
        found = secret_in_file(rel, _blanked(part))
        if found is not None:
            return found[0], start + found[1], rel
    return None
