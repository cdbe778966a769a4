"""The watermark codec: stored text <-> typed cursor value, and the maximum over a batch.

The watermark is kept as text in the control table; it is encoded from and decoded to the cursor
column's own type so no precision is lost on the way (microseconds, offsets, exact decimals).
Pure: pyarrow and the stdlib only.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re

import pyarrow as pa

from databricks_scripts.contract import KIND_DATA_MISMATCH
from databricks_scripts.failures import BadConfig
from databricks_scripts.load.types import (
    delta_type_for,
    is_marked_numeric_text,
    is_pg_numeric,
)


class WatermarkError(BadConfig):
    """The stored watermark does not fit the cursor column's type."""


Watermark = int | float | decimal.Decimal | dt.datetime | dt.date | str


def decode_watermark(text: str, cursor_type: pa.DataType) -> Watermark:
    """Parse the stored watermark text as a value of the cursor column's (Delta) type."""
    t = cursor_type
    try:
        if pa.types.is_timestamp(t):
            value = dt.datetime.fromisoformat(text.strip())
            if t.tz:
                # A watermark written without an offset is read as UTC (documented).
                return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            if value.tzinfo is not None:
                raise WatermarkError(
                    f"watermark {text!r} has a UTC offset but the cursor column is a timestamp "
                    "without time zone"
                )
            return value
        if pa.types.is_date(t):
            return dt.date.fromisoformat(text.strip())
        if pa.types.is_integer(t):
            return int(text)
        if pa.types.is_decimal(t):
            return decimal.Decimal(text)
        if pa.types.is_floating(t):
            return float(text)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return text
    except (ValueError, decimal.InvalidOperation) as exc:
        if isinstance(exc, WatermarkError):
            raise
        raise WatermarkError(f"watermark {text!r} is not a valid {t}: {exc}") from None
    raise WatermarkError(f"a column of type {t} cannot be used as an incremental cursor")


def decode_watermark_for(text: str, source_field: pa.Field) -> Watermark:
    """Parse the watermark for a source cursor column (an unconstrained NUMERIC compares as Decimal)."""
    if is_pg_numeric(source_field) or is_marked_numeric_text(source_field):
        try:
            return decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise WatermarkError(f"watermark {text!r} is not a valid number") from None
    return decode_watermark(text, delta_type_for(source_field))


def encode_watermark(value: Watermark) -> str:
    """Lossless text for a watermark value (ISO 8601 to the microsecond, exact decimals)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        raise WatermarkError("a boolean column cannot be used as an incremental cursor")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def lookback_lower_bound(watermark: Watermark, lookback_seconds: float) -> Watermark:
    """The exclusive lower bound of an incremental read: watermark minus the look-back window.

    The window is a duration, so it applies to timestamp and date cursors only; numeric and text
    cursors read strictly above the watermark.
    """
    if not lookback_seconds:
        return watermark
    if isinstance(watermark, dt.datetime):
        return watermark - dt.timedelta(seconds=lookback_seconds)
    if isinstance(watermark, dt.date):
        return watermark - dt.timedelta(days=int(-(-lookback_seconds // 86400)))
    return watermark


def batch_max(
    column: pa.Array | pa.ChunkedArray, *, numeric_text: bool = False
) -> Watermark | None:
    """Exact maximum of a cursor column (None when all values are NULL or the column is empty).

    ``numeric_text`` marks an unconstrained NUMERIC kept as text: compared as decimals, not strings.
    """
    if len(column) == 0:
        return None
    if numeric_text:
        values = [decimal.Decimal(v) for v in column.to_pylist() if v is not None]
        return max(values) if values else None
    import pyarrow.compute as pc  # imported on first use: a load that reads nothing skips it

    result = pc.max(column)
    return result.as_py() if result.is_valid else None


def cursor_type_problem(field: pa.Field) -> str | None:
    """Why ``field`` cannot be an incremental cursor, or None when its values are ordered.

    Numbers, dates, timestamps and text are ordered; uuid, json/jsonb, binary, boolean, time and
    interval columns are not (or not in a way that finds new rows), so they are refused at the
    probe, before anything is read.
    """
    t = field.type
    if isinstance(t, pa.BaseExtensionType) and t.extension_name in ("arrow.uuid", "arrow.json"):
        return f"its type {t.extension_name} has no order that finds new rows"
    if is_pg_numeric(field):  # ADBC's NUMERIC (an opaque type): compared as a number
        return None
    t = delta_type_for(field)  # the type the cursor is compared as
    ordered = (
        pa.types.is_integer,
        pa.types.is_decimal,
        pa.types.is_floating,
        pa.types.is_date,
        pa.types.is_timestamp,
        pa.types.is_string,
        pa.types.is_large_string,
    )
    if any(check(t) for check in ordered):
        return None
    return f"its type {t} has no order that finds new rows"


# A text cursor is compared character by character (by the source in its WHERE, by the loader for
# the new watermark), so only values of one shape sort as their meaning: '2025-06-01' after
# '2025-05-31', but 'zzz' after every date. The shape keeps punctuation and maps digits to 9 and
# letters to a; every value a load sees must have the shape of the first (or of the stored
# watermark), else the load fails before its commit and the watermark does not move.
def text_shape(value: str) -> str:
    return re.sub(r"[A-Za-z]", "a", re.sub(r"[0-9]", "9", value))


def check_text_cursor(
    column: pa.Array | pa.ChunkedArray, known: tuple[str, str] | None, name: str
) -> tuple[str, str] | None:
    """(shape, an example) of the text cursor values so far, starting from ``known`` (the stored
    watermark's); WatermarkError when the values mix shapes."""
    import pyarrow.compute as pc

    shapes = pc.replace_substring_regex(
        pc.replace_substring_regex(column, "[0-9]", "9"), "[A-Za-z]", "a"
    )
    found: dict[str, str] = dict([known]) if known else {}
    for shape in pc.unique(shapes).to_pylist():
        if shape is not None and shape not in found:
            found[shape] = pc.filter(column, pc.equal(shapes, shape))[0].as_py()
    if len(found) > 1:
        first, second = list(found.values())[:2]
        raise WatermarkError(
            f"text incremental_column {name!r} holds values of different formats ({first!r} "
            f"and {second!r}); text compares character by character, so mixed formats would "
            "move the watermark past rows never loaded. Give every value one format (ISO dates, "
            "zero-padded numbers) or use a date, timestamp or number column",
            kind=KIND_DATA_MISMATCH,
        )
    return next(iter(found.items()), None)


def max_watermark(a: Watermark | None, b: Watermark | None) -> Watermark | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
