"""Issue 16 item 9: which secrets keep a source file or the uncommitted changes out of the
store (config-like files, shell files, code), and the false-positive set that must not."""

from __future__ import annotations

import pytest

from auditor.record.capture.code_secrets import (
    file_kind,
    literal,
    secret_in_file,
    secret_in_patch,
)
from auditor.record.capture.secrets import REDACTED, redact_argv, redact_text

PW = "Hq7-zR2pLx9W"


@pytest.mark.parametrize(("rel", "kind"), [
    ("cfg/credentials", "config"), (".aws/credentials", "config"), ("app.ini", "config"),
    ("setup.cfg", "config"), ("prod.env", "config"), (".env", "config"),
    (".env.local", "config"), ("pyproject.toml", "config"), ("conf/db.yaml", "config"),
    ("x.yml", "config"), ("a.json", "config"), ("app.properties", "config"),
    (".netrc", "config"), (".pgpass", "config"), ("secrets.py", "config"),
    ("deploy.sh", "shell"), ("Makefile", "shell"), ("Dockerfile", "shell"),
    ("train.py", "code"), ("main.go", "code"), ("README.md", "code"),
])
def test_file_kinds(rel: str, kind: str) -> None:
    assert file_kind(rel) == kind


# (file, text) that hold a secret: each must be found, on the planted value's line
SECRETS = [
    ("cfg/credentials", f"[default]\naws_access_key_id = x\naws_secret_access_key = {PW}\n"),
    ("app.ini", f"[db]\nhost = h\npassword = {PW}\n"),
    ("app.ini", f"[db]\npassword =\n    {PW}\n"),  # the value on the next line
    (".env", f"DEBUG=1\nDB_PASSWORD={PW}\n"),
    ("conf/db.yaml", f"db:\n  user: u\n  password: {PW}\n"),
    ("conf/db.yaml", f"db:\n  password:\n    {PW}\n"),  # YAML plain scalar, next line
    ("conf/db.yaml", f"db:\n  password: |\n    {PW}\n"),  # YAML block scalar
    ("a.json", f'{{"db": {{"password": "{PW}"}}}}\n'),
    ("pyproject.toml", f'[tool.x]\napi_key = "{PW}"\n'),
    ("app.properties", f"db.password=\\\n  {PW}\n"),
    ("creds.env", f"password=\n{PW}\n"),  # `password=` and the value alone on the next line
    (".netrc", f"machine h\nlogin u\npassword {PW}\n"),
    (".pgpass", f"# host:port:db:user:password\nlocalhost:5432:db:u:{PW}\n"),
    ("train.py", f"db_password = '{PW}'\n"),
    ("train.py", f'CONFIG = {{"api_key": "{PW}"}}\n'),
    ("train.py", f'password: str = "{PW}"\n'),
    ("app.js", f'const secretKey = "{PW}";\n'),
    ("deploy.sh", f"export DB_PASSWORD={PW}\n"),
    ("backup.sh", f"mysqldump -u root -p{PW} shop > shop.sql\n"),
    ("Makefile", f"dump:\n\tmysql -uroot -p{PW} -e 'select 1'\n"),
    ("train.py", f'subprocess.run(["mysql", "-uroot", "-p{PW}", "db"])\n'),
    ("Dockerfile", f"FROM x\nENV API_TOKEN={PW}\n"),
]


@pytest.mark.parametrize(("rel", "text"), SECRETS)
def test_planted_secrets_are_found(rel: str, text: str) -> None:
    found = secret_in_file(rel, text.encode())
    assert found is not None, (rel, text)
    shape, offset = found
    assert text.encode()[offset:].startswith(PW.encode()), (shape, offset)


# the false-positive set: none of these is a secret
CLEAN = [
    ("train.py", "password = input('password: ')\n"),
    ("train.py", "password = getpass.getpass()\n"),
    ("train.py", "password = os.environ['DB_PASSWORD']\n"),
    ("train.py", "token = os.getenv('HF_TOKEN')\n"),
    ("train.py", "def login(password: str) -> None:\n    password: str\n"),
    ("train.py", "password = args.password\napi_key = None\n"),
    ("train.py", "db_password = f'{user}-{suffix}'\n"),
    ("train.py", "parser.add_argument('--password', help='the password')\n"),
    ("train.py", "pad_token = '<pad>'\neos_token = '</s>'\nkey = 'val_loss'\n"),
    ("train.py", "password = ''\nsecret = 'changeme'\n"),
    ("train.py", "if password == 'x':\n    pass\n"),
    ("config.yaml", "db:\n  password: ${DB_PASSWORD}\n  token: changeme\n"),
    ("config.yaml", "password: <password>\napi_key: your-api-key-here\n"),
    ("config.yaml", "password: '{{ vault_db_password }}'\ntoken: '%(token)s'\n"),
    ("config.yaml", "secret_name: my-secret\npassword_file: /run/secrets/db\n"),
    ("config.yaml", "auth_type: basic\ntoken_url: https://auth.example.com/token\n"),
    ("config.yaml", "password:\n  type: string\n  format: password\n"),
    ("config.yaml", "key: pip-cache-v1\nmax_token: 512\ncache_key: abc123\n"),
    ("config.yaml", "password: null\ntoken: ~\nauth: true\npassword: ''\n"),
    ("config.yaml", "password: DB_PASSWORD\n"),
    ("ci.yml", "env:\n  TOKEN: ${{ secrets.GITHUB_TOKEN }}\n"),
    ("schema.json", '{"properties": {"password": {"type": "string"}}}\n'),
    ("tokenizer_config.json", '{"pad_token": "<pad>", "bos_token": "<s>"}\n'),
    (".env", "DB_PASSWORD=\nDEBUG=1\n"),
    ("deploy.sh", 'DB_PASSWORD="$1"\nmysql -uroot -p"$DB_PASSWORD" db\nmysql -p db\n'),
    ("deploy.sh", "PASSWORD=\ndone\n"),
    ("Makefile", "dump:\n\tmysqldump -uroot -p$(DB_PASSWORD) shop\n"),
    ("train.py", "import pymysql\nconn = pymysql.connect(port=3306)\n"),
    (".pgpass", "# host:port:db:user:password\n"),
]


@pytest.mark.parametrize(("rel", "text"), CLEAN)
def test_the_false_positive_set_is_clean(rel: str, text: str) -> None:
    assert secret_in_file(rel, text.encode()) is None, (rel, text)


def test_literal_values() -> None:
    for value in (b"hunter22", b"'s3cr3t!'", PW.encode()):
        assert literal(value), value
    for value in (b"", b"abc", b"${X}", b"$X", b"%(x)s", b"{{ x }}", b"<password>",
                  b"changeme", b"CHANGE_ME", b"xxxxxx", b"******", b"12345", b"3.14",
                  b"true", b"null", b"/run/secrets/x", b"~/.pw", b"https://x/y",
                  b"your_password", b"insert-key-here", b"DB_PASSWORD", b"env:DB_PW"):
        assert not literal(value), value


def _diff(rel: str, lines: list[str]) -> bytes:
    body = "".join(lines)
    return (f"diff --git a/{rel} b/{rel}\nindex 1..2 100644\n--- a/{rel}\n+++ b/{rel}\n"
            f"@@ -1,2 +1,3 @@\n{body}").encode()


def test_a_patch_is_judged_file_by_file() -> None:
    code = _diff("train.py", [" import os\n", f"+db_password = '{PW}'\n", " print(1)\n"])
    found = secret_in_patch(code)
    assert found is not None and found[2] == "train.py"
    assert code[found[1]:].startswith(PW.encode())
    cfg = _diff("conf/app.ini", [" [db]\n", "+password =\n", f"+    {PW}\n"])
    assert secret_in_patch(cfg) is not None
    # the same name shape in code without a literal, and an unrelated file first
    clean = _diff("a.py", [" x = 1\n", "+password = input()\n"])
    assert secret_in_patch(clean + code) is not None
    assert secret_in_patch(clean) is None


def test_mysql_passwords_are_redacted_in_text_and_argv() -> None:
    text = f"running: mysqldump -u root -p{PW} shop | gzip > x; tar -pczf a.tgz x\n"
    out = redact_text(text)
    assert PW not in out and f"-p{REDACTED} shop" in out and "tar -pczf" in out
    assert redact_text("mysql -p db; mysql -p$PW db") == "mysql -p db; mysql -p$PW db"
    argv = redact_argv(["mysql", "-uroot", f"-p{PW}", "db"])
    assert argv == ["mysql", "-uroot", f"-p{REDACTED}", "db"]
    assert redact_argv(["python", "-pfoo"]) == ["python", "-pfoo"]
    assert PW not in " ".join(redact_argv(["sh", "-c", f"mysqldump -p{PW} db"]))
    assert redact_text(redact_text(text)) == redact_text(text)  # idempotent


def test_a_value_on_the_next_line_is_redacted_in_text() -> None:
    out = redact_text(f"[client]\npassword=\n    {PW}\nuser=u\n")
    assert PW not in out and "user=u" in out
    assert redact_text("Password:\nEpoch 1 done\n") == "Password:\nEpoch 1 done\n"
