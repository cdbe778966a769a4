"""SQL Server and Oracle column types: exact Arrow types from the drivers' own metadata, and exact
conversion of the DB-API rows (Python values) to those types (pure: pyarrow and the stdlib only).
"""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa

from databricks_scripts.failures import SchemaConflict
from databricks_scripts.load.types import (
    MAX_DELTA_PRECISION,
    MAX_SCALED_INT8_PRECISION,
    NUMERIC_TEXT_METADATA,
)

# Marks an Oracle DATE column (a timestamp to the second): its cursor is compared with a DATE
# bound, so the column is not converted to TIMESTAMP (which would keep Oracle off its index).
ORACLE_DATE_METADATA = {b"DATALOADER:oracle": b"DATE"}

# Oracle reports scale -127 for NUMBER without precision/scale and for FLOAT(b) (decimal
# floating point with up to 38 digits and any exponent): neither fits a fixed decimal128.
_ORACLE_FLOATING_SCALE = -127


class UnsupportedColumnTypeError(SchemaConflict):
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
