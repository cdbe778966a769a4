"""Arrow -> Delta type mapping for the loader (pure: pyarrow and the stdlib only).

Source readers hand over Arrow record batches. Before a batch reaches Delta it is normalised here:
types Delta cannot store are mapped to ones it can, without losing information, and the batch is cast
to the destination schema; an existing destination schema is reconciled with the source's. The
SQL Server and Oracle column types are mapped in ``sources.types_mssql_oracle``; the watermark text
codec is in ``watermark``.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from databricks_scripts.failures import SchemaConflict

# Delta stores decimals up to 38 digits (decimal128).
MAX_DELTA_PRECISION = 38


class IncompatibleSchemaError(SchemaConflict):
    """The source changed a column's type in a way the destination cannot take."""


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

# Field metadata marking a column stored as exact decimal text (an unconstrained Oracle NUMBER,
# say): as a cursor it compares as a number, like an unconstrained PostgreSQL NUMERIC.
NUMERIC_TEXT_METADATA = {b"DATALOADER:numeric": b"text"}


def pg_numeric_as_scaled_int8(field: pa.Field) -> tuple[int, int] | None:
    """(precision, scale) when a PostgreSQL NUMERIC column can be read as ``(col * 10^s)::int8``.

    ADBC delivers NUMERIC as text (its slowest column reader) and text then needs a decimal cast;
    for NUMERIC(p,s) with 0 <= s <= p <= 18 the server can instead send the exact unscaled integer,
    which :func:`decimal_from_unscaled` turns into decimal128(p,s) without touching the digits.
    """
    if not is_pg_numeric(field):
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


def is_pg_numeric(field: pa.Field) -> bool:
    """True for a PostgreSQL NUMERIC column (ADBC's field metadata or extension type)."""
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
    if is_pg_numeric(field):
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
    if _is_uuid(t):
        return pa.string()  # the canonical 8-4-4-4-12 text, as the source prints it
    if isinstance(t, pa.BaseExtensionType):  # json, opaque, user extension types
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


def _is_uuid(t: pa.DataType) -> bool:
    """Arrow's canonical ``arrow.uuid`` (ADBC's PostgreSQL ``uuid``): a built-in extension type."""
    return isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.uuid"


def uuid_text(arr: pa.Array) -> pa.Array:
    """``arrow.uuid`` values (16 bytes each) as their canonical text, without a Python loop."""
    storage = arr.storage if isinstance(arr.type, pa.BaseExtensionType) else arr
    n = len(storage)
    start = storage.offset * 16
    hexed = bytes(storage.buffers()[1])[start : start + n * 16].hex().encode("ascii")
    offsets = pa.py_buffer(array("i", range(0, 32 * n + 1, 32)).tobytes())
    digits = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(hexed)])
    text = pc.binary_join_element_wise(
        *[pc.utf8_slice_codeunits(digits, a, b) for a, b in _UUID_GROUPS], "-"
    )
    return pc.if_else(storage.is_valid(), text, pa.scalar(None, pa.string()))


_UUID_GROUPS = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))


def _storage(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    if _is_uuid(arr.type):
        return uuid_text(arr)
    if isinstance(arr.type, pa.BaseExtensionType):
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
    """How this load's batches are written: the schema they are cast to, the columns added, and
    the destination's columns the source no longer has (kept, NULL for new rows)."""

    write_schema: pa.Schema
    added_columns: tuple[str, ...]
    dropped_columns: tuple[str, ...] = ()


class SchemaContractError(SchemaConflict):
    """``schema_change = 'freeze'`` and the source's columns differ from the destination's."""


# The loader's own columns of tables that keep history (contract.START_AT, END_AT, DELETED_AT):
# never source columns, so never "dropped".
_LOADER_COLUMNS = frozenset({"__START_AT", "__END_AT", "__DELETED_AT"})


def _frozen_changes(mapped: pa.Schema, destination: pa.Schema) -> list[str]:
    """Every added, dropped or retyped column, in words (``schema_change = 'freeze'``)."""
    dest_by_name = {f.name: f for f in destination}
    changes = [f"added column {f.name!r} ({f.type})" for f in mapped if f.name not in dest_by_name]
    changes += [
        f"dropped column {d.name!r}"
        for d in destination
        if d.name not in mapped.names and d.name not in _LOADER_COLUMNS
    ]
    for f in mapped:
        d = dest_by_name.get(f.name)
        if d is not None and not _same_kind(f.type, _normalise_dest_type(d.type)):
            changes.append(f"retyped column {f.name!r} ({d.type} -> {f.type})")
    return changes


def plan_schema(
    source: pa.Schema, destination: pa.Schema | None, schema_change: str = "evolve"
) -> SchemaPlan:
    """Reconcile the (Delta-mapped) source schema with an existing destination schema.

    ``schema_change`` (sql/017): ``evolve`` appends new source columns to the destination (schema
    evolution); ``discard_new`` leaves them out; ``freeze`` raises :class:`SchemaContractError`
    naming every added, dropped or retyped column. A column present on both sides keeps the
    destination's type when the source type widens into it exactly; any other type change raises
    :class:`IncompatibleSchemaError` naming the column. Destination columns the source no longer
    has are kept and filled with NULL for new rows (``dropped_columns``).
    """
    mapped = delta_schema_for(source)
    if destination is None:
        return SchemaPlan(mapped, ())
    if schema_change == "freeze":
        changes = _frozen_changes(mapped, destination)
        if changes:
            raise SchemaContractError(
                "schema_change is 'freeze' and the source table changed: "
                + "; ".join(changes)
                + ". Nothing was written. To take the change set schema_change = 'evolve' (or "
                "force_full_reload to rebuild the table with the new columns)"
            )
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
    if schema_change == "discard_new":
        added = ()
    dropped = tuple(
        d.name for d in destination if d.name not in mapped.names and d.name not in _LOADER_COLUMNS
    )
    fields = [pa.field(d.name, _normalise_dest_type(d.type)) for d in destination]
    fields += [f for f in mapped if f.name in added]
    return SchemaPlan(pa.schema(fields), added, dropped)


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


def is_marked_numeric_text(field: pa.Field) -> bool:
    """True for a column marked with :data:`NUMERIC_TEXT_METADATA` (SQL Server / Oracle mapping)."""
    return (field.metadata or {}).get(b"DATALOADER:numeric") == b"text"


def is_numeric_text(source_field: pa.Field) -> bool:
    """True for a NUMERIC column stored as exact text (unconstrained or precision above 38)."""
    if is_marked_numeric_text(source_field):
        return True
    return is_pg_numeric(source_field) and pa.types.is_string(delta_type_for(source_field))
