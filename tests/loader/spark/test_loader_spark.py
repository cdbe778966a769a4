"""Spark engine parts that run without Delta: JDBC options, pushed-down watermark filter, schema
evolution and the look-back INSERT statement, on a local SparkSession."""

import datetime as dt
import decimal
import shutil

import pytest

from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.load import sql as sq
from databricks_scripts.load.params import parse_load_spec

UTC = dt.UTC


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    from pyspark.sql import SparkSession

    warehouse = tmp_path_factory.mktemp("spark_warehouse")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("dataloader-tests")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


def _spec(**kw):
    params = {
        "source_catalog": "spark_catalog",
        "source_schema_name": "default",
        "source_table_name": "src",
        "destination_catalog": "spark_catalog",
        "destination_schema_name": "default",
        "destination_table_name": "dst",
        "db_type": "databricks",
        "db_config_value": {},
        "load_strategy": "incremental",
        "incremental_column": "ts",
    }
    params.update(kw)
    return parse_load_spec(params)


def test_jdbc_options_keep_the_password_out_of_the_url():
    spec = _spec(
        db_type="postgresql",
        source_schema_name='sa"les',
        source_table_name="orders",
        db_config_value={
            "host": "db",
            "port": 5432,
            "database": "erp",
            "user": "u",
            "password_secret": "k",
        },
        db_kv_scope="s",
    )
    opts = lsp.jdbc_options(spec, "pw")
    assert opts["url"] == "jdbc:postgresql://db:5432/erp"
    assert opts["dbtable"] == '"sa""les"."orders"'
    assert opts["password"] == "pw" and "pw" not in opts["url"]
    sqlserver = lsp.jdbc_options(
        _spec(
            db_type="sqlserver",
            source_catalog="erp",
            source_schema_name="dbo",
            db_config_value={"host": "h", "database": "erp", "user": "u"},
        ),
        None,
    )
    assert sqlserver["url"].startswith("jdbc:sqlserver://h:1433;databaseName=erp")
    assert sqlserver["dbtable"] == "[erp].[dbo].[orders]".replace("orders", "src")
    assert "password" not in sqlserver


def test_schema_changes_add_widen_or_name_the_column():
    added, problems = lsp.spark_schema_changes(
        [("id", "int"), ("Amount", "decimal(12,2)"), ("tier", "string")],
        [("id", "bigint"), ("amount", "decimal(12,2)")],
    )
    assert added == [("tier", "string")] and problems == []
    _, problems = lsp.spark_schema_changes([("amount", "string")], [("amount", "decimal(12,2)")])
    assert problems and "'amount'" in problems[0]


def test_watermark_filter_is_pushed_down_and_types_survive(spark, tmp_path):
    spark.sql("DROP TABLE IF EXISTS src")
    spark.sql(
        "CREATE TABLE src (id INT, amount DECIMAL(12,2), ts TIMESTAMP, local_ts TIMESTAMP_NTZ) "
        "USING parquet"
    )
    spark.sql(
        "INSERT INTO src VALUES "
        "(1, 10.10, TIMESTAMP'2024-01-01 00:00:00.000001', TIMESTAMP_NTZ'2024-01-01 01:00:00'),"
        "(2, 20.20, TIMESTAMP'2024-01-02 00:00:00', TIMESTAMP_NTZ'2024-01-02 01:00:00'),"
        "(3, NULL, NULL, NULL)"
    )
    lower = dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    df = lsp.read_source(spark, _spec(), None, lower)
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert "PushedFilters: [IsNotNull(ts), GreaterThan(ts," in plan
    rows = df.collect()
    assert [r["id"] for r in rows] == [2]
    assert rows[0]["amount"] == decimal.Decimal("20.20")
    types = dict(lsp._fields(df.schema))
    assert types == {
        "id": "int",
        "amount": "decimal(12,2)",
        "ts": "timestamp",
        "local_ts": "timestamp_ntz",
    }


def test_schema_evolution_and_lookback_insert_run_on_spark(spark):
    spark.sql("DROP TABLE IF EXISTS dst")
    spark.sql("CREATE TABLE dst (id INT, ts TIMESTAMP) USING parquet")
    spark.sql(
        "INSERT INTO dst VALUES (1, TIMESTAMP'2024-01-01 10:00:00'),"
        " (2, TIMESTAMP'2024-01-01 11:00:00')"
    )
    src = spark.sql(
        "SELECT * FROM VALUES (2, TIMESTAMP'2024-01-01 11:00:00', 'x'),"
        " (4, TIMESTAMP'2024-01-01 10:30:00', 'late'), (5, TIMESTAMP'2024-01-01 12:00:00', 'new')"
        " AS v(id, ts, tag)"
    )
    src.createOrReplaceTempView("dl_src_test")
    target = sq.spark_table("spark_catalog", "default", "dst")
    added, problems = lsp.spark_schema_changes(
        lsp._fields(src.schema), lsp._fields(spark.table(target).schema)
    )
    assert added == [("tag", "string")] and not problems
    spark.sql(sq.spark_add_columns(target, added))
    watermark = dt.datetime(2024, 1, 1, 11, tzinfo=UTC)
    statement = sq.spark_append_new_rows(
        target, "dl_src_test", ["id", "ts", "tag"], "ts", with_lookback=True
    )
    spark.sql(
        statement, args={"watermark": watermark, "lower_bound": watermark - dt.timedelta(hours=1)}
    )
    rows = sorted(
        ((r["id"], r["tag"]) for r in spark.table(target).collect()),
        key=lambda r: (r[0], r[1] or ""),
    )
    # Row 2 differs only in the new column, so it counts as a different row and is appended.
    assert rows == [(1, None), (2, None), (2, "x"), (4, "late"), (5, "new")]
    spark.sql(
        statement,
        args={
            "watermark": dt.datetime(2024, 1, 1, 12, tzinfo=UTC),
            "lower_bound": dt.datetime(2024, 1, 1, 10, tzinfo=UTC),
        },
    )
    again = sorted(
        ((r["id"], r["tag"]) for r in spark.table(target).collect()),
        key=lambda r: (r[0], r[1] or ""),
    )
    assert again == rows  # every row of the window already present: nothing inserted twice


@pytest.fixture
def driver_tz_not_utc(monkeypatch):
    """The driver's Python time zone differs from the session's UTC (PySpark uses the former)."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_table_exists_takes_the_quoted_multi_part_name(spark):
    spark.range(1).createOrReplaceTempView("`we ird.name`")
    assert lsp.table_exists(spark, sq.spark_table(None, None, "we ird.name"))
    assert not lsp.table_exists(spark, sq.spark_table("spark_catalog", "default", "no such"))


def test_ntz_watermark_filter_and_lookback_args_do_not_shift_with_the_driver_tz(
    spark, driver_tz_not_utc
):
    spark.sql("DROP TABLE IF EXISTS src")
    spark.sql("CREATE TABLE src (id INT, ts TIMESTAMP_NTZ) USING parquet")
    spark.sql(
        "INSERT INTO src VALUES (1, TIMESTAMP_NTZ'2024-01-01 10:00:00'),"
        " (2, TIMESTAMP_NTZ'2024-01-01 10:00:00.000001'), (3, TIMESTAMP_NTZ'2024-01-01 12:00:00')"
    )
    lower = dt.datetime(2024, 1, 1, 10)  # naive: the cursor is TIMESTAMP_NTZ
    df = lsp.read_source(spark, _spec(), None, lower)
    assert sorted(r["id"] for r in df.collect()) == [2, 3]

    spark.sql("DROP TABLE IF EXISTS dst")
    spark.sql("CREATE TABLE dst (id INT, ts TIMESTAMP_NTZ) USING parquet")
    spark.sql("INSERT INTO dst VALUES (2, TIMESTAMP_NTZ'2024-01-01 10:00:00.000001')")
    df.createOrReplaceTempView("dl_src_ntz")  # the filtered read, as run_spark_load makes it
    statement = sq.spark_append_new_rows(
        sq.spark_table("spark_catalog", "default", "dst"),
        "dl_src_ntz",
        ["id", "ts"],
        "ts",
        with_lookback=True,
    )
    watermark = dt.datetime(2024, 1, 1, 11)
    spark.sql(
        statement,
        args={"watermark": lsp.spark_literal(watermark), "lower_bound": lsp.spark_literal(lower)},
    )
    # 2 is in the window (10:00, 11:00] and already there; 3 is above the watermark.
    assert sorted(r["id"] for r in spark.table("dst").collect()) == [2, 3]


def test_watermark_is_read_back_exactly_whatever_the_driver_tz(spark, driver_tz_not_utc):
    target = sq.spark_table("spark_catalog", "default", "wm")
    spark.sql(f"DROP TABLE IF EXISTS {target}")
    spark.sql(
        f"CREATE TABLE {target} (ts TIMESTAMP, local_ts TIMESTAMP_NTZ, n DECIMAL(20,0))"
        " USING PARQUET"  # Spark 3.5 makes a Hive table without USING
    )
    assert lsp.read_watermark(spark, target, "ts") is None
    spark.sql(
        f"INSERT INTO {target} VALUES (TIMESTAMP'2024-03-10 06:59:59.999999', "
        "TIMESTAMP_NTZ'2024-03-10 02:30:00.000001', 12345678901234567890)"
    )
    assert lsp.read_watermark(spark, target, "ts") == dt.datetime(
        2024, 3, 10, 6, 59, 59, 999999, tzinfo=UTC
    )
    assert lsp.read_watermark(spark, target, "LOCAL_TS") == dt.datetime(2024, 3, 10, 2, 30, 0, 1)
    assert lsp.read_watermark(spark, target, "n") == decimal.Decimal(12345678901234567890)


def test_commit_counts_use_the_merge_metrics_for_a_merge():
    merge = {
        "numSourceRows": "3",
        "numTargetRowsInserted": "1",
        "numTargetRowsUpdated": "2",
        "numTargetRowsCopied": "997",
        "numOutputRows": "1000",  # every row of the rewritten files, copies included
    }
    assert lsp.commit_counts("MERGE", merge) == (3, 3)
    assert lsp.commit_counts("WRITE", {"numOutputRows": "5", "numFiles": "1"}) == (5, 5)
    assert lsp.commit_counts("CREATE OR REPLACE TABLE AS SELECT", {"numOutputRows": "7"}) == (7, 7)
    assert lsp.commit_counts("WRITE", {}) == (0, 0)  # an empty append: nothing written
