"""Column control (sql/017): columns left at the source, columns loaded as a keyed hash.

- ``columns_exclude``: the readers' SELECT names only the other columns (their schema probe reads
  zero rows), so an excluded column's values never leave the source.
- ``columns_hash``: each value is replaced by ``HMAC-SHA-256(key, value)`` as 64 lower-case hex
  characters, NULL staying NULL. The key is the secret the row's source_connection names
  (``hash_secret_scope``/``hash_secret_key``). Equal values give equal hashes, in every table
  hashed with the same key and on every load, so hashed columns still join; without the key no
  value can be computed back or tested. The value hashed is its canonical text (``canonical_text``,
  the same in both engines; docs/loader.md): text as it is, binary as its bytes, booleans
  ``true``/``false``, integers as digits, decimals plain with exactly the column's scale
  (``-1.50``), dates ``2024-01-31``, timestamps ``2024-01-31T10:00:00.000001`` (a zone-aware one
  as its UTC time, so a source timestamp hashes alike whether an engine reads it with or without
  zone); any other type as Arrow prints it.
- The lists (and which key hashed) are written into every commit; a load whose row names other
  lists (or whose connection names another key) rebuilds the table (``changed_column_control``).

Pure apart from pyarrow and the stdlib; the Spark expression is built lazily
(``spark_hash_column``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from databricks_scripts.failures import BadConfig
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.types import cast_batch, delta_schema_for

HASH_TYPE = pa.string()
# Which canonical_text a table was hashed with (recorded per commit): 2 = one text per type in both
# engines; a table hashed before (the engine's own print of a non-text value) is rebuilt once.
CANONICAL_TEXT_VERSION = 2
# Delta commit metadata (engines.arrow.commits) / Spark userMetadata key of the lists a commit used.
KEY_COLUMN_CONTROL = "dataloader.column_control"


class ColumnControlError(BadConfig):
    """A listed column the source does not have (a typo would otherwise let it through)."""


def match_columns(listed: Sequence[str], names: Sequence[str], what: str) -> list[str]:
    """The source's own names for ``listed`` (case-insensitive); a name it lacks is refused."""
    by_lower = {n.lower(): n for n in names}
    missing = [c for c in listed if c.lower() not in by_lower]
    if missing:
        raise ColumnControlError(
            f"{what} names {', '.join(repr(c) for c in missing)}, which the source table does "
            f"not have (its columns: {', '.join(names)}); fix or remove the name"
        )
    return [by_lower[c.lower()] for c in listed]


def kept_schema(schema: pa.Schema, exclude: Sequence[str]) -> pa.Schema:
    """``schema`` without the excluded columns (each must exist in it)."""
    if not exclude:
        return schema
    gone = set(match_columns(exclude, schema.names, "columns_exclude"))
    return pa.schema([f for f in schema if f.name not in gone])


def hashed_names(schema: pa.Schema, hashed: Sequence[str]) -> list[str]:
    return match_columns(hashed, schema.names, "columns_hash") if hashed else []


def key_id(key: bytes) -> str:
    """Which key hashed (so a new key rebuilds the table), revealing nothing about it."""
    return hmac.new(key, b"dataloader column control key id", hashlib.sha256).hexdigest()[:16]


_EPOCH = dt.datetime(1970, 1, 1)


def _timestamp_texts(arr: pa.Array) -> list[str | None]:
    """ISO text to the microsecond (UTC time when zone-aware), from the values' microseconds
    since the epoch."""
    micros = arr.cast(pa.timestamp("us", tz=arr.type.tz)).cast(pa.int64()).to_pylist()
    out: list[str | None] = []
    for v in micros:
        if v is None:
            out.append(None)
            continue
        out.append((_EPOCH + dt.timedelta(microseconds=v)).isoformat(timespec="microseconds"))
    return out


def canonical_text(arr: pa.Array) -> list[str | bytes | None]:
    """Each value's canonical text (bytes for binary), NULL as None: what both engines hash.

    Integers as digits; decimals plain (never an exponent) with exactly the column's scale;
    booleans ``true``/``false``; dates ``YYYY-MM-DD``; timestamps ``YYYY-MM-DDTHH:MM:SS.ffffff``
    (zone-aware: the UTC time); text as it is; other types as Arrow prints them.
    """
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return arr.to_pylist()
    if pa.types.is_decimal(t):
        return [None if v is None else format(v, "f") for v in arr.to_pylist()]
    if pa.types.is_timestamp(t):
        return list(_timestamp_texts(arr))
    if pa.types.is_date(t):
        return [None if v is None else v.isoformat() for v in arr.to_pylist()]
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        arr = arr.cast(pa.string())
    return arr.to_pylist()


def _value_bytes(arr: pa.Array) -> list[bytes | None]:
    return [
        v if v is None or isinstance(v, bytes) else v.encode("utf-8") for v in canonical_text(arr)
    ]


def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC's inner and outer SHA-256 states for ``key`` (RFC 2104), to be copied per value."""
    block = 64
    k = hashlib.sha256(key).digest() if len(key) > block else key
    k = k.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    return inner, outer


def hmac_array(arr: pa.Array, key: bytes) -> pa.Array:
    """HMAC-SHA-256 hex of every value of ``arr`` (NULL stays NULL); the same digest as
    ``hmac.new(key, value, sha256)``, from pre-keyed states (about twice as fast per value)."""
    inner, outer = _pads(key)
    out: list[str | None] = []
    for value in _value_bytes(arr):
        if value is None:
            out.append(None)
            continue
        i = inner.copy()
        i.update(value)
        o = outer.copy()
        o.update(i.digest())
        out.append(o.hexdigest())
    return pa.array(out, type=HASH_TYPE)


def hash_batch(batch: pa.RecordBatch, hashed: Iterable[str], key: bytes) -> pa.RecordBatch:
    names = [n for n in hashed if n in batch.schema.names]
    if not names:
        return batch
    # Delta-mapped first (uuid as its text, NUMERIC as its decimal): the value a person sees.
    mapped = cast_batch(
        pa.RecordBatch.from_arrays([batch.column(n) for n in names], names=names),
        delta_schema_for(pa.schema([batch.schema.field(n) for n in names])),
    )
    arrays, fields = [], []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if field.name in names:
            column = hmac_array(mapped.column(field.name), key)
            field = pa.field(field.name, HASH_TYPE)
        arrays.append(column)
        fields.append(field)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


class HashingSource:
    """A source reader whose rows (and schema) carry the hashed columns as their HMAC."""

    def __init__(self, reader: Any, key: bytes):
        self._reader = reader
        self._key = key
        self._names = hashed_names(reader.schema(), reader.spec.columns_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def _schema(self, schema: pa.Schema) -> pa.Schema:
        return pa.schema(
            [pa.field(f.name, HASH_TYPE) if f.name in self._names else f for f in schema]
        )

    def schema(self) -> pa.Schema:
        return self._schema(self._reader.schema())

    def _rows(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield hash_batch(batch, self._names, self._key)

    def batches(self, lower_bound: object | None, **kw: Any):
        schema, batches = self._reader.batches(lower_bound, **kw)
        return self._schema(schema), self._rows(batches)

    def ordered_batches(self, lower_bound: object | None, **kw: Any):
        schema, batches = self._reader.ordered_batches(lower_bound, **kw)
        return self._schema(schema), self._rows(batches)

    def key_range_batches(self, key: str, start: int, stop: int) -> Iterator[pa.RecordBatch]:
        return self._rows(self._reader.key_range_batches(key, start, stop))

    def close(self) -> None:
        self._reader.close()


def with_column_control(reader: Any, key: bytes | None) -> Any:
    """The reader, hashing the row's ``columns_hash`` when it names any (exclusion is the
    reader's own SELECT)."""
    if not reader.spec.columns_hash:
        return reader
    if key is None:
        raise ColumnControlError("columns_hash is set but no hash key was resolved")
    return HashingSource(reader, key)


# ---- which lists built the destination ----------------------------------------------------------


def column_control_text(spec: LoadSpec) -> str:
    """The lists (lower-case, sorted) and the key id, as the commit metadata records them."""
    hashed = getattr(spec, "columns_hash", ())
    return json.dumps(
        {
            "exclude": sorted(c.lower() for c in getattr(spec, "columns_exclude", ())),
            "hash": sorted(c.lower() for c in hashed),
            "key": getattr(spec, "hash_key_id", None) if hashed else None,
            "text": CANONICAL_TEXT_VERSION if hashed else None,
        },
        sort_keys=True,
    )


_NONE: dict[str, Any] = {"exclude": [], "hash": [], "key": None, "text": None}


def recorded_column_control(history: Iterable[dict]) -> dict:
    """The lists of the newest loader commit (a table loaded before sql/017: none)."""
    for commit in history:
        text = commit.get(KEY_COLUMN_CONTROL)
        if text:
            try:
                return {**_NONE, **json.loads(text)}
            except ValueError:
                return dict(_NONE)
        if commit.get("dataloader.metadata_id") or commit.get("dataloader.strategy"):
            return dict(_NONE)
    return dict(_NONE)


def changed_column_control(spec: LoadSpec, recorded: dict) -> str | None:
    """What changed since the destination was built (names only), or None."""
    now = json.loads(column_control_text(spec))
    changes = []
    for name, field in (("columns_exclude", "exclude"), ("columns_hash", "hash")):
        if sorted(recorded.get(field) or []) != now[field]:
            was = ", ".join(recorded.get(field) or []) or "none"
            changes.append(f"{name} was [{was}], now [{', '.join(now[field]) or 'none'}]")
    if not changes and now["hash"] and recorded.get("key") != now["key"]:
        changes.append("the connection's hash key changed")
    if not changes and now["hash"] and recorded.get("text") != now["text"]:
        changes.append("the text hashed for non-text values changed (canonical_text)")
    return "; ".join(changes) or None


# ---- the Arrow engine's rebuild and schema-contract notes ---------------------------------------


def schema_notes(spec, plan: Any, source_schema, dest_schema, notes, log) -> None:
    """Say what the schema contract did with added and dropped source columns."""
    if plan.added_columns:
        log(f"schema evolution: adding column(s) {', '.join(plan.added_columns)}")
    if spec.schema_change == "discard_new" and dest_schema is not None:
        new = [n for n in source_schema.names if n not in dest_schema.names]
        if new:
            notes.append(
                f"new source column(s) {', '.join(new)} not loaded (schema_change discard_new)"
            )
    if plan.dropped_columns:
        notes.append(
            f"the source no longer has column(s) {', '.join(plan.dropped_columns)}: kept in "
            "the destination, NULL for new rows"
        )


# ---- comments: the source's table and column comments (PostgreSQL COMMENT ON, MySQL COMMENT) ----


def source_comments(source: Any, log) -> tuple[str | None, dict[str, str]]:
    """The source's comments; a catalog that cannot be read costs the comments, not the load."""
    try:
        return source.comments()
    except Exception as exc:  # noqa: BLE001 - comments are documentation, never data
        log(f"source comments not read: {type(exc).__name__}: {exc}")
        return None, {}


def commented_plan(plan: Any, columns: dict[str, str]) -> Any:
    """``plan`` whose write schema carries the column comments (Delta column ``comment``)."""
    if not columns:
        return plan
    fields = [
        f.with_metadata({**(f.metadata or {}), b"comment": columns[f.name].encode()})
        if f.name in columns
        else f
        for f in plan.write_schema
    ]
    return dataclasses.replace(plan, write_schema=pa.schema(fields))


def spark_canonical_text(column: str, spark_type: str = "string") -> Any:
    """The Spark expression of :func:`canonical_text` for one column of ``spark_type`` (Spark's
    simpleString); the load's session time zone is UTC (``run_spark_load`` sets it), so a
    ``timestamp`` prints as its UTC time, as a ``timestamp_ntz`` prints its own. Decimals are built from their integral and fractional
    parts, never from Spark's own decimal text (which may use an exponent)."""
    from pyspark.sql import functions as F

    value = F.col(column)
    if spark_type.startswith("decimal"):
        scale = int(spark_type.rstrip(")").split(",")[1]) if "," in spark_type else 0
        magnitude = F.abs(value)
        whole = F.floor(magnitude).cast("decimal(38,0)").cast("string")
        sign = F.when(value < 0, F.lit("-")).otherwise(F.lit(""))
        if scale == 0:
            return F.concat(sign, whole)
        # (fraction + 1) is in [1, 2): printed plain, "1." then exactly ``scale`` digits (the
        # remainder by a decimal(1,0) one keeps the column's scale, up to 36 digits)
        one = F.lit(decimal.Decimal(1))
        fraction = F.substring((magnitude % one + one).cast("string"), 3, scale)
        return F.concat(sign, whole, F.lit("."), F.rpad(fraction, scale, "0"))
    if spark_type == "date":
        return F.date_format(value, "yyyy-MM-dd")
    if spark_type in ("timestamp", "timestamp_ntz"):
        return F.date_format(value, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    return value.cast("string")


def spark_hash_column(column: Any, key: bytes, spark_type: str = "string") -> Any:
    """The Spark expression of :func:`hmac_array` for one column (binary as its bytes, any other
    type as its canonical text): HMAC built from sha2 and the key's pads, NULL stays NULL."""
    from pyspark.sql import functions as F

    block = 64
    k = hashlib.sha256(key).digest() if len(key) > block else key
    k = k.ljust(block, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in k).hex(), bytes(b ^ 0x5C for b in k).hex()
    if spark_type == "binary":
        value = F.col(column)
    else:
        value = spark_canonical_text(column, spark_type).cast("binary")
    inner_hash = F.unhex(F.sha2(F.concat(F.unhex(F.lit(inner)), value), 256))
    return F.sha2(F.concat(F.unhex(F.lit(outer)), inner_hash), 256)


# Column mapping (``delta.columnMapping.mode = 'name'``): the rule both engines apply to the
# source's column names. The Spark engine maps a table that needs it; the Arrow engine reads mapped
# tables but never maps one (docs/loader.md).
COLUMN_MAPPING_MODE = "delta.columnMapping.mode"
NEEDS_COLUMN_MAPPING = frozenset(" ,;{}()\n\t=")


def needs_column_mapping(names: Any) -> bool:
    """A column name Delta refuses in a table without column mapping."""
    return any(NEEDS_COLUMN_MAPPING & set(name) for name in names)
