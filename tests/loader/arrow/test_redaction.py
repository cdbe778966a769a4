"""redact() masks known secrets in every encoding and secret shapes in real driver/HTTP error text."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import pytest

from databricks_scripts.redaction import MASK, redact, secret_forms, secrets_from_env
from databricks_scripts.retry import advisor as retry_advisor
from databricks_scripts.script_env import ScriptEnv

SECRET = "Sup3r$ecret-7f3a 'q' \\x@/#"  # quote, backslash, @, / and # change under every encoding


# -- known secret values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        SECRET,
        quote(SECRET, safe=""),
        quote_plus(SECRET),
        quote(SECRET),
        json.dumps(SECRET)[1:-1],
        repr(SECRET)[1:-1],
        SECRET.replace("\\", "\\\\").replace("'", "\\'"),  # libpq conninfo quoting
    ],
    ids=["raw", "url", "url-plus", "url-path", "json", "repr", "libpq"],
)
def test_a_known_secret_is_masked_in_every_form_a_library_may_echo(encoded):
    text = f"driver said: could not use {encoded} for user loader"
    out = redact(text, [SECRET])
    assert encoded not in out
    assert out == f"driver said: could not use {MASK} for user loader"


def test_known_secret_in_bare_prose_needs_the_value_not_a_shape():
    # No key, no URL: only knowing the value can catch this one.
    assert redact("login rejected: Plain-Scope-Secret-42", ["Plain-Scope-Secret-42"]) == (
        f"login rejected: {MASK}"
    )
    assert "Plain-Scope-Secret-42" in redact("login rejected: Plain-Scope-Secret-42")


def test_short_or_empty_secrets_do_not_mask_ordinary_text():
    assert redact("id 12 of 123", ["12", "", None]) == "id 12 of 123"
    assert secret_forms("ab") == []


def test_longer_secret_wins_over_a_secret_it_contains():
    assert redact("pw hunter2hunter2", ["hunter2", "hunter2hunter2"]) == f"pw {MASK}"


# -- realistic driver and platform errors ----------------------------------------------------------

DRIVER_ERRORS = {
    # libpq / psycopg with a conninfo echoed by application code
    "libpq conninfo": (
        (
            "connection failed for \"host='db1' port='5432' user='loader' "
            "password='S3cr\\'et pw' dbname='sales'\": FATAL:  password authentication failed"
        ),
        ["S3cr", "et pw"],
        ["host='db1'", "dbname='sales'", "password authentication failed"],
    ),
    "libpq URL": (
        "IO: [libpq] Failed to connect: postgresql://loader:Pg%40ss%2Fw0rd@db1:5432/sales",
        ["Pg%40ss%2Fw0rd", "Pg@ss/w0rd"],
        ["loader:", "@db1:5432/sales"],
    ),
    "URL with unencoded @ in the password": (
        "could not connect to postgresql://loader:p@ss@word@db1:5432/sales",
        ["p@ss@word", "ss@word"],
        ["@db1:5432/sales"],
    ),
    "ADBC uri option": (
        'adbc_driver_postgresql: uri="postgres://u:AdbcPw-99@h/db" failed',
        ["AdbcPw-99"],
        ["@h/db"],
    ),
    "pymysql access denied": (
        "(1045, \"Access denied for user 'loader'@'10.0.0.4' (using password: YES)\")",
        [],
        ["(using password: YES)", "'loader'@'10.0.0.4'"],
    ),
    "pymysql connect kwargs repr": (
        "connect(host='db1', user='loader', password='My$ql-Pw 1', database='shop') failed",
        ["My$ql-Pw 1", "My$ql"],
        ["host='db1'", "database='shop'"],
    ),
    "pymssql / ODBC string": (
        "DRIVER={ODBC Driver 18};SERVER=sql1;UID=sa;PWD={Ms;Sql=Pw};Encrypt=yes: login failed",
        ["Ms;Sql=Pw", "Sql=Pw"],
        ["SERVER=sql1", "UID=sa", "Encrypt=yes"],
    ),
    "ODBC unbraced": (
        "Server=tcp:sql1,1433;Database=shop;User ID=sa;Password=MsSqlPw-1;",
        ["MsSqlPw-1"],
        ["Database=shop"],
    ),
    "oracledb": (
        "DPY-4011: connection to oracle://scott:Tiger-Pw1@ora1:1521/ORCLPDB1 was closed",
        ["Tiger-Pw1"],
        ["ora1:1521/ORCLPDB1"],
    ),
    "JDBC oracle thin": (
        "java.sql.SQLException: jdbc:oracle:thin:scott/Tiger-Pw2@ora1:1521/ORCL refused",
        ["Tiger-Pw2"],
        ["ora1:1521/ORCL"],
    ),
    "JDBC sqlserver": (
        "jdbc:sqlserver://sql1:1433;databaseName=shop;user=sa;password=JdbcPw-3;encrypt=true",
        ["JdbcPw-3"],
        ["databaseName=shop", "encrypt=true"],
    ),
    "JDBC mysql query string": (
        "jdbc:mysql://db1:3306/shop?user=loader&password=JdbcPw%264&useSSL=false",
        ["JdbcPw%264"],
        ["useSSL=false"],
    ),
    "Databricks PAT in a header dump": (
        (
            "HTTP 403 for POST /api/2.1/jobs/runs/submit "
            "headers={'Authorization': 'Bearer dapi0123456789abcdef0123456789abcdef-2'}"
        ),
        ["dapi0123456789abcdef0123456789abcdef"],
        ["/api/2.1/jobs/runs/submit"],
    ),
    "bare Databricks token": (
        "Invalid access token dapiabcdef0123456789abcdef0123456789",
        ["dapiabcdef0123456789abcdef0123456789"],
        ["Invalid access token"],
    ),
    "OAuth JWT": (
        "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJsb2FkZXIifQ.c2lnbmF0dXJlLWJ5dGVz expired",
        ["eyJhbGciOiJSUzI1NiJ9"],
        ["expired"],
    ),
    "Authorization Basic": (
        "proxy said 407 to Authorization: Basic bG9hZGVyOnB3 (user loader)",
        ["bG9hZGVyOnB3"],
        ["(user loader)"],
    ),
    "Authorization without scheme": (
        '{"authorization": "raw-token-value-1"}',
        ["raw-token-value-1"],
        ['{"authorization": '],
    ),
    "OpenAI key": (
        "Error code: 401 - Incorrect API key provided: sk-proj-AbCdEf0123456789_xyzXYZ",
        ["sk-proj-AbCdEf0123456789_xyzXYZ", "AbCdEf0123456789"],
        ["Incorrect API key provided"],
    ),
    "JSON body": (
        (
            '{"client_id": "svc", "client_secret": "Cl1ent Secret", "api_key": "k-123456",'
            ' "access_token": "at-987654", "password_secret": "pg_password"}'
        ),
        ["Cl1ent Secret", "k-123456", "at-987654"],
        ['"client_id": "svc"', '"password_secret": "pg_password"'],
    ),
    "JSON inside a JSON string": (
        '{"message": "{\\"password\\": \\"In ner Pw\\"}"}',
        ["In ner Pw"],
        ['{"message": '],
    ),
    "environment dump": (
        "LAKEBASE_PASSWORD=Lake-Pw-1 DATALOADER_SECRET__KV_MAIN__PG_PASS=Scope-Pw-2 HOME=/root",
        ["Lake-Pw-1", "Scope-Pw-2"],
        ["HOME=/root", "LAKEBASE_PASSWORD=", "DATALOADER_SECRET__KV_MAIN__PG_PASS="],
    ),
    "Azure SAS signature": (
        "GET https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=AbC%2Fdef%3D&se=2025 403",
        ["AbC%2Fdef%3D"],
        ["sv=2022-11-02", "se=2025"],
    ),
    "GitHub token": (
        "git push failed for ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ["ghp_abcdefghijklmnopqrstuvwxyz0123456789"],
        ["git push failed"],
    ),
}


@pytest.mark.parametrize("name", sorted(DRIVER_ERRORS))
def test_driver_errors_lose_the_secret_and_keep_the_diagnosis(name):
    text, secrets, kept = DRIVER_ERRORS[name]
    out = redact(text)  # no known values: the shapes alone must catch these
    for secret in secrets:
        assert secret not in out, out
    for useful in kept:
        assert useful in out, out
    assert redact(out) == out  # idempotent: redacting twice changes nothing


def test_masked_values_keep_their_quotes_so_the_text_stays_readable():
    assert redact("password='x y z' dbname='d'") == f"password='{MASK}' dbname='d'"
    assert redact('{"token": "abc def"}') == f'{{"token": "{MASK}"}}'
    assert redact("PWD={a;b};UID=sa") == f"PWD={{{MASK}}};UID=sa"


def test_plain_prose_about_passwords_is_left_alone():
    for text in (
        'FATAL:  password authentication failed for user "loader"',
        "ORA-01017: invalid username/password; logon denied",
        "Login failed for user 'sa'.",
        (
            "secret 'pg-pass' of scope 'kv' not found: set environment variable "
            "DATALOADER_SECRET__KV__PG_PASS"
        ),
        'relation "public.orders" does not exist',
    ):
        assert redact(text) == text


def test_none_and_non_strings():
    assert redact(None) == ""
    assert redact(ValueError("password=abc")) == f"password={MASK}"


# -- one list of secret values for every caller ----------------------------------------------------


def test_secrets_from_env_knows_every_secret_variable():
    env = {
        "DATALOADER_AI_API_KEY": "sk-ai-key",
        "OPENAI_API_KEY": "sk-openai",
        "DATABRICKS_TOKEN": "dapi-x",
        "DATABRICKS_CLIENT_SECRET": "dose-x",
        "LAKEBASE_PASSWORD": "lake-pw",
        "DATALOADER_SECRET__KV__PG": "scope-pw",
        "AZURE_CLIENT_SECRET": "azure-secret-value",  # guessed from the name
        "MYSQL_PWD": "mysql-password",
        "SOME_TOKEN": "true",  # guessed name, but too short to be a real secret
        "PWD": "/work/main",  # the shell's working directory, not a password
        "HOME": "/root",
        "DATALOADER_LAKE_ROOT": "/tmp/lake",
    }
    assert set(secrets_from_env(env)) == {
        "sk-ai-key",
        "sk-openai",
        "dapi-x",
        "dose-x",
        "lake-pw",
        "scope-pw",
        "azure-secret-value",
        "mysql-password",
    }


def test_the_scripts_take_their_secrets_from_the_process_environment_once(monkeypatch):
    monkeypatch.setenv("DATALOADER_AI_API_KEY", "ai-key-from-env")
    assert "ai-key-from-env" in ScriptEnv.from_environ().secrets
    with pytest.raises(TypeError):
        secrets_from_env()  # no hidden read of os.environ: the caller passes its environment
    # One list of secret variables: the advisor keeps no copy of its own.
    assert not hasattr(retry_advisor, "secrets_from_env")


def test_the_load_asset_masks_every_env_secret(monkeypatch):
    from dagsters.assets import dataloader_pipes_asset
    from dagsters.settings import load_settings

    monkeypatch.setenv("DATALOADER_AI_API_KEY", "ai-key-the-asset-missed")
    assert "ai-key-the-asset-missed" not in dataloader_pipes_asset._safe(
        "proxy rejected ai-key-the-asset-missed", load_settings()
    )


# -- ordinary words stay (issue 26) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "load of a.b failed at step 'resolve secret': secret 'maria-pass' of scope 'kv-nc' not found",
        'step "rotate token": token refresh skipped',
        "the 'password' column: dropped",
    ],
)
def test_a_word_before_a_quote_that_closes_prose_is_not_a_key(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("{'password': 'hunter2x'}", "{'password': '***'}"),
        ('{"db_token": "abc123456"}', '{"db_token": "***"}'),
        ("password=hunter2x;", "password=***;"),
        ("secret: hunter2x", "secret: ***"),
    ],
)
def test_keys_quoted_on_their_own_or_bare_still_mask_their_values(text, masked):
    assert redact(text) == masked
