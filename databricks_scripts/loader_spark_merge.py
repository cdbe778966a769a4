"""The Spark engine's MERGE, restricted to the key range of the rows read (issue: upsert cost).

``t.k >= lo AND t.k <= hi`` with literal bounds in the MERGE's ON clause lets Delta skip the target
files whose statistics lie outside the range (Databricks prunes files with literal predicates on
the target before the join). The bounds come from the rows read, so the source is first
checkpointed (``localCheckpoint``): the MERGE then reads exactly the rows the bounds were taken
from. Were the source read twice (JDBC), a row changed in between could carry a key outside the
bounds, fail to match and be inserted a second time. Where a checkpoint is not available (Spark
Connect before Spark 4) or the key is not an integer or date, the MERGE runs unrestricted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

_INTEGER_TYPES = ("tinyint", "smallint", "int", "bigint")


def key_range_literal(value: Any, spark_type: str) -> str | None:
    """A Spark SQL literal of an integer or date key value (None: not a usable key value)."""
    if value is None:
        return None
    if spark_type in _INTEGER_TYPES and isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if spark_type == "date" and isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return f"DATE'{value.isoformat()}'"
    return None


def with_key_range(df: Any, key: str, log) -> tuple[Any, tuple[str, str] | None]:
    """(the source to merge, the literal bounds of its first key or None)."""
    from pyspark.sql import functions as F

    spark_type = {f.name: f.dataType.simpleString() for f in df.schema.fields}.get(key)
    if spark_type not in (*_INTEGER_TYPES, "date"):
        return df, None
    try:
        df = df.localCheckpoint(eager=True)
    except Exception as exc:  # noqa: BLE001 - the unrestricted MERGE is still right
        log(f"merge without a key range (no checkpoint here: {type(exc).__name__})")
        return df, None
    row = df.agg(F.min(key).alias("lo"), F.max(key).alias("hi")).first()
    low, high = key_range_literal(row["lo"], spark_type), key_range_literal(row["hi"], spark_type)
    return df, (None if low is None or high is None else (low, high))
