"""The Spark engine's MERGE, restricted to the key range of the rows read (issue: upsert cost).

``t.k >= lo AND t.k <= hi`` with literal bounds in the MERGE's ON clause lets Delta skip the target
files whose statistics lie outside the range (Databricks prunes files with literal predicates on
the target before the join). The bounds come from one aggregate over the rows read; the MERGE's
own read of the source comes later, so the source it merges is held to what the aggregate saw:

- keys within the bounds (and NULL keys, as before): a row inserted since, with a key outside
  them, is not merged as "not matched" (it could exist in the target outside the pruned range and
  be inserted a second time); it is read by the next load;
- with a cursor, rows at or below the aggregate's max(cursor) (and NULL cursors): a row changed
  since carries a newer cursor and waits for the next load, whose watermark (the destination's
  max(cursor), read after this commit) is below it.

No ``localCheckpoint``, no cache and no RDD: none exists on Spark Connect (serverless, standard
access mode). A key that is not an integer or date gets no range (their order in Delta statistics
is not the comparison's); the MERGE then runs unrestricted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

_INTEGER_TYPES = ("tinyint", "smallint", "int", "bigint")
_TIMESTAMPS = ("timestamp", "timestamp_ntz")


def key_range_literal(value: Any, spark_type: str) -> str | None:
    """A Spark SQL literal of an integer or date key value (None: not a usable key value)."""
    if value is None:
        return None
    if spark_type in _INTEGER_TYPES and isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if spark_type == "date" and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return f"DATE'{value.isoformat()}'"
    return None


def with_key_range(
    df: Any, key: str, log, cursor: str | None = None
) -> tuple[Any, tuple[str, str] | None]:
    """(the source to merge, the literal bounds of its first key or None)."""
    from pyspark.sql import functions as F

    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    spark_type = types.get(key)
    if spark_type not in (*_INTEGER_TYPES, "date"):
        return df, None
    # A timestamp cursor is compared as microseconds: a collected TIMESTAMP passes through the
    # driver's Python time zone, its microseconds do not.
    capped = None
    if cursor and cursor in types:
        capped = F.col(cursor)
        if types[cursor] in _TIMESTAMPS:
            capped = F.unix_micros(capped.cast("timestamp"))
    aggregates = [F.min(key).alias("lo"), F.max(key).alias("hi")]
    if capped is not None:
        aggregates.append(F.max(capped).alias("cap"))
    row = df.agg(*aggregates).first()
    low, high = key_range_literal(row["lo"], spark_type), key_range_literal(row["hi"], spark_type)
    if low is None or high is None:
        return df, None
    keep = F.col(key).between(F.lit(row["lo"]), F.lit(row["hi"])) | F.col(key).isNull()
    if cursor and capped is not None and row["cap"] is not None:
        keep = keep & ((capped <= F.lit(row["cap"])) | F.col(cursor).isNull())
    log(f"merge restricted to {key} from {low} to {high}")
    return df.filter(keep), (low, high)
