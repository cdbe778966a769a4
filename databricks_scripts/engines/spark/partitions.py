"""Partitioned JDBC reads for the Spark engine: one source table read over several connections.

Spark splits a JDBC read on a numeric, date or timestamp column given ``partitionColumn``,
``lowerBound``, ``upperBound`` and ``numPartitions``: partition i reads ``lower + i*stride <= col <
lower + (i+1)*stride``, the first one also every row below the range *and every NULL*, the last one
every row above it. The bounds only set the stride, never which rows are read, so a stale or
approximate bound costs balance, never rows; the watermark filter is still pushed into every
partition's query.

The plan (see docs/databricks.md, "Partitioned JDBC reads"):

- The column: the row's ``jdbc_partition_column``, else the single merge key, else the incremental
  column, whichever is first of a splittable type (integers, decimals, dates, timestamps).
- The bounds: one cheap probe pushed to the source as a JDBC query, ``min``/``max`` of the column
  within the load's incremental filter (an index answers it when the column is indexed).
- The row estimate: for a read with a watermark filter, ``count(*)`` within the filter in the same
  probe; for a whole-table read the catalog's estimate (``pg_class.reltuples``,
  ``information_schema.tables.table_rows``), or ``count(*)`` where the catalog has none we read.
- ``numPartitions`` = estimate / rows per partition, at least 1, at most the row's
  ``jdbc_num_partitions`` or the loader's cap (``DATALOADER_JDBC_MAX_PARTITIONS``).

Where the read cannot be split (no splittable column, no estimate), it runs on one connection and
the load's result carries a note saying why, which reaches the history row's message.

The probe's filter value is rendered from the decoded, typed watermark (a number, date or
datetime; never text a person wrote), only for PostgreSQL and MySQL; elsewhere the probe looks at
the whole table, which widens the bounds and the estimate but changes no row read.

Dialect rules the probe and the ranges follow:

- The probe's aliases are quoted identifiers (``AS "lo"``): Oracle folds an unquoted alias to upper
  case (``LO``), and Spark names the column by the label the driver reports.
- A date or timestamp split on Oracle or SQL Server does not use Spark's own ranges, whose bounds
  are plain string literals (``'2024-01-01 00:00:00.123456'``): Oracle converts those with the
  session's NLS_DATE_FORMAT / NLS_TIMESTAMP_FORMAT, and SQL Server's ``datetime`` refuses more
  than three fractional digits. The ranges are then explicit predicates with typed literals
  (Oracle ``TIMESTAMP '...'`` / ``DATE '...'``, SQL Server ``CONVERT(datetime2, '...', 121)`` /
  ``CONVERT(date, '...', 23)``), in the same shape as Spark's: the first range also takes every
  row below it and every NULL, the last every row above it, each row in exactly one range.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import DIALECTS

# Spark simpleString types ``partitionColumn`` accepts (Spark 3.5: numeric, date, timestamp).
_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
# TIMESTAMP_NTZ is left out: not verified as a partition column on Spark 3.5 (Databricks Runtime
# 15.4), and JDBC sources read as TIMESTAMP unless preferTimestampNTZ is set.
_TIMES = ("date", "timestamp")
_SPLIT_HINT = "set jdbc_partition_column to a numeric, date or timestamp column to split it"
# Names the catalog estimate query may carry as string literals (anything else: count(*) instead).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_$ .-]+$")


@dataclass(frozen=True)
class ReadPlan:
    """How one JDBC read is split: Spark options to add, and what to say about it."""

    options: Mapping[str, str] = field(default_factory=dict)
    partitions: int = 1
    note: str | None = None  # said in the history message: why the read was not split
    # When set, the read's ranges as explicit WHERE predicates (``spark.read.jdbc(predicates=)``)
    # instead of Spark's partitionColumn options (typed bound literals, see the module doc).
    predicates: tuple[str, ...] = ()

    @classmethod
    def single(cls, note: str | None = None) -> ReadPlan:
        return cls({}, 1, note=note)


def splittable(spark_type: str) -> bool:
    """True for the Spark types a JDBC read can be split on."""
    return spark_type in _INTEGRAL or spark_type in _TIMES or spark_type.startswith("decimal(")


def choose_partition_column(
    spec: LoadSpec, fields: Sequence[tuple[str, str]]
) -> tuple[str | None, str]:
    """(column, its Spark type) to split on, or (None, why not).

    A ``jdbc_partition_column`` a person set must exist and be splittable: a typo is refused
    (ValueError) rather than silently read on one connection.
    """
    types = {name.lower(): (name, t) for name, t in fields}
    override = spec.jdbc_partition_column
    if override:
        found = types.get(override.lower())
        if found is None:
            raise ValueError(f"jdbc_partition_column {override!r} is not a column of the source")
        name, spark_type = found
        if not splittable(spark_type):
            raise ValueError(
                f"jdbc_partition_column {override!r} is {spark_type}; a JDBC read can be split "
                "only on a numeric, date or timestamp column"
            )
        return name, spark_type
    reasons = []
    candidates = []
    if len(spec.merge_keys) == 1:
        candidates.append(("merge key", spec.merge_keys[0]))
    elif spec.merge_keys:
        reasons.append(f"the merge key ({', '.join(spec.merge_keys)}) has several columns")
    if spec.incremental_column:
        candidates.append(("incremental column", spec.incremental_column))
    for role, column in candidates:
        found = types.get(column.lower())
        if found is not None and splittable(found[1]):
            return found
        reasons.append(f"the {role} {column!r} is {found[1] if found else 'not in the source'}")
    if not reasons:
        reasons.append("the table has no merge key or incremental column")
    return None, "; ".join(reasons)


def partition_count(estimate: int | None, rows_per_partition: int, cap: int) -> int:
    """Connections for ``estimate`` rows: one per ``rows_per_partition``, between 1 and ``cap``."""
    if not estimate or estimate <= 0:
        return 1
    return max(1, min(int(cap), math.ceil(estimate / max(1, rows_per_partition))))


def filter_literal(db_type: str, value: Any) -> str | None:
    """``value`` as SQL text for the probe's filter, or None when it is not rendered.

    Only typed values are rendered (int, Decimal, finite float, date, datetime), and only for
    PostgreSQL and MySQL, whose string-to-date/time comparison reads ISO text exactly.
    """
    if db_type not in ("postgresql", "mysql") or value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | decimal.Decimal) or (
        isinstance(value, float) and math.isfinite(value)
    ):
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            return None
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            if db_type == "postgresql":
                return f"'{value.replace(tzinfo=None).isoformat(sep=' ')}+00:00'"
            value = value.replace(tzinfo=None)
        return f"'{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"'{value.isoformat()}'"
    return None


def probe_query(
    db_type: str, table_sql: str, column: str, cursor: str | None, lower: str | None, count: bool
) -> str:
    """min/max of ``column`` (and count(*) when ``count``) within ``cursor > lower``."""
    dialect = DIALECTS[db_type]
    col = dialect.quote(column)
    # Quoted aliases: Oracle would fold unquoted ones to LO / HI / N.
    lo, hi, n = (dialect.quote(alias) for alias in ("lo", "hi", "n"))
    select = f"SELECT min({col}) AS {lo}, max({col}) AS {hi}"
    if count:
        select += f", count(*) AS {n}"
    text = f"{select} FROM {table_sql}"
    if cursor and lower is not None:
        text += f" WHERE {dialect.quote(cursor)} > {lower}"
    return text


def estimate_query(db_type: str, spec: LoadSpec) -> str | None:
    """The catalog's row estimate of the source table, or None where none is read."""
    if db_type == "postgresql":
        qualified = DIALECTS["postgresql"].quote(spec.source_table_name)
        if spec.source_schema_name:
            qualified = f"{DIALECTS['postgresql'].quote(spec.source_schema_name)}.{qualified}"
        literal = "'" + qualified.replace("'", "''") + "'"
        # reltuples is -1 for a table never vacuumed or analyzed (PostgreSQL 14+): no estimate.
        return (
            "SELECT CASE WHEN reltuples < 0 THEN NULL ELSE reltuples::bigint END AS n "
            f"FROM pg_class WHERE oid = to_regclass({literal})"
        )
    schema = spec.source_schema_name or (spec.db_config_value.get("database") or "")
    if db_type == "mysql" and all(
        _PLAIN_NAME.match(n or "") for n in (schema, spec.source_table_name)
    ):
        return (
            "SELECT table_rows AS n FROM information_schema.tables "
            f"WHERE table_schema = '{schema}' AND table_name = '{spec.source_table_name}'"
        )
    return None


def _jdbc_query(spark: Any, base: Mapping[str, str], query: str) -> Any:
    """One row of ``query``, run on the source over one JDBC connection."""
    opts = {k: v for k, v in base.items() if k not in ("dbtable", "fetchsize")}
    return spark.read.format("jdbc").options(**opts, query=query).load()


def typed_literal(db_type: str, spark_type: str, value: dt.date) -> str:
    """A date or timestamp bound as a typed literal of ``db_type`` (Oracle, SQL Server), read the
    same whatever the session's date format, language or the column's fractional precision."""
    if spark_type == "date":
        text = value.isoformat() if not isinstance(value, dt.datetime) else value.date().isoformat()
        return f"DATE '{text}'" if db_type == "oracle" else f"CONVERT(date, '{text}', 23)"
    if not isinstance(value, dt.datetime):
        raise TypeError(f"a timestamp bound must be a datetime, got {value!r}")
    text = value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return f"TIMESTAMP '{text}'" if db_type == "oracle" else f"CONVERT(datetime2, '{text}', 121)"


def _stride_points(spark_type: str, lo: dt.date, hi: dt.date, partitions: int) -> list[dt.date]:
    """At most partitions - 1 inner bounds in (``lo``, ``hi``], evenly spaced and distinct (in
    whole days for a date, microseconds for a timestamp)."""
    if spark_type == "date":
        lo, hi = (d.date() if isinstance(d, dt.datetime) else d for d in (lo, hi))
        unit = dt.timedelta(days=1)
    else:
        unit = dt.timedelta(microseconds=1)
    span = (hi - lo) // unit
    n = max(1, min(partitions, span + 1))
    return sorted({lo + unit * -(-span * i // n) for i in range(1, n)})


def range_predicates(
    db_type: str, column: str, spark_type: str, lo: dt.date, hi: dt.date, partitions: int
) -> tuple[str, ...]:
    """WHERE predicates splitting the read of ``column`` into at most ``partitions`` ranges with
    typed bound literals: ``col < b1 OR col IS NULL``, ``col >= b1 AND col < b2``, ...,
    ``col >= bn``. Each value, NULL included, satisfies exactly one of them."""
    col = DIALECTS[db_type].quote(column)
    bounds = [
        typed_literal(db_type, spark_type, p)
        for p in _stride_points(spark_type, lo, hi, partitions)
    ]
    if not bounds:
        return ()
    predicates = [f"{col} < {bounds[0]} OR {col} IS NULL"]
    predicates += [f"{col} >= {a} AND {col} < {b}" for a, b in itertools.pairwise(bounds)]
    predicates.append(f"{col} >= {bounds[-1]}")
    return tuple(predicates)


def _typed_ranges(db_type: str, spark_type: str) -> bool:
    """True where the split goes through typed predicates rather than Spark's bound strings."""
    return db_type in ("oracle", "sqlserver") and spark_type in _TIMES


def _bound_text(spark_type: str, lo: Any, hi: Any) -> tuple[str, str]:
    """Spark's ``lowerBound``/``upperBound`` option text (numbers as whole numbers)."""
    if spark_type.startswith("decimal("):
        return str(math.floor(decimal.Decimal(lo))), str(math.ceil(decimal.Decimal(hi)))
    return str(lo), str(hi)


def _probe(spark, base, spark_type, query) -> tuple[Any, Any, int | None]:
    from pyspark.sql import functions as F

    row = _jdbc_query(spark, base, query)
    if spark_type == "timestamp":
        # Formatted by Spark in the session time zone (UTC): collecting a TIMESTAMP would convert
        # it with the driver's Python time zone, and Spark parses the bounds in the session's.
        pattern = "yyyy-MM-dd HH:mm:ss.SSSSSS"
        row = row.select(
            F.date_format("lo", pattern).alias("lo"),
            F.date_format("hi", pattern).alias("hi"),
            *(["n"] if "n" in row.columns else []),
        )
    got = row.collect()[0].asDict()
    n = got.get("n")
    return got["lo"], got["hi"], None if n is None else int(n)


def plan_read(
    spark: Any,
    spec: LoadSpec,
    base: Mapping[str, str],
    fields: Sequence[tuple[str, str]],
    lower: Any,
    *,
    rows_per_partition: int,
    max_partitions: int,
) -> ReadPlan:
    """How to split the JDBC read of ``spec``'s source (``base``: its unsplit JDBC options,
    ``fields``: its (name, Spark type) schema, ``lower``: the watermark filter's bound)."""
    cap = spec.jdbc_num_partitions or max_partitions
    if cap <= 1:
        return ReadPlan.single()  # a person (or the cap) chose one connection: nothing to say
    column, spark_type_or_reason = choose_partition_column(spec, fields)
    if column is None:
        return ReadPlan.single(f"read on one connection: {spark_type_or_reason}; {_SPLIT_HINT}")
    spark_type = spark_type_or_reason
    filtered = lower is not None and spec.incremental_column is not None
    literal = filter_literal(spec.db_type, lower) if filtered else None
    estimate_sql = None if filtered else estimate_query(spec.db_type, spec)
    query = probe_query(
        spec.db_type,
        base["dbtable"],
        column,
        spec.incremental_column,
        literal,
        count=estimate_sql is None,
    )
    lo, hi, estimate = _probe(spark, base, spark_type, query)
    if estimate_sql is not None:
        estimate = _jdbc_query(spark, base, estimate_sql).collect()
        estimate = estimate[0]["n"] if estimate else None
        if estimate is None:
            return ReadPlan.single(
                "read on one connection: the source has no row estimate for the table "
                "(PostgreSQL: ANALYZE it; MySQL: ANALYZE TABLE)"
            )
        estimate = int(estimate)
    if lo is None or hi is None or lo == hi:
        return ReadPlan.single()  # nothing, or one value, to read: one connection is the plan
    partitions = partition_count(estimate, rows_per_partition, cap)
    if partitions <= 1:
        return ReadPlan.single()
    if _typed_ranges(spec.db_type, spark_type):
        parse = dt.date.fromisoformat if spark_type == "date" else dt.datetime.fromisoformat
        low, high = (v if isinstance(v, dt.date) else parse(str(v)) for v in (lo, hi))
        predicates = range_predicates(spec.db_type, column, spark_type, low, high, partitions)
        if len(predicates) <= 1:
            return ReadPlan.single()
        return ReadPlan({}, len(predicates), predicates=predicates)
    lower_text, upper_text = _bound_text(spark_type, lo, hi)
    return ReadPlan(
        {
            "partitionColumn": column,
            "lowerBound": lower_text,
            "upperBound": upper_text,
            "numPartitions": str(partitions),
        },
        partitions,
    )
