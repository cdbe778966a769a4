"""The Spark engine (Databricks): JDBC or Unity Catalog source -> Unity Catalog Delta table.

Same strategies and rules as the Arrow engine (see engines.arrow.engine and docs/loader.md), expressed as
Spark SQL built in load.sql: each load is one Delta commit (a DataFrame write of a SELECT, or a
MERGE INTO; engines.spark.writes), preceded by ALTER TABLE ADD COLUMNS for new source columns (and,
for delete detection and scd2, by staging the rows read: engines.spark.stage). The watermark filter
is a DataFrame filter, which Spark pushes down into the JDBC query (and into Delta file skipping for
Unity Catalog sources); the watermark value is a typed literal built by Spark, never text we
format. The new watermark is max(cursor) of the destination.

The load's sequence and its rules are ``load.driver.run_load``'s; :class:`SparkLoad` is what this
engine supplies to it (``load.engine.LoadSession``). JDBC options: engines.spark.jdbc.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from databricks_scripts.engines.spark.columns import (
    controlled_frame,
    evolve_schema,
    recorded_commits,
    spark_schema_changes,  # noqa: F401 - still this module's name for it (tests, docs)
)
from databricks_scripts.engines.spark.comments import with_comments
from databricks_scripts.engines.spark.commits import (
    cancellable,
    check_keys,
    check_still_current,
    read_last_commit,
)
from databricks_scripts.engines.spark.history import history_statement
from databricks_scripts.engines.spark.jdbc import (  # noqa: F401 - this module's names (tests)
    jdbc_options,
    jdbc_tls_options,
)
from databricks_scripts.engines.spark.merge import with_key_range
from databricks_scripts.engines.spark.partitions import ReadPlan, plan_read
from databricks_scripts.engines.spark.stage import is_history_load, staging
from databricks_scripts.engines.spark.writes import (
    APPEND,
    MERGE,
    OVERWRITE,
    SparkWrite,
    created,
    run_write,
)
from databricks_scripts.load.commits import UnrecordedCommit
from databricks_scripts.load.driver import run_load
from databricks_scripts.load.engine import Load, SourceColumns, Written
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import Column, LoadResult, step
from databricks_scripts.load.sql import (
    SPARK,
    spark_max,
    spark_merge,
    spark_new_rows,
    spark_table,
)
from databricks_scripts.load.watermark import Watermark, decode_watermark, encode_watermark


def spark_literal(value: Any) -> Any:
    """A watermark value as PySpark must receive it.

    PySpark turns a naive ``datetime`` into a TIMESTAMP literal through the driver's *Python*
    local time zone (``time.mktime``), not the session's. A naive watermark belongs to a
    TIMESTAMP_NTZ cursor; Spark compares that column with a TIMESTAMP by reading it in the
    session time zone (UTC here), so the literal is handed over as the same wall clock in UTC.
    """
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def table_exists(spark: Any, target: str) -> bool:
    """``tableExists`` parses a multi-part identifier: pass it quoted (a name with a dot, space or
    backtick in it is otherwise split or refused)."""
    return bool(spark.catalog.tableExists(target))


def read_watermark(spark: Any, target: str, cursor: str) -> Any:
    """Exact max(cursor) of the destination, as a Python value (None when empty).

    TIMESTAMP values are read as microseconds since the epoch: collecting a TIMESTAMP converts it
    with the driver's Python time zone, which need not be the session's UTC.
    """
    types = {n.lower(): t for n, t in _fields(spark.table(target).schema)}
    cursor_type = types.get(cursor.lower(), "string")
    micros = cursor_type == "timestamp"
    value = spark.sql(spark_max(target, cursor, as_micros=micros)).collect()[0]["watermark"]
    if micros and value is not None:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(value))
    return value


def commit_counts(operation: str, metrics: Mapping[str, Any]) -> tuple[int, int]:
    """(rows read, rows written) from the Delta commit's ``operationMetrics``.

    MERGE also reports ``numOutputRows``, but that counts every row of the files it rewrote
    (copied, unchanged rows included): a merge wrote its inserted, updated and deleted rows.
    """

    def n(key: str) -> int:
        return int(metrics.get(key) or 0)

    if operation.upper().startswith("MERGE"):
        # Deleted rows count as written, as on the Arrow engine (engines.arrow.history.merge_metrics):
        # a hard-deleting MERGE's deletes are changes it made.
        written = n("numTargetRowsInserted") + n("numTargetRowsUpdated") + n("numTargetRowsDeleted")
        return n("numSourceRows"), written
    return n("numOutputRows"), n("numOutputRows")


# How many of the newest commits are searched for ours. Auto compaction and predictive
# optimization add OPTIMIZE commits after a write, other writers may commit too.
HISTORY_SEARCH_DEPTH = 50


def write_operation(statement: str) -> str:
    """The Delta ``operation`` our statement records (``DESCRIBE HISTORY``'s column)."""
    head = statement.lstrip().upper()
    if head.startswith("MERGE"):
        return "MERGE"
    if head.startswith("INSERT"):
        return "WRITE"
    return "TABLE AS SELECT"  # CREATE / CREATE OR REPLACE / REPLACE TABLE AS SELECT


def table_version(spark: Any, target: str) -> int | None:
    """The destination's current Delta version (None when it has no history yet)."""
    rows = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()
    return int(rows[0]["version"]) if rows else None


def our_commit(history: Sequence[Any], version_before: int | None, operation: str) -> Any | None:
    """The oldest commit after ``version_before`` whose operation is ours.

    ``DESCRIBE HISTORY ... LIMIT 1`` is not it: on Databricks an ``OPTIMIZE`` (auto compaction,
    predictive optimization) or another writer's commit can be newer than our write.
    """
    newer = [row for row in history if version_before is None or row["version"] > version_before]
    for row in sorted(newer, key=lambda r: r["version"]):
        if operation in str(row["operation"]).upper():
            return row
    return None


def statement_written(rows: Sequence[Any]) -> int | None:
    """Rows written as the MERGE / INSERT statement itself reports them (Databricks returns
    ``num_affected_rows``, ``num_inserted_rows``, ``num_updated_rows``, ``num_deleted_rows``);
    None when the statement returned no metrics (CREATE TABLE AS SELECT, open-source Spark)."""
    if not rows:
        return None
    row = rows[0].asDict() if hasattr(rows[0], "asDict") else dict(rows[0])
    if "num_inserted_rows" not in row and "num_updated_rows" not in row:
        return None
    return sum(
        int(row.get(k) or 0) for k in ("num_inserted_rows", "num_updated_rows", "num_deleted_rows")
    )


def counts_from(
    history: Sequence[Any], statement: str, result_rows: Sequence[Any], version_before: int | None
) -> tuple[int, int]:
    """(rows read, rows written) of our write: our own commit's metrics (found by version, not by
    being newest), the statement's own written count where it gives one."""
    commit = our_commit(history, version_before, write_operation(statement))
    written = statement_written(result_rows)
    moved = version_before is None or any(row["version"] > version_before for row in history)
    if commit is None and written is None and not moved:
        # The table did not move: the statement wrote nothing (an engine may skip an empty
        # INSERT's commit, as Sail does; Delta on Databricks commits it with 0 rows).
        return 0, 0
    if commit is None:
        if written is None:
            raise ValueError(
                f"our commit was not among the newest {HISTORY_SEARCH_DEPTH} commits after "
                f"version {version_before} and the statement reported no row counts"
            )
        return written, written
    read, from_history = commit_counts(commit["operation"], commit["operationMetrics"] or {})
    return read, from_history if written is None else written


def write_counts(
    spark: Any, target: str, statement: str, rows: Sequence[Any], before: int | None, marker=False
) -> tuple[int, int]:
    """:func:`counts_from` on the destination's newest ``HISTORY_SEARCH_DEPTH`` commits;
    ``marker``: a MERGE's marker commit (serverless) moved the table but is not the write."""
    history = spark.sql(f"DESCRIBE HISTORY {target} LIMIT {HISTORY_SEARCH_DEPTH}").collect()
    if marker:
        history = [row for row in history if str(row["operation"]).upper() != "WRITE"]
    return counts_from(history, statement, rows, before)


def _arrow_type_for(spark_type: str) -> pa.DataType:
    """The Arrow type a Spark column's values are compared as (the cursor's type for
    ``load.watermark``: its decoding, and whether it can be a cursor at all)."""
    if spark_type == "timestamp":
        return pa.timestamp("us", tz="UTC")
    if spark_type == "timestamp_ntz":
        return pa.timestamp("us")
    if spark_type == "date":
        return pa.date32()
    if spark_type.startswith("decimal"):
        p, s = spark_type[len("decimal(") : -1].split(",")
        return pa.decimal128(int(p), int(s))
    if spark_type in ("tinyint", "smallint", "int", "bigint"):
        return pa.int64()
    if spark_type in ("float", "double"):
        return pa.float64()
    unordered = {"boolean": pa.bool_(), "binary": pa.binary()}
    if spark_type in unordered:
        return unordered[spark_type]
    if spark_type.startswith(("array<", "map<", "struct<")):
        return pa.list_(pa.string())  # no order that finds new rows, as on the Arrow engine
    return pa.string()


def read_source(spark: Any, spec: LoadSpec, password: str | None, lower_bound: Any | None) -> Any:
    """The source DataFrame, filtered above ``lower_bound`` (pushed down by Spark)."""
    return read_source_planned(spark, spec, password, lower_bound)[0]


def read_source_planned(
    spark: Any,
    spec: LoadSpec,
    password: str | None,
    lower_bound: Any | None,
    partitioning: tuple[int, int] | None = None,
    hash_key: bytes | None = None,
    *,
    base: Any = None,
) -> tuple[Any, ReadPlan]:
    """The source DataFrame, filtered above ``lower_bound`` (pushed down by Spark), and how a JDBC
    read was split: ``partitioning`` = (rows per partition, most partitions), None: one connection
    (engines.spark.partitions). ``base``: :func:`source_frame` already read (the probe's)."""
    from pyspark.sql import functions as F

    plan = ReadPlan.single()
    df = base if base is not None else source_frame(spark, spec, password)
    if spec.unity_catalog_table is None:
        options = jdbc_options(spec, password)
        if partitioning is not None:
            rows_per_partition, max_partitions = partitioning
            plan = plan_read(
                spark,
                spec,
                options,
                _fields(df.schema),
                lower_bound,
                rows_per_partition=rows_per_partition,
                max_partitions=max_partitions,
            )
        if plan.predicates:
            # Typed range predicates (Oracle / SQL Server dates and timestamps): one partition
            # per predicate, every other option passed as a JDBC property.
            rest = {k: v for k, v in options.items() if k not in ("url", "dbtable")}
            df = spark.read.jdbc(
                options["url"],
                options["dbtable"],
                predicates=list(plan.predicates),
                properties=rest,
            )
        elif plan.options:
            df = spark.read.format("jdbc").options(**options, **plan.options).load()
    if lower_bound is not None:
        df = df.filter(F.col(spec.incremental_column) > F.lit(spark_literal(lower_bound)))
    return controlled_frame(df, spec, hash_key), plan


def source_frame(spark: Any, spec: LoadSpec, password: str | None) -> Any:
    """The whole source table as a DataFrame (Spark asks a JDBC source for its columns only)."""
    table = spec.unity_catalog_table  # Lakehouse Federation included: no JDBC
    if table is not None:
        return spark.read.table(spark_table(*table))
    return spark.read.format("jdbc").options(**jdbc_options(spec, password)).load()


def _fields(schema: Any) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


def _upsert_or_append(
    spec: LoadSpec,
    target: str,
    view: str,
    columns: list[str],
    watermark: Any,
    lower: Any,
    key_range: tuple[str, str] | None = None,
) -> SparkWrite:
    """The MERGE (with merge keys) or the incremental append, with its named parameters."""
    if spec.merge_keys:
        return SparkWrite(
            MERGE, target, spark_merge(target, view, spec.merge_keys, columns, key_range)
        )
    with_lookback = lower is not None and lower != watermark
    query = spark_new_rows(
        target, view, columns, spec.incremental_column, with_lookback=with_lookback
    )
    if not with_lookback:
        return SparkWrite(APPEND, target, query)
    args = {"watermark": spark_literal(watermark), "lower_bound": spark_literal(lower)}
    return SparkWrite(APPEND, target, query, args)


def run_spark_load(
    spec: LoadSpec,
    password: str | None,
    *,
    log: Callable[[str], None],
    progress_interval: float = 10.0,
    spark: Any | None = None,
    stop: StopSignal | None = None,
    partitioning: tuple[int, int] | None = None,
    hash_key: bytes | None = None,
    merge_marker: bool = False,
) -> LoadResult:
    """One load on Spark: ``load.driver.run_load`` on the :class:`SparkLoad` of
    :func:`spark_session`."""
    with spark_session(
        spec,
        password,
        spark=spark,
        stop=stop,
        partitioning=partitioning,
        hash_key=hash_key,
        merge_marker=merge_marker,
    ) as session:
        return run_load(session, spec, log=log, stop=stop)


@contextmanager
def spark_session(
    spec: LoadSpec,
    password: str | None,
    *,
    spark: Any | None = None,
    stop: StopSignal | None = None,
    partitioning: tuple[int, int] | None = None,
    hash_key: bytes | None = None,
    merge_marker: bool = False,
) -> Iterator[SparkLoad]:
    """The Spark engine's session of one load, its jobs under a tag a stop cancels and its staging
    tables dropped after it. ``partitioning``: (rows per JDBC partition, most partitions), None
    to read a JDBC source on one connection; ``hash_key``: the HMAC key of ``columns_hash``;
    ``merge_marker`` (serverless): a MERGE is named by a marker commit (engines.spark.writes)."""
    from pyspark.sql import SparkSession

    spark = spark or SparkSession.builder.getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    target = spark_table(
        spec.destination_catalog, spec.destination_schema_name, spec.destination_table_name
    )
    # "open destination": the job tag's and the staging tables' own failures
    with step("open destination", stop), cancellable(spark, stop), staging(spark, spec) as stages:
        session = SparkLoad(spark, password, target, (partitioning, hash_key, stages))
        session.merge_marker = merge_marker
        yield session


class SparkLoad:
    """The Spark engine's side of ``load.engine.LoadSession``: a Spark session, the destination
    table's name, and ``reading`` = (JDBC partitioning, hash key, the load's staging tables)."""

    def __init__(self, spark: Any, password: str | None, target: str, reading: tuple) -> None:
        self.spark, self.password, self.target, self.reading = spark, password, target, reading
        self.merge_marker = False
        self.exists = False
        self.wrote = False
        self.base: Any = None  # the source DataFrame as probed (no filter, one connection)
        self.source_fields: list[tuple[str, str]] = []
        self.target_fields: list[tuple[str, str]] = []
        self.view = ""
        self.key_range: tuple[str, str] | None = None

    @property
    def destination(self) -> str:
        return self.target

    def probe(self, load: Load) -> SourceColumns:
        self.base = source_frame(self.spark, load.spec, self.password)
        df = controlled_frame(self.base, load.spec, self.reading[1])
        self.source_fields = _fields(df.schema)
        cursor = (load.spec.incremental_column or "").lower()
        found = [(n, t) for n, t in self.source_fields if n.lower() == cursor]
        field = pa.field(found[0][0], _arrow_type_for(found[0][1])) if found else None
        return SourceColumns(tuple(n for n, _ in self.source_fields), field, case_sensitive=False)

    def open(self, load: Load) -> bool:
        self.exists = table_exists(self.spark, self.target)
        self.target_fields = _fields(self.spark.table(self.target).schema) if self.exists else []
        return self.exists

    def recorded_commits(self) -> list[dict]:
        return recorded_commits(self.spark, self.target)

    def settle(self, load: Load) -> bool:
        return self.exists

    def last_commit(self, load: Load) -> UnrecordedCommit | None:
        return read_last_commit(self.spark, self.target) if self.exists else None

    def decode(self, load: Load, text: str) -> Watermark:
        cursor = (load.spec.incremental_column or "").lower()
        cursor_type = {n.lower(): t for n, t in self.target_fields}.get(cursor, "string")
        return decode_watermark(text, _arrow_type_for(cursor_type))

    def destination_watermark(self, load: Load) -> str | None:
        """max(cursor) of the destination; the stored text when nothing is newer."""
        spec, watermark = load.spec, load.plan.watermark
        if not spec.incremental_column:
            return spec.incremental_value
        value = read_watermark(self.spark, self.target, spec.incremental_column)
        if value is None or value == watermark:
            return spec.incremental_value
        return encode_watermark(value)

    def evolve_schema(self, load: Load) -> list[str]:
        if load.plan.rebuild:
            return []
        spark, spec, fields = self.spark, load.spec, self.source_fields
        evolved = evolve_schema(spark, spec, self.target, fields, self.target_fields, load.log)
        self.source_fields = evolved
        return list(evolved.notes)

    def read(self, load: Load) -> list[str]:
        self.view, self.key_range, plan = _source_view(
            self.spark, load, self.password, self.reading, self.base
        )
        return [plan.note] if plan.note else []

    def on_stop(self, stop: StopSignal) -> None:
        pass  # the load's Spark jobs carry a tag the stop cancels (engines.spark.commits)

    def row_count(self) -> int | None:
        if not (self.exists or self.wrote):
            return 0
        return int(self.spark.sql(f"SELECT count(*) AS n FROM {self.target}").collect()[0]["n"])

    def write(self, load: Load) -> Written:
        where = ["write destination"]  # engines.spark.history names its own steps here
        with step(where, load.stop):
            read, written = _write(self, load, where)
        self.wrote = True
        return Written(read, written, True)

    def watermark_after(self, load: Load, written: Written) -> str | None:
        return self.destination_watermark(load)

    def schema(self) -> tuple[Column, ...]:
        return tuple(Column(n, t) for n, t in _fields(self.spark.table(self.target).schema))

    def finish(self, load: Load, result: LoadResult) -> LoadResult:
        spec, columns = load.spec, [n for n, _ in self.source_fields]
        jdbc = None if spec.unity_catalog_table else jdbc_options(spec, self.password)
        created = load.plan.rebuild or not self.exists
        return with_comments(
            self.spark, spec, self.target, result, columns, created, load.log, jdbc
        )


def _write(session: SparkLoad, load: Load, where: list[str]) -> tuple[int, int]:
    """The write per the applied strategy, fenced before and after; (rows read, rows written)."""
    spark, spec, target, view = session.spark, load.spec, session.target, session.view
    plan, exists, fields = load.plan, session.exists, session.source_fields
    lower = plan.lower
    columns = [n for n, _ in fields]
    keys = _key_reader(spark, spec, session.password, view, lower, session.reading[2], load.log)
    args = (spark, spec, session.password, target, view, fields, session.target_fields, exists)
    kept = history_statement(*args, plan.applied, where, keys, load.log)
    columns_sql = ", ".join(SPARK.quote(c) for c in columns)
    if kept is not None:
        write = kept
    elif plan.rebuild:
        write = created(target, f"SELECT * FROM {SPARK.quote(view)}", columns, replace=exists)
    elif plan.applied == "full":
        write = SparkWrite(OVERWRITE, target, f"SELECT {columns_sql} FROM {SPARK.quote(view)}")
    else:
        write = _upsert_or_append(
            spec, target, view, columns, plan.watermark, lower, session.key_range
        )
    if plan.applied == "full" and spec.merge_keys:  # a keyed table's first load checks its keys
        check_keys(spark, view, spec.merge_keys)
    last = load.at_start
    if exists:
        check_still_current(spec, last, read_last_commit(spark, target))
    # The version before the write: on Databricks auto compaction / predictive optimization (or
    # another writer) may commit after ours, so "the newest commit" is not necessarily ours.
    version_before = table_version(spark, target) if exists else None
    load.log(f"running: {write.text}")
    merged = session.merge_marker and write.kind == MERGE  # serverless: MERGE, then its marker
    counted = load.stop.leave_commit if load.stop is not None else (lambda: None)
    result = run_write(spark, write, spec, plan.applied, marker=merged, committed=counted)
    if exists:  # Delta skipped it (txnVersion): a newer attempt committed meanwhile
        check_still_current(spec, last, read_last_commit(spark, target), merged=merged)
    where[0] = "read commit metrics"
    return write_counts(spark, target, write.text, result, version_before, merged)


def _key_reader(spark: Any, spec: LoadSpec, password, view: str, lower, stages, log):
    """The source's keys for delete detection: those of the staged rows when the load read every
    row (no second read), else one read of the key columns, staged too."""
    keys = list(spec.merge_keys or ())
    if lower is None:
        return lambda: spark.table(SPARK.quote(view)).select(*keys)
    return lambda: stages.stage(
        read_source(spark, spec, password, None).select(*keys), "source keys", log
    )


def _source_view(spark: Any, load: Load, password, reading, base):
    """The source read as a temp view: (view, the MERGE's key range, the read plan); ``reading``
    = (JDBC partitioning, hash key, the load's staging tables). The rows of a delete-detecting
    or scd2 load are staged: one read of the source (engines.spark.stage)."""
    spec, lower, log = load.spec, load.plan.lower, load.log
    df, plan = read_source_planned(spark, spec, password, lower, *reading[:2], base=base)
    if is_history_load(spec):
        df = reading[2].stage(df, "rows read", log)
    if plan.partitions > 1:
        how = dict(plan.options) or list(plan.predicates)
        log(f"reading the source over {plan.partitions} JDBC connections: {how}")
    elif plan.note:
        log(plan.note)
    key_range = None
    plain_merge = spec.load_strategy != "scd2" and spec.delete_detection == "none"
    if load.plan.applied != "full" and spec.merge_keys and plain_merge:  # MERGE the keys read
        df, key_range = with_key_range(df, spec.merge_keys[0], log, spec.incremental_column)
    view = f"dl_src_{uuid.uuid4().hex[:12]}"
    df.createOrReplaceTempView(view)
    return view, key_range, plan
