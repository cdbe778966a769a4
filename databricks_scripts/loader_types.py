"""Type mapping and lossless watermark text for the loader (pure: pyarrow and the stdlib only).

Source readers hand over Arrow record batches. Before a batch reaches Delta it is normalised here:
types Delta cannot store are mapped to ones it can, without losing information, and the batch is cast
to the destination schema. The watermark is kept as text in the control table; it is encoded from and
decoded to the cursor column's own type so no precision is lost on the way (microseconds, offsets,
exact decimals).
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass

import pyarrow as pa

# Delta stores decimals up to 38 digits (decimal128).
MAX_DELTA_PRECISION = 38


class IncompatibleSchemaError(ValueError):
    """The source changed a column's type in a way the destination cannot take."""


class WatermarkError(ValueError):
    """The stored watermark does not fit the cursor column's type."""


def _pg_numeric_typmod(field: pa.Field) -> tuple[int, int] | None:
    """(precision, scale) of a PostgreSQL NUMERIC column from ADBC's field metadata, or None."""
    meta = field.metadata or {}
    raw = meta.get(b"POSTGRESQL:typmod")
    if raw is None:
        return None
    typmod = int(raw)
    if typmod < 4:  # -1: unconstrained NUMERIC
        return None
    typmod -= 4  # PostgreSQL stores (precision << 16 | scale) + VARHDRSZ
    # Since PostgreSQL 15 the scale is an 11-bit signed number (NUMERIC(3,-2), NUMERIC(2,5)).
    return (typmod >> 16) & 0xFFFF, ((typmod & 0x7FF) ^ 1024) - 1024


# NUMERIC(p,s) up to 18 digits fits int8 once scaled by 10**s.
MAX_SCALED_INT8_PRECISION = 18


def pg_numeric_as_scaled_int8(field: pa.Field) -> tuple[int, int] | None:
    """(precision, scale) when a PostgreSQL NUMERIC column can be read as ``(col * 10^s)::int8``.

    ADBC delivers NUMERIC as text (its slowest column reader) and text then needs a decimal cast;
    for NUMERIC(p,s) with 0 <= s <= p <= 18 the server can instead send the exact unscaled integer,
    which :func:`decimal_from_unscaled` turns into decimal128(p,s) without touching the digits.
    """
    if not _is_pg_numeric(field):
        return None
    pm = _pg_numeric_typmod(field)
    if pm is None:
        return None
    precision, scale = pm
    if 0 < precision <= MAX_SCALED_INT8_PRECISION and 0 <= scale <= precision:
        return precision, scale
    return None


def decimal_from_unscaled(arr: pa.Array, precision: int, scale: int) -> pa.Array:
    """decimal128(precision, scale) whose unscaled values are the int64 values of ``arr``.

    The int64 -> decimal128(19, 0) cast is exact and vectorised; the result's 128-bit unscaled
    integers are then re-labelled with the column's scale (same buffers, no copy).
    """
    wide = arr.cast(pa.decimal128(19, 0))
    return pa.Array.from_buffers(
        pa.decimal128(precision, scale),
        len(wide),
        wide.buffers(),
        null_count=wide.null_count,
        offset=wide.offset,
    )


def _is_pg_numeric(field: pa.Field) -> bool:
    meta = field.metadata or {}
    return meta.get(b"POSTGRESQL:type") == b"numeric" or (
        isinstance(field.type, pa.ExtensionType)
        and getattr(field.type, "type_name", None) == "numeric"
    )


def delta_type_for(field: pa.Field) -> pa.DataType:
    """The Arrow type a source column is stored as in Delta.

    - NUMERIC(p,s) -> decimal128(p,s). Unconstrained NUMERIC, or precision above 38, stays exact
      text (string): Delta has no arbitrary-precision decimal and rounding would lose data.
    - timestamptz -> timestamp[us, UTC] (Delta ``timestamp``); timestamp -> timestamp[us]
      (Delta ``timestamp_ntz``): the two stay distinct.
    - Unsigned integers widen to the next signed type; TIME, intervals and other types Delta cannot
      hold become their ISO/text form; extension types (json, uuid, opaque) use their storage type.
    """
    t = field.type
    if _is_pg_numeric(field):
        pm = _pg_numeric_typmod(field)
        if pm:
            precision, scale = pm
            if scale < 0:  # whole multiples of 10^-scale: p - scale digits, none after the point
                precision, scale = precision - scale, 0
            elif scale > precision:  # |value| < 10^(p-s): s digits after the point hold it
                precision = scale
            if 0 < precision <= MAX_DELTA_PRECISION:
                return pa.decimal128(precision, scale)
        return pa.string()
    if isinstance(t, pa.ExtensionType):
        return delta_type_for(pa.field(field.name, t.storage_type))
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)
    if pa.types.is_decimal(t):
        if t.precision > MAX_DELTA_PRECISION:
            return pa.string()
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_unsigned_integer(t):
        widened = {8: pa.int16(), 16: pa.int32(), 32: pa.int64()}.get(t.bit_width)
        return widened or pa.decimal128(20, 0)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if (
        pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return pa.binary()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_time(t) or pa.types.is_duration(t) or pa.types.is_interval(t):
        return pa.string()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_null(t):
        return pa.string()
    return t


def delta_schema_for(schema: pa.Schema) -> pa.Schema:
    """The destination schema for a source schema (same names and order, Delta-storable types)."""
    return pa.schema([pa.field(f.name, delta_type_for(f), nullable=True) for f in schema])


def _storage(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(arr.type, pa.ExtensionType):
        return arr.storage
    return arr


def cast_batch(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """Cast a source batch to ``target`` (by name); columns missing from the batch become NULL.

    Casts are ``safe``: a value that does not fit (a NUMERIC too large for its decimal, say)
    raises instead of being truncated.
    """
    columns = []
    names = set(batch.schema.names)
    for field in target:
        if field.name not in names:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        arr = _storage(batch.column(field.name))
        if arr.type.equals(field.type):
            columns.append(arr)
        elif (
            pa.types.is_time(arr.type)
            or pa.types.is_duration(arr.type)
            or pa.types.is_interval(arr.type)
        ):
            columns.append(pa.array([None if v is None else str(v) for v in arr.to_pylist()]))
        else:
            columns.append(arr.cast(field.type, safe=True))
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    if a.equals(b):
        return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(f(a) for f in strings) and any(f(b) for f in strings)


def _widens_to(src: pa.DataType, dst: pa.DataType) -> bool:
    """True when every value of ``src`` is exactly representable in ``dst``."""
    if pa.types.is_signed_integer(src) and pa.types.is_signed_integer(dst):
        return src.bit_width <= dst.bit_width
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return src.bit_width <= dst.bit_width
    if pa.types.is_signed_integer(src) and pa.types.is_decimal(dst):
        digits = {8: 3, 16: 5, 32: 10, 64: 19}[src.bit_width]
        return dst.precision - dst.scale >= digits
    if pa.types.is_decimal(src) and pa.types.is_decimal(dst):
        return dst.scale >= src.scale and (dst.precision - dst.scale) >= (src.precision - src.scale)
    return False


@dataclass(frozen=True)
class SchemaPlan:
    """How this load's batches are written: the schema they are cast to, and the columns added."""

    write_schema: pa.Schema
    added_columns: tuple[str, ...]


def plan_schema(source: pa.Schema, destination: pa.Schema | None) -> SchemaPlan:
    """Reconcile the (Delta-mapped) source schema with an existing destination schema.

    New source columns are appended to the destination (schema evolution). A column present on both
    sides keeps the destination's type when the source type widens into it exactly; any other type
    change raises :class:`IncompatibleSchemaError` naming the column. Destination columns the source
    no longer has are kept and filled with NULL for new rows.
    """
    mapped = delta_schema_for(source)
    if destination is None:
        return SchemaPlan(mapped, ())
    dest_by_name = {f.name: f for f in destination}
    problems = []
    for f in mapped:
        d = dest_by_name.get(f.name)
        if d is None or _same_kind(f.type, d.type) or _widens_to(f.type, d.type):
            continue
        problems.append(
            f"column {f.name!r} is {d.type} in the destination but {f.type} in the source"
        )
    if problems:
        raise IncompatibleSchemaError(
            "incompatible type change: "
            + "; ".join(problems)
            + " (a full reload with force_full_reload rebuilds the table with the new types)"
        )
    added = tuple(f.name for f in mapped if f.name not in dest_by_name)
    fields = [pa.field(d.name, _normalise_dest_type(d.type)) for d in destination]
    fields += [f for f in mapped if f.name in added]
    return SchemaPlan(pa.schema(fields), added)


def _normalise_dest_type(t: pa.DataType) -> pa.DataType:
    # Delta reads strings back as large/view types depending on the reader; write plain ones.
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return t


def arrow_schema_of(delta_schema: object) -> pa.Schema:
    """A deltalake schema (``DeltaTable.schema()``) as a pyarrow schema."""
    return pa.schema(delta_schema.to_arrow())  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Watermarks: text <-> typed value, and the maximum over a batch.
# ---------------------------------------------------------------------------------------------

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
    if _is_pg_numeric(source_field) or _is_marked_numeric_text(source_field):
        try:
            return decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise WatermarkError(f"watermark {text!r} is not a valid number") from None
    return decode_watermark(text, delta_type_for(source_field))


def is_numeric_text(source_field: pa.Field) -> bool:
    """True for a NUMERIC column stored as exact text (unconstrained or precision above 38)."""
    if _is_marked_numeric_text(source_field):
        return True
    return _is_pg_numeric(source_field) and pa.types.is_string(delta_type_for(source_field))


def _is_marked_numeric_text(field: pa.Field) -> bool:
    # Set by the SQL Server / Oracle mappings below (an unconstrained Oracle NUMBER, say).
    return (field.metadata or {}).get(b"DATALOADER:numeric") == b"text"


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


def max_watermark(a: Watermark | None, b: Watermark | None) -> Watermark | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------
# SQL Server and Oracle: exact Arrow types from the drivers' own metadata, and exact conversion
# of the DB-API rows (Python values) to those types.
# ---------------------------------------------------------------------------------------------

# Field metadata marking a column stored as exact decimal text (unconstrained Oracle NUMBER):
# as a cursor it compares as a number, like an unconstrained PostgreSQL NUMERIC.
NUMERIC_TEXT_METADATA = {b"DATALOADER:numeric": b"text"}

# Marks an Oracle DATE column (a timestamp to the second): its cursor is compared with a DATE
# bound, so the column is not converted to TIMESTAMP (which would keep Oracle off its index).
ORACLE_DATE_METADATA = {b"DATALOADER:oracle": b"DATE"}

# Oracle reports scale -127 for NUMBER without precision/scale and for FLOAT(b) (decimal
# floating point with up to 38 digits and any exponent): neither fits a fixed decimal128.
_ORACLE_FLOATING_SCALE = -127


class UnsupportedColumnTypeError(ValueError):
    """A source column type the loader cannot store without losing information."""


def _exact_decimal_type(name: str, precision: int, scale: int) -> pa.Field:
    """decimal128 for a fixed (precision, scale); exact numeric text when it cannot hold it."""
    if scale < 0:  # whole multiples of 10^-scale: p - scale digits, none after the point
        precision, scale = precision - scale, 0
    elif scale > precision:  # |value| < 10^(p-s): s digits after the point hold it
        precision = scale
    if 0 < precision <= MAX_DELTA_PRECISION:
        return pa.field(name, pa.decimal128(precision, scale))
    return pa.field(name, pa.string(), metadata=NUMERIC_TEXT_METADATA)


def oracle_field(description: tuple) -> pa.Field:
    """Arrow field of one python-oracledb ``cursor.description`` entry.

    ``description`` is ``(name, type_code, display_size, internal_size, precision, scale,
    null_ok)``; ``type_code`` is an oracledb ``DbType`` (its ``name`` is used, so this module
    does not import the driver). NUMBER(p<=18, 0) -> int64, NUMBER(p,s) -> decimal128(p,s),
    NUMBER/FLOAT without a fixed scale -> exact text; DATE (it has a time of day) and TIMESTAMP
    -> timestamp without zone; TIMESTAMP WITH (LOCAL) TIME ZONE -> timestamp UTC.
    """
    name, type_code, _, _, precision, scale = description[:6]
    kind = getattr(type_code, "name", str(type_code))
    if kind == "DB_TYPE_NUMBER":
        if scale == _ORACLE_FLOATING_SCALE or not precision:
            return pa.field(name, pa.string(), metadata=NUMERIC_TEXT_METADATA)
        if scale == 0 and precision <= MAX_SCALED_INT8_PRECISION:
            return pa.field(name, pa.int64())
        return _exact_decimal_type(name, precision, scale or 0)
    simple = {
        "DB_TYPE_BINARY_INTEGER": pa.int64(),
        "DB_TYPE_BOOLEAN": pa.bool_(),
        "DB_TYPE_BINARY_FLOAT": pa.float32(),
        "DB_TYPE_BINARY_DOUBLE": pa.float64(),
        "DB_TYPE_TIMESTAMP": pa.timestamp("us"),
        "DB_TYPE_TIMESTAMP_TZ": pa.timestamp("us", tz="UTC"),
        "DB_TYPE_TIMESTAMP_LTZ": pa.timestamp("us", tz="UTC"),
        "DB_TYPE_RAW": pa.binary(),
        "DB_TYPE_LONG_RAW": pa.binary(),
        "DB_TYPE_BLOB": pa.binary(),
    }
    if kind in simple:
        return pa.field(name, simple[kind])
    if kind == "DB_TYPE_DATE":  # has a time of day (to the second): a timestamp, marked DATE
        return pa.field(name, pa.timestamp("us"), metadata=ORACLE_DATE_METADATA)
    text_kinds = {
        "DB_TYPE_VARCHAR",
        "DB_TYPE_NVARCHAR",
        "DB_TYPE_CHAR",
        "DB_TYPE_NCHAR",
        "DB_TYPE_CLOB",
        "DB_TYPE_NCLOB",
        "DB_TYPE_LONG",
        "DB_TYPE_LONG_NVARCHAR",
        "DB_TYPE_ROWID",
        "DB_TYPE_UROWID",
        "DB_TYPE_JSON",
        "DB_TYPE_XMLTYPE",
        "DB_TYPE_INTERVAL_DS",
        "DB_TYPE_INTERVAL_YM",
    }
    if kind in text_kinds:
        return pa.field(name, pa.string())
    raise UnsupportedColumnTypeError(f"column {name!r}: Oracle type {kind} is not supported")


def oracle_utc_columns(schema: pa.Schema) -> list[str]:
    """Columns read as ``SYS_EXTRACT_UTC(col)``: the driver drops the zone of a TZ value."""
    return [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.tz]


_SQLSERVER_SIMPLE = {
    "tinyint": pa.int16(),  # 0..255: int16 holds it (Delta has no unsigned types)
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "bit": pa.bool_(),
    "money": pa.decimal128(19, 4),
    "smallmoney": pa.decimal128(10, 4),
    "real": pa.float32(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "datetime2": pa.timestamp("us"),
    "smalldatetime": pa.timestamp("us"),
    "datetimeoffset": pa.timestamp("us", tz="UTC"),
    "time": pa.string(),
}
_SQLSERVER_TEXT = {
    "char",
    "varchar",
    "nchar",
    "nvarchar",
    "text",
    "ntext",
    "xml",
    "uniqueidentifier",
    "sysname",
}
_SQLSERVER_BINARY = {"binary", "varbinary", "image", "timestamp", "rowversion"}


def sqlserver_field(row: tuple) -> pa.Field:
    """Arrow field of one ``sys.dm_exec_describe_first_result_set`` row.

    ``row`` is ``(name, system_type_name, precision, scale, is_nullable)``, e.g.
    ``("amount", "decimal(12,2)", 12, 2, True)``. datetime/datetime2/smalldatetime -> timestamp
    without zone (microseconds: pymssql truncates datetime2(7)'s 100 ns digit), datetimeoffset ->
    timestamp UTC.
    """
    name, system_type_name, precision, scale = row[:4]
    base = system_type_name.split("(", 1)[0].strip().lower()
    if base in ("decimal", "numeric"):
        return _exact_decimal_type(name, int(precision), int(scale))
    if base == "float":
        return pa.field(name, pa.float32() if precision and precision <= 24 else pa.float64())
    if base in _SQLSERVER_SIMPLE:
        return pa.field(name, _SQLSERVER_SIMPLE[base])
    if base in _SQLSERVER_TEXT:
        return pa.field(name, pa.string())
    if base in _SQLSERVER_BINARY:
        return pa.field(name, pa.binary())
    raise UnsupportedColumnTypeError(
        f"column {name!r}: SQL Server type {system_type_name} is not supported"
    )


def _to_text(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, decimal.Decimal):
        if not v.is_finite():
            raise ValueError(f"{v} is not a number")
        return format(v, "f")  # exact, never exponent form
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8")
    if isinstance(v, dict | list):
        import json

        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(v, bool | int | float):
        raise TypeError(f"{type(v).__name__} {v!r} is not text")
    return str(v)  # uuid.UUID, datetime.time, timedelta (intervals)


def _to_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | decimal.Decimal):
        raise TypeError(f"{type(v).__name__} {v!r} is not an integer")
    if isinstance(v, decimal.Decimal) and (not v.is_finite() or v != v.to_integral_value()):
        raise ValueError(f"{v} is not an integer")
    return int(v)


def _to_decimal(v: object) -> decimal.Decimal:
    if isinstance(v, bool) or not isinstance(v, int | decimal.Decimal):
        raise TypeError(f"{type(v).__name__} {v!r} is not an exact number")
    d = decimal.Decimal(v)
    if not d.is_finite():
        raise ValueError(f"{d} is not a number")
    return d


def _to_float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | decimal.Decimal):
        raise TypeError(f"{type(v).__name__} {v!r} is not a number")
    return float(v)


def _to_timestamp(v: object, tz: bool) -> dt.datetime:
    if not isinstance(v, dt.datetime):
        raise TypeError(f"{type(v).__name__} {v!r} is not a timestamp")
    if tz:
        # Readers hand zone-less TZ values over already in UTC (Oracle: SYS_EXTRACT_UTC).
        return v.astimezone(dt.UTC) if v.tzinfo else v.replace(tzinfo=dt.UTC)
    if v.tzinfo is not None:
        raise ValueError(f"{v} has a UTC offset but the column is a timestamp without time zone")
    return v


def _to_date(v: object) -> dt.date:
    if isinstance(v, dt.datetime):
        if v.time() != dt.time(0) or v.tzinfo is not None:
            raise ValueError(f"{v} is not a date")
        return v.date()
    if not isinstance(v, dt.date):
        raise TypeError(f"{type(v).__name__} {v!r} is not a date")
    return v


def _to_bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise TypeError(f"{type(v).__name__} {v!r} is not a boolean")


def _to_binary(v: object) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    raise TypeError(f"{type(v).__name__} {v!r} is not binary")


def _converter(t: pa.DataType):
    if pa.types.is_string(t):
        return _to_text
    if pa.types.is_integer(t):
        return _to_int
    if pa.types.is_decimal(t):
        return _to_decimal
    if pa.types.is_floating(t):
        return _to_float
    if pa.types.is_timestamp(t):
        tz = bool(t.tz)
        return lambda v: _to_timestamp(v, tz)
    if pa.types.is_date(t):
        return _to_date
    if pa.types.is_boolean(t):
        return _to_bool
    if pa.types.is_binary(t):
        return _to_binary
    raise TypeError(f"no conversion to {t}")


def column_from_values(values: list, field: pa.Field) -> pa.Array:
    """An exact Arrow array of ``field``'s type from DB-API values; fails naming the column.

    Nothing is rounded or truncated here: a Decimal with more digits than the column's scale, an
    integer out of range or a value of the wrong kind raises instead.
    """
    convert = _converter(field.type)
    try:
        return pa.array(
            [None if v is None else convert(v) for v in values], type=field.type, safe=True
        )
    except (pa.ArrowException, OverflowError, TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(
            f"column {field.name!r}: a source value does not fit {field.type}: {exc}"
        ) from None


def rows_to_exact_batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of ``schema`` from DB-API rows (tuples in the schema's column order)."""
    columns = [column_from_values([r[i] for r in rows], f) for i, f in enumerate(schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
