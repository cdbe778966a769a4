"""SQL identifier rules for the dbt files: dbt-style snake_case names and Databricks quoting.

Plain module (no Dagster, no I/O).
"""

from __future__ import annotations

import re
import unicodedata

# Spark SQL's ANSI reserved keywords plus Databricks' own reserved words: unquoted, these fail to
# parse as column names. (A word list reads better as text than as quoted strings.)
_RESERVED = frozenset(
    """
    all and anti any as authorization both case cast check collate column constraint create cross
    current_date current_time current_timestamp current_user default distinct else end escape
    except false fetch filter for foreign from full grant group having in inner intersect into is
    join lateral leading left minus natural not null offset on only or order outer overlaps
    primary references right select semi session_user some table then time to trailing true union
    unique unknown user using when where with
    """.split()  # noqa: SIM905
)
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def snake_case(name: str) -> str:
    """dbt-style name: ``OrderID`` -> ``order_id``, ``Ünit Price`` -> ``unit_price``."""
    # Accented letters keep their base letter instead of becoming separators.
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        text = "column"
    if text[0].isdigit():
        text = f"_{text}"
    return text


def needs_quoting(name: str) -> bool:
    """True when ``name`` is not a plain lower-case identifier or is a reserved word."""
    return not _PLAIN_IDENTIFIER.fullmatch(name) or name in _RESERVED


def quote_identifier(name: str) -> str:
    """Databricks/Spark SQL quoting: backticks, with embedded backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def sql_identifier(name: str) -> str:
    return quote_identifier(name) if needs_quoting(name) else name
