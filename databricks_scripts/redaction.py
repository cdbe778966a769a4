"""Remove secrets from text before it is logged, stored or sent anywhere.

Shared by the Databricks scripts and the Dagster code location (the scripts run on clusters where
only this directory exists, so it imports nothing outside the standard library).

Two layers, both applied by :func:`redact`:

1. Known secret values (the ones the caller holds, see :func:`secrets_from_env`) are masked
   wherever they appear, also in the encoded forms a driver or library may echo them in: URL
   encoding, JSON/Python string escaping and libpq conninfo quoting.
2. Secret-looking shapes are masked even when their value is unknown: ``password=...`` style
   pairs (connection strings, JDBC/ODBC strings, JSON, env dumps), ``user:password@`` in URLs,
   ``Authorization`` headers and well-known token formats (Databricks, OpenAI, GitHub, AWS, JWT).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "***"

# Env vars whose values are secrets wherever DataLoader runs (code location and scripts).
SECRET_ENV_NAMES = (
    "DATALOADER_AI_API_KEY",
    "OPENAI_API_KEY",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_PASSWORD",
    "LAKEBASE_PASSWORD",
    "PGPASSWORD",
)
# Source passwords resolved locally: DATALOADER_SECRET__<SCOPE>__<KEY>.
SECRET_ENV_PREFIX = "DATALOADER_SECRET__"
# Any other variable named like a credential (AZURE_CLIENT_SECRET, AWS_SECRET_ACCESS_KEY,
# MYSQL_PWD, ...). Short values are skipped: masking "true" or "1" everywhere helps nobody.
_SECRET_ENV_NAME = re.compile(
    r"(?i)(?:PASSWORD|PASSWD|_PWD|TOKEN|SECRET|API_KEY|SECRET_KEY|ACCESS_KEY|PRIVATE_KEY)$"
)
_MIN_GUESSED_SECRET_LEN = 8
_MIN_SECRET_LEN = 3  # shorter values would mask ordinary words and digits

_KEYS = r"""
    [a-z0-9_.-]*?
    (?:password|passwd|pwd|secret|token|api[_-]?key|apikey|private[_-]?key|
       secret[_-]?key|access[_-]?key|sig|signature)
    |dataloader_secret__\w+
"""
# key=value / key: value pairs whose value is a secret (connection strings, JDBC/ODBC, JSON, env).
_KEY_VALUE = re.compile(
    rf"""(?ix)
    (?P<key>
        # quoted, the quotes around the key alone ("password": ..., 'token': ...); a quote that
        # closes longer prose ("step 'resolve secret': secret ...") makes no key
        (?P<quote>\\?["'])\b(?:{_KEYS})\b
            (?<!password_secret)(?<!password-secret)(?P=quote)
        |\b(?:{_KEYS})\b
            (?<!password_secret)(?<!password-secret)  # that key holds a secret's NAME: keep it
    )
    (?P<sep>\s*[=:]\s*)
    (?!(?:YES|NO)\))  # MySQL's "(using password: YES)" says whether one was sent, not which
    (?P<value>
        \\"(?:(?!\\").)*\\"           # a JSON string inside a JSON string
        |"(?:\\.|[^"\\])*"            # "quoted", with escapes
        |'(?:\\.|[^'\\])*'            # 'quoted', libpq style escapes
        |\{{[^}}]*\}}                 # ODBC braced value (PWD=...)
        |[^\s;&,}}\]]+                # bare, up to the next separator
    )
    """
)
# scheme://user:password@host (greedy to the last @ before the path: passwords may contain @).
_URL_CREDENTIALS = re.compile(
    r"(?i)(?P<prefix>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<value>[^\s/]+)@"
)
# jdbc:oracle:thin:user/password@host
_ORACLE_CREDENTIALS = re.compile(r"(?i)(?P<prefix>\bjdbc:oracle:\w+:[^/@\s:]+/)(?P<value>[^@\s]+)@")
# Authorization / Proxy-Authorization headers, with or without a scheme word.
_AUTH_HEADER = re.compile(
    r"""(?ix)
    (?P<prefix>\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?
        (?:(?:bearer|basic|token|digest|negotiate|apikey)\s+)?)
    (?P<value>[^\s"',;]+)
    """
)
_BEARER = re.compile(r"(?i)\b(?P<prefix>bearer\s+|basic\s+)(?P<value>[a-z0-9._~+/=-]{8,})")
_TOKEN_SHAPES = re.compile(
    r"\b(?:dapi[0-9a-f]{16,}(?:-\d+)?|dose[0-9a-f]{16,}|sk-[A-Za-z0-9_-]{16,}|"
    r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|"
    r"AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})\b"
)


def _masked(value: str) -> str:
    """The mask inside the value's own quotes or braces, so the text around it stays readable."""
    for opening, closing in (('\\"', '\\"'), ('"', '"'), ("'", "'"), ("{", "}")):
        if value.startswith(opening) and value.endswith(closing) and len(value) > len(opening):
            return opening + MASK + closing
    return MASK


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """The secret values in ``env`` (an environment mapping), to be masked wherever text goes.

    The one list every caller uses (the code location's settings and the scripts' ``ScriptEnv``,
    each with the environment it read), so a new secret variable is added here once.
    """
    return list(dict.fromkeys(v for k, v in env.items() if v and _is_secret_var(k, v)))


def is_secret_env_var(name: str, value: str) -> bool:
    """Whether the variable ``name`` holds a secret (the rule of :func:`secrets_from_env`)."""
    return bool(value) and _is_secret_var(name, value)


def _is_secret_var(name: str, value: str) -> bool:
    upper = name.upper()
    if upper in SECRET_ENV_NAMES or upper.startswith(SECRET_ENV_PREFIX):
        return True
    return bool(_SECRET_ENV_NAME.search(upper)) and len(value) >= _MIN_GUESSED_SECRET_LEN


def secret_forms(secret: str) -> list[str]:
    """``secret`` as written, and as drivers, URLs, JSON and reprs may echo it."""
    forms = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        quote(secret),  # '/' kept, as in URL paths
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),  # libpq conninfo quoting
    ]
    return [f for f in dict.fromkeys(forms) if len(f) >= _MIN_SECRET_LEN]


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with known secret values and secret-looking substrings replaced by ``***``."""
    out = "" if text is None else str(text)
    known = {
        form for s in secrets if s and len(s) >= _MIN_SECRET_LEN for form in secret_forms(str(s))
    }
    for secret in sorted(known, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _URL_CREDENTIALS.sub(lambda m: m.group("prefix") + MASK + "@", out)
    out = _ORACLE_CREDENTIALS.sub(lambda m: m.group("prefix") + MASK + "@", out)
    out = _AUTH_HEADER.sub(lambda m: m.group("prefix") + MASK, out)
    out = _KEY_VALUE.sub(lambda m: m["key"] + m["sep"] + _masked(m["value"]), out)
    out = _BEARER.sub(lambda m: m.group("prefix") + MASK, out)
    out = _TOKEN_SHAPES.sub(MASK, out)
    return out
