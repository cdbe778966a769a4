"""Remove secrets from text before it is logged, stored or sent anywhere.

Shared by the Databricks scripts and the Dagster code location (the scripts run on clusters where
only this directory exists, so it imports nothing outside the standard library).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# key=value / key: value pairs whose value is a secret (connection strings, JDBC URLs, JSON).
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?P<key>["']?\b(?:password|passwd|pwd|secret|client[_-]?secret|token|access[_-]?token|
        refresh[_-]?token|api[_-]?key|apikey|auth[_-]?token|sas[_-]?token|private[_-]?key)\b["']?)
    (?P<sep>\s*[=:]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s;&,}\]]+)
    """
)
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?i)(?P<prefix>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<value>[^@\s/]+)@")
# Authorization headers and well-known token shapes.
_BEARER = re.compile(r"(?i)\b(?P<prefix>bearer\s+|basic\s+)(?P<value>[a-z0-9._~+/=-]{8,})")
_TOKEN_SHAPES = re.compile(
    r"\b(?:dapi[0-9a-f]{16,}(?:-\d+)?|dose[0-9a-f]{16,}|sk-[A-Za-z0-9_-]{16,}|"
    r"gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|"
    r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})\b"
)


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with known secret values and secret-looking substrings replaced by ``***``."""
    out = "" if text is None else str(text)
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _URL_CREDENTIALS.sub(lambda m: m.group("prefix") + MASK + "@", out)
    out = _KEY_VALUE.sub(lambda m: m.group("key") + m.group("sep") + MASK, out)
    out = _BEARER.sub(lambda m: m.group("prefix") + MASK, out)
    out = _TOKEN_SHAPES.sub(MASK, out)
    return out
