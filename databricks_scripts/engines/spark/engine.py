"""The Spark engine (Databricks): JDBC or Unity Catalog source -> Unity Catalog Delta table.

Same strategies and rules as the Arrow engine (see engines.arrow.engine and docs/loader.md), expressed as
Spark SQL built in load.sql: each load is one Delta commit (a DataFrame write of a SELECT, or a
MERGE INTO; engines.spark.writes), preceded by ALTER TABLE ADD COLUMNS for new source columns (and,
for delete detection and scd2, by staging the rows read: engines.spark.stage). The watermark filter
is a DataFrame filter, which Spark pushes down into the JDBC query (and into Delta file skipping for
Unity Catalog sources); the watermark value is a typed literal built by Spark, never text we
format. The new watermark is max(cursor) of the destination.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from databricks_scripts.engines.spark.columns import (
    controlled_frame,
    evolve_schema,
    rebuild_if_changed,
    spark_schema_changes,  # noqa: F401 - still this module's name for it (tests, docs)
)
from databricks_scripts.engines.spark.comments import with_comments
from databricks_scripts.engines.spark.commits import (
    cancellable,
    check_keys,
    check_still_current,
    read_last_commit,
    unrecorded,
)
from databricks_scripts.engines.spark.history import history_statement
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
from databricks_scripts.load.commits import StaleAttempt
from databricks_scripts.load.interrupt import StopRequested
from databricks_scripts.load.plan import LoadResult, LoadStepError, check_source_columns, plan_load
from databricks_scripts.load.sql import (
    MYSQL,
    ORACLE,
    POSTGRESQL,
    SPARK,
    SQLSERVER,
    qualified_name,
    source_table_parts,
    spark_max,
    spark_merge,
    spark_new_rows,
    spark_table,
)
from databricks_scripts.load.watermark import (
    decode_watermark,
    encode_watermark,
)

_JDBC = {
    "postgresql": (
        "org.postgresql.Driver",
        POSTGRESQL,
        "jdbc:postgresql://{host}:{port}/{database}",
        5432,
    ),
    "mysql": ("com.mysql.cj.jdbc.Driver", MYSQL, "jdbc:mysql://{host}:{port}/{database}", 3306),
    "sqlserver": (
        "com.microsoft.sqlserver.jdbc.SQLServerDriver",
        SQLSERVER,
        "jdbc:sqlserver://{host}:{port};databaseName={database}",
        1433,
    ),
    "oracle": (
        "oracle.jdbc.OracleDriver",
        ORACLE,
        "jdbc:oracle:thin:@//{host}:{port}/{database}",
        1521,
    ),
}


# Each driver's connect-timeout property and its unit (seconds x scale).
_JDBC_CONNECT_TIMEOUT = {
    "postgresql": ("connectTimeout", 1),
    "mysql": ("connectTimeout", 1000),
    "sqlserver": ("loginTimeout", 1),
    "oracle": ("oracle.net.CONNECT_TIMEOUT", 1000),
}


def jdbc_options(spec: Any, password: str | None, *, fetch_size: int = 10_000) -> dict[str, str]:
    """Options for ``spark.read.format("jdbc")``. The password goes in the ``password`` option,
    never into the URL, so it cannot leak through a logged URL."""
    driver, dialect, url, default_port = _JDBC[spec.db_type]
    cfg = spec.db_config_value
    database = cfg.get("service_name") or cfg.get("database") or ""
    if spec.db_type == "oracle" and cfg.get("sslmode") in ("require", "verify-ca", "verify-full"):
        url = "jdbc:oracle:thin:@tcps://{host}:{port}/{database}"
    opts = {
        "url": url.format(
            host=cfg.get("host"), port=cfg.get("port") or default_port, database=database
        ),
        "driver": driver,
        "dbtable": qualified_name(
            dialect,
            *source_table_parts(
                spec.db_type, spec.source_catalog, spec.source_schema_name, spec.source_table_name
            ),
        ),
        "user": str(cfg.get("user") or ""),
        "fetchsize": str(fetch_size),
        "pushDownPredicate": "true",
        # The MERGE's key range (engines.spark.merge) and the key checks are aggregates: the
        # source answers them (from an index where it has one) instead of Spark reading it all.
        "pushDownAggregate": "true",
    }
    opts.update(jdbc_tls_options(spec.db_type, cfg))
    if cfg.get("connect_timeout"):
        name, scale = _JDBC_CONNECT_TIMEOUT[spec.db_type]
        opts[name] = str(int(cfg["connect_timeout"]) * scale)
    if password is not None:
        opts["password"] = password
    return opts


def jdbc_tls_options(db_type: str, cfg: Mapping[str, Any]) -> dict[str, str]:
    """Driver properties for the checked ``sslmode`` (``load.params.check_connection_config``:
    ``require`` by default for a host that is not loopback). Each JDBC driver refuses to log in
    without TLS when it is required, so the password is never sent in clear."""
    mode = cfg.get("sslmode")
    ca = cfg.get("sslrootcert")
    secure = mode in ("require", "verify-ca", "verify-full")
    if db_type == "postgresql":
        opts = {"sslmode": mode} if mode else {}
        if ca:
            opts["sslrootcert"] = str(ca)
        return opts
    if db_type == "mysql":
        names = {
            "require": "REQUIRED",
            "verify-ca": "VERIFY_CA",
            "verify-full": "VERIFY_IDENTITY",
            "disable": "DISABLED",
        }
        return {"sslMode": names[mode]} if mode in names else {}
    if db_type == "sqlserver":
        if not mode:
            return {}
        if not secure:
            return {"encrypt": "false"}
        # require: encrypted, the driver's own certificate check (as before); verify-*: explicit.
        if mode == "require":
            return {"encrypt": "true"}
        return {"encrypt": "true", "trustServerCertificate": "false"}
    if db_type == "oracle" and secure:
        return {"oracle.net.ssl_server_dn_match": str(mode == "verify-full").lower()}
    return {}


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


def _arrow_type_for(spark_type: str):
    import pyarrow as pa

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
    return pa.string()


def read_source(spark: Any, spec: Any, password: str | None, lower_bound: Any | None) -> Any:
    """The source DataFrame, filtered above ``lower_bound`` (pushed down by Spark)."""
    return read_source_planned(spark, spec, password, lower_bound)[0]


def read_source_planned(
    spark: Any,
    spec: Any,
    password: str | None,
    lower_bound: Any | None,
    partitioning: tuple[int, int] | None = None,
    hash_key: bytes | None = None,
) -> tuple[Any, ReadPlan]:
    """The source DataFrame, filtered above ``lower_bound`` (pushed down by Spark), and how a JDBC
    read was split: ``partitioning`` = (rows per partition, most partitions), None: one connection
    (engines.spark.partitions)."""
    from pyspark.sql import functions as F

    plan = ReadPlan.single()
    federated = spec.foreign_table  # Lakehouse Federation: Unity Catalog reads, no JDBC
    if spec.db_type == "databricks" or federated:
        parts = federated or (spec.source_catalog, spec.source_schema_name, spec.source_table_name)
        df = spark.read.table(spark_table(*parts))
    else:
        options = jdbc_options(spec, password)
        df = spark.read.format("jdbc").options(**options).load()
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


def _fields(schema: Any) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


class _Schema:
    """A minimal stand-in with the Arrow-schema shape the script's metadata builder reads."""

    def __init__(self, fields: list[tuple[str, str]]):
        self._fields = fields

    def __iter__(self):
        from types import SimpleNamespace

        return iter(SimpleNamespace(name=n, type=t, nullable=True) for n, t in self._fields)


def _upsert_or_append(
    spec: Any,
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


def _watermark_after(spark: Any, spec: Any, target: str, watermark: Any) -> str | None:
    """max(cursor) of the destination after the commit; the stored text when nothing is newer."""
    if not spec.incremental_column:
        return spec.incremental_value
    value = read_watermark(spark, target, spec.incremental_column)
    if value is None or value == watermark:
        return spec.incremental_value
    return encode_watermark(value)


def run_spark_load(
    spec: Any,
    password: str | None,
    *,
    log: Callable[[str], None],
    progress_interval: float = 10.0,
    spark: Any | None = None,
    stop: Any | None = None,
    partitioning: tuple[int, int] | None = None,
    hash_key: bytes | None = None,
    merge_marker: bool = False,
) -> Any:
    """One load on Spark; ``partitioning``: (rows per JDBC partition, most partitions), None to
    read a JDBC source on one connection; ``hash_key``: the HMAC key of ``columns_hash``;
    ``merge_marker`` (serverless): a MERGE is named by a marker commit (engines.spark.writes)."""
    from pyspark.sql import SparkSession

    spark = spark or SparkSession.builder.getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    target = spark_table(
        spec.destination_catalog, spec.destination_schema_name, spec.destination_table_name
    )
    where = ["open destination"]  # the step a failure is reported at
    try:
        with cancellable(spark, stop), staging(spark, spec) as stages:
            reading = (partitioning, hash_key, stages)
            return _load(spark, spec, password, target, log, where, reading, merge_marker)
    except (StaleAttempt, LoadStepError):
        raise  # a step the plan named itself (decode watermark) keeps its name and words
    except Exception as exc:
        if stop is not None and stop.requested.is_set():
            raise StopRequested(stop.finish_stop()) from None
        raise LoadStepError(where[0], f"{type(exc).__name__}: {exc}") from exc


def _load(
    spark: Any, spec: Any, password: str | None, target: str, log, where: list, reading, marker
) -> Any:
    exists = table_exists(spark, target)
    spec, rebuilt = rebuild_if_changed(spark, spec, target, exists, log)
    plan = plan_load(spec, exists)
    applied = plan.applied
    target_fields = _fields(spark.table(target).schema) if exists else []
    last = read_last_commit(spark, target) if exists else None

    cursor = spec.incremental_column
    if plan.from_watermark:
        where[0] = "decode watermark"
        cursor_type = {n.lower(): t for n, t in target_fields}.get(cursor.lower(), "string")
        plan = plan.window(lambda text: decode_watermark(text, _arrow_type_for(cursor_type)))
    watermark, lower = plan.watermark, plan.lower
    found = unrecorded(spec, last) if plan.reconciles else None
    if found is not None:
        where[0] = "reconcile with the destination"
        return _reconciled(spark, spec, target, applied, watermark, found, log)

    where[0] = "read source"
    view, source_fields, key_range, read_plan = _source_view(
        spark, spec, password, lower, reading, applied, log
    )

    where[0] = "reconcile schema"
    rebuild = plan.rebuild
    notes = [n for n in (rebuilt, read_plan.note) if n]
    if not rebuild:
        source_fields = evolve_schema(spark, spec, target, source_fields, target_fields, log)
        notes += source_fields.notes
    columns = [n for n, _ in source_fields]

    where[0] = "write destination"
    keys = _key_reader(spark, spec, password, view, lower, reading[2], log)
    args = (spark, spec, password, target, view, source_fields, target_fields, exists, applied)
    # delete detection / scd2 (engines.spark.history)
    kept = history_statement(*args, where, keys, log)
    columns_sql = ", ".join(SPARK.quote(c) for c in columns)
    if kept is not None:
        write = kept
    elif rebuild:
        write = created(target, f"SELECT * FROM {SPARK.quote(view)}", columns, replace=exists)
    elif applied == "full":
        write = SparkWrite(OVERWRITE, target, f"SELECT {columns_sql} FROM {SPARK.quote(view)}")
    else:
        write = _upsert_or_append(spec, target, view, columns, watermark, lower, key_range)
    if applied == "full" and spec.merge_keys:  # a keyed table's first load checks its keys
        check_keys(spark, view, spec.merge_keys)
    if exists:
        check_still_current(spec, last, read_last_commit(spark, target))
    # The version before the write: on Databricks auto compaction / predictive optimization (or
    # another writer) may commit after ours, so "the newest commit" is not necessarily ours.
    version_before = table_version(spark, target) if exists else None
    rows_before = _count(spark, target, version_before) if exists else 0
    statement = write.text
    log(f"running: {statement}")
    merged = marker and write.kind == MERGE  # serverless: the MERGE, then its marker commit
    result = run_write(spark, write, spec, applied, marker=merged)
    if exists:  # Delta skipped it (txnVersion): a newer attempt committed meanwhile
        check_still_current(spec, last, read_last_commit(spark, target), merged=merged)

    where[0] = "read commit metrics"
    read, written = write_counts(spark, target, statement, result, version_before, merged)
    loaded = _result(spark, spec, target, applied, watermark, read, written, notes=notes)
    loaded.destination_rows_before = rows_before
    loaded.full_reason = plan.full_reason
    jdbc = (
        None if spec.db_type == "databricks" or spec.foreign_table else jdbc_options(spec, password)
    )
    return with_comments(spark, spec, target, loaded, columns, rebuild or not exists, log, jdbc)


def _key_reader(spark: Any, spec: Any, password, view: str, lower, stages, log):
    """The source's keys for delete detection: those of the staged rows when the load read every
    row (no second read), else one read of the key columns, staged too."""
    keys = list(spec.merge_keys or ())
    if lower is None:
        return lambda: spark.table(SPARK.quote(view)).select(*keys)
    return lambda: stages.stage(
        read_source(spark, spec, password, None).select(*keys), "source keys", log
    )


def _source_view(spark: Any, spec: Any, password, lower, reading, applied: str, log):
    """The source read as a temp view: (view, its fields, the MERGE's key range, the read plan);
    ``reading`` = (JDBC partitioning, hash key, the load's staging tables). The rows of a
    delete-detecting or scd2 load are staged: one read of the source (engines.spark.stage)."""
    df, plan = read_source_planned(spark, spec, password, lower, *reading[:2])
    # The Arrow engine's check (load.plan), before the key range or staging reads a missing key.
    check_source_columns(spec, df.columns, case_sensitive=False)
    if is_history_load(spec):
        df = reading[2].stage(df, "rows read", log)
    if plan.partitions > 1:
        how = dict(plan.options) or list(plan.predicates)
        log(f"reading the source over {plan.partitions} JDBC connections: {how}")
    elif plan.note:
        log(plan.note)
    key_range = None
    plain_merge = spec.load_strategy != "scd2" and spec.delete_detection == "none"
    if applied != "full" and spec.merge_keys and plain_merge:  # MERGE only the keys read
        df, key_range = with_key_range(df, spec.merge_keys[0], log, spec.incremental_column)
    view = f"dl_src_{uuid.uuid4().hex[:12]}"
    df.createOrReplaceTempView(view)
    return view, _fields(df.schema), key_range, plan


def _count(spark: Any, target: str, version: int | None) -> int | None:
    """The row count of ``target`` at ``version`` (Delta answers it from the log's statistics)."""
    if version is None:
        return None
    n = spark.sql(f"SELECT count(*) AS n FROM {target} VERSION AS OF {int(version)}").collect()
    return int(n[0]["n"])


def _result(
    spark, spec, target, applied, watermark, read, written, reconciled=None, notes=()
) -> Any:
    return LoadResult(
        notes=list(notes),
        rows_read=read,
        rows_written=written,
        watermark_before=spec.incremental_value,
        watermark_after=_watermark_after(spark, spec, target, watermark),
        applied_strategy=applied,
        destination=target,
        schema=_Schema(_fields(spark.table(target).schema)),
        row_count=int(spark.sql(f"SELECT count(*) AS n FROM {target}").collect()[0]["n"]),
        committed=reconciled is None,
        reconciled=reconciled,
    )


def _reconciled(spark, spec, target, applied, watermark, found, log) -> Any:
    """Nothing read: an earlier attempt's commit is reported for the asset to record."""
    log(
        f"attempt {found.metadata_id} committed destination version {found.version} but its "
        "success was never recorded; recording it instead of loading again"
    )
    return _result(spark, spec, target, applied, watermark, 0, 0, reconciled=found)
