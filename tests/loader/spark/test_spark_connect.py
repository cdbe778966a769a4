"""The Spark engine where Spark Connect differs from classic mode, on pyspark's own local Spark
Connect server (tests/spark_connect_server.py; what serverless compute and standard access mode
clusters give a script).

Executed here: the session has no ``sparkContext`` and no RDD API (so the engine uses neither);
the load's jobs carry a job tag (no job group) and a stop calls the interrupt by that tag; the
key-range MERGE's source holds to the rows its bounds came from without ``localCheckpoint``
(JDBC reads of the real PostgreSQL through the server); JDBC reads split over several connections
with the watermark filter; the session time zone set with ``spark.conf.set``; the table-existence
check, the look-back INSERT with named parameters, the watermark read-back and the key check on
Connect. Not executed here: anything that needs Delta (MERGE, DESCRIBE HISTORY, CTAS ``USING
DELTA``; its jars come from Maven, not reachable here; tests/loader/spark/test_spark_on_sail.py runs them on
Sail's Delta), and Databricks' own restrictions beyond Connect's (its list of settable Spark
confs: tests/loader/spark/test_serverless_rules.py).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import psycopg
import pytest
from spark_connect_server import PG_JARS, connect, connect_server, why_not
from test_spark_partitioned_reads import _items, _read, _rows, pg  # noqa: F401

from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.engines.spark.commits import cancellable, check_keys, tag_jobs
from databricks_scripts.engines.spark.merge import with_key_range
from databricks_scripts.failures import DataMismatch
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.load.sql import spark_append_new_rows

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)

_skip = why_not()
if _skip:
    pytest.skip(f"no local Spark Connect server: {_skip}", allow_module_level=True)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """One server and one Connect session for the module (the server takes ~15 s to start)."""
    saved = os.environ.get("SPARK_CONNECT_MODE_ENABLED")
    with connect_server(tmp_path_factory.mktemp("spark_connect")) as url:
        session = connect(url)
        try:
            yield session
        finally:
            session.stop()
            if saved is None:
                os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
            else:
                os.environ["SPARK_CONNECT_MODE_ENABLED"] = saved


@pytest.fixture
def jdbc(pg):  # noqa: F811
    if not PG_JARS:
        pytest.skip("no PostgreSQL JDBC driver jar in the local Maven repository (~/.m2)")
    return pg


def test_the_session_is_spark_connect_without_spark_context_or_rdd(spark):
    from pyspark.errors import PySparkAttributeError, PySparkNotImplementedError

    with pytest.raises(PySparkAttributeError, match="sparkContext"):
        spark.sparkContext  # noqa: B018
    with pytest.raises(PySparkNotImplementedError, match="rdd"):
        spark.range(1).rdd  # noqa: B018


def test_the_loads_jobs_carry_a_job_tag_that_a_stop_interrupts(spark):
    stop = StopSignal()  # not installed: tripped by hand, as the handler would
    with cancellable(spark, stop):
        [tag] = [t for t in spark.getTags() if t.startswith("dataloader-")]
        stop.trip(15)  # SIGTERM
        assert "committed nothing" in stop.finish_stop()  # the interrupt by tag ran
    assert tag not in spark.getTags()
    # The cancel is interruptTag with that tag (tag_jobs); a running job interrupted by its tag
    # is executed on a classic session (test_databricks_process.py): on this 2-core server an
    # interrupted range job's tasks kept both cores busy for the tests after it.
    cancel, remove = tag_jobs(spark, "dataloader-probe")
    assert cancel.__name__ == "interruptTag" and cancel("dataloader-probe") == []
    remove("dataloader-probe")


def _spec(config, **kw):
    params = {
        "source_schema_name": "public",
        "source_table_name": "items",
        "destination_catalog": "spark_catalog",
        "destination_schema_name": "default",
        "destination_table_name": "items",
        "db_type": "postgresql",
        "db_config_value": config,
        "load_strategy": "merge",
        "merge_keys": ["id"],
    }
    params.update(kw)
    return parse_load_spec(params)


@pytest.mark.parametrize("cursor", ["updated_at", None])
def test_the_key_range_merge_source_holds_to_the_rows_its_bounds_came_from(spark, jdbc, cursor):
    """Without a checkpoint the MERGE reads the source again: a key inserted since (outside the
    bounds, maybe in the target outside the pruned range) is left for the next load, and so is,
    with a cursor, a row changed since (its newer cursor is above the next watermark)."""
    conninfo, config = jdbc
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 5)
    logged: list[str] = []
    df = lsp.read_source(spark, _spec(config, incremental_column=cursor), None, None)
    merged, key_range = with_key_range(df, "id", logged.append, cursor)
    assert key_range == ("1", "5") and "merge restricted to id from 1 to 5" in logged
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (9, 'new', 9, 1, now())")
        conn.execute("UPDATE items SET code = 'changed', updated_at = now() WHERE id = 3")
    rows = {r["id"]: r["code"] for r in merged.collect()}
    if cursor:
        assert rows == {1: "c1", 2: "c2", 4: "c4", 5: "c5"}
    else:  # no cursor: every load reads everything, the changed row is simply its new version
        assert rows == {1: "c1", 2: "c2", 3: "changed", 4: "c4", 5: "c5"}


def test_a_jdbc_read_is_split_and_keeps_the_watermark_filter_on_connect(spark, jdbc):
    from pyspark.sql import functions as F

    conninfo, config = jdbc
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 1000)
    lower = T0 + dt.timedelta(minutes=400)
    kw = {"load_strategy": "incremental", "incremental_column": "updated_at"}
    df, plan = _read(spark, config, lower, **kw)
    assert plan.partitions == 4 and plan.options["partitionColumn"] == "updated_at"
    parts = df.select(F.spark_partition_id().alias("p")).distinct().count()
    assert parts == 4
    one, _ = _read(spark, config, lower, partitioning=None, **kw)
    assert _rows(df) == _rows(one) and len(_rows(df)) == 600


def test_the_engines_statements_run_on_connect(spark):
    """The parts of a load that need no Delta: the session time zone, the table check, the key
    check, the look-back INSERT with named parameters, the watermark read-back."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")  # what run_spark_load sets
    target = f"`spark_catalog`.`default`.`t_{uuid.uuid4().hex[:8]}`"
    assert not lsp.table_exists(spark, target)
    spark.sql(f"CREATE TABLE {target} (id INT, ts TIMESTAMP) USING PARQUET").collect()
    assert lsp.table_exists(spark, target)
    spark.sql(f"INSERT INTO {target} VALUES (1, TIMESTAMP'2024-01-02 00:00:00')").collect()
    rows = [(1, "2024-01-02 00:00:00"), (2, "2024-01-01 23:00:00"), (3, "2024-01-03 00:00:00")]
    source = spark.createDataFrame(rows, "id INT, ts STRING").selectExpr(
        "id", "CAST(ts AS TIMESTAMP) AS ts"
    )
    source.createOrReplaceTempView("connect_src")
    check_keys(spark, "connect_src", ["id"])
    spark.createDataFrame([(1,), (1,)], "id INT").createOrReplaceTempView("connect_dups")
    with pytest.raises(DataMismatch, match="not unique"):
        check_keys(spark, "connect_dups", ["id"])
    watermark = lsp.read_watermark(spark, target, "ts")
    assert watermark == dt.datetime(2024, 1, 2, tzinfo=UTC)
    statement = spark_append_new_rows(target, "connect_src", ["id", "ts"], "ts", with_lookback=True)
    lower = watermark - dt.timedelta(hours=2)
    args = {"watermark": lsp.spark_literal(watermark), "lower_bound": lsp.spark_literal(lower)}
    spark.sql(statement, args=args).collect()
    # 1 is loaded already (an identical row in the window), 2 is a late row, 3 is new.
    assert sorted(r["id"] for r in spark.table(target).collect()) == [1, 2, 3]
    assert lsp.read_watermark(spark, target, "ts") == dt.datetime(2024, 1, 3, tzinfo=UTC)
