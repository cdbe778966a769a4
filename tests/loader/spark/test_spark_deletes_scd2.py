"""The Spark engine's delete-detection and SCD2 statements on a local SparkSession.

No Delta Lake here (its jars are not installable offline), so the MERGE itself cannot execute
locally. What runs on Spark: the MERGE's staged source (the USING query) and the floor query over
real tables, compared with the rows each MERGE clause must see; and each MERGE statement is
parsed and analysed by Spark (every column it names resolves) up to the point where plain Spark
says the table is not a Delta table.
"""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from databricks_scripts.contract import DELETED_AT, END_AT, START_AT
from databricks_scripts.engines.spark import history as sh
from databricks_scripts.load.params import parse_load_spec

UTC = dt.UTC
LOAD_TS = sh.timestamp_literal(dt.datetime(2024, 2, 1, 12, tzinfo=UTC))


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("dataloader-history-tests")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("wh")))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def tables(spark):
    """Destination (an scd2 table with history), rows read, and the source's key snapshot."""
    spark.sql("DROP TABLE IF EXISTS dim")
    spark.sql(
        f"CREATE TABLE dim (id INT, v STRING, n INT, ts TIMESTAMP, `{START_AT}` TIMESTAMP, "
        f"`{END_AT}` TIMESTAMP, `{DELETED_AT}` TIMESTAMP) USING parquet"
    )
    spark.sql(
        "INSERT INTO dim VALUES "
        "(1, 'a', NULL, TIMESTAMP'2024-01-01 00:00:00', TIMESTAMP'2024-01-01 00:00:00', NULL, NULL),"
        "(2, 'old', 2, TIMESTAMP'2023-12-01 00:00:00', TIMESTAMP'2023-12-01 00:00:00',"
        " TIMESTAMP'2024-01-01 00:00:00', NULL),"
        "(2, 'b', 2, TIMESTAMP'2024-01-01 00:00:00', TIMESTAMP'2024-01-01 00:00:00', NULL, NULL),"
        "(3, 'c', 3, TIMESTAMP'2024-01-01 00:00:00', TIMESTAMP'2024-01-01 00:00:00', NULL, NULL),"
        "(4, 'd', 4, TIMESTAMP'2024-01-01 00:00:00', TIMESTAMP'2024-01-01 00:00:00', NULL, NULL)"
    )
    # Read (1 through the look-back): 1 unchanged (NULL = NULL), 2 changed to NULL, 5 new.
    spark.createDataFrame(
        [
            (1, "a", None, dt.datetime(2024, 1, 1, tzinfo=UTC)),
            (2, "b", None, dt.datetime(2024, 1, 3, tzinfo=UTC)),
            (5, "e", 5, None),
        ],
        "id INT, v STRING, n INT, ts TIMESTAMP",
    ).createOrReplaceTempView("rows_read")
    # The source now has 1, 2, 3 and 5: 4 is gone, 3 was not read.
    spark.createDataFrame([(1,), (2,), (3,), (5,)], "id INT").createOrReplaceTempView("src_keys")
    return "dim"


COLUMNS = ["id", "v", "n", "ts"]


def test_scd2_staged_source_closes_changed_adds_versions_and_keeps_unread_keys(spark, tables):
    start = sh.start_expression("ts", "timestamp", LOAD_TS, "s")
    query = sh.scd2_source(tables, "rows_read", "src_keys", ["id"], COLUMNS, start)
    rows = {
        (r[f"{sh.MERGE_KEY}id"], r["id"], r[START_AT], r[sh.KEY_ONLY])
        for r in spark.sql(query).collect()
    }
    day = lambda d: dt.datetime(2024, 1, d)
    load = dt.datetime(2024, 2, 1, 12)
    assert rows == {
        (1, 1, day(1), False),  # matches its current version, equal: no clause applies
        (2, 2, day(3), False),  # matches, n differs (2 vs NULL): closes it at 2024-01-03
        (None, 2, day(3), False),  # never matches: the new version of 2
        (5, 5, load, False),  # a new key (NULL cursor: the load's time) is inserted
        (3, None, None, True),  # read nowhere but still in the source: kept matched
    }
    # Key 4 is in no staged row: NOT MATCHED BY SOURCE closes its current version (soft: marks).


def test_deletes_staged_source_and_floor_count(spark, tables):
    rows = spark.sql(sh.deletes_source("rows_read", "src_keys", ["id"], COLUMNS)).collect()
    assert sorted((r["id"], r["v"], r[sh.KEY_ONLY]) for r in rows) == [
        (1, "a", False),
        (2, "b", False),
        (3, None, True),
        (5, "e", False),
    ]
    live = sh.live_condition(scd2=True, soft=True)
    row = spark.sql(sh.floor_query(tables, "rows_read", "src_keys", ["id"], live)).collect()[0]
    assert (row["live"], row["gone"]) == (4, 1)  # current versions; 4 would be closed
    spec = parse_load_spec(_params(delete_max_fraction=0.2))
    with pytest.raises(ValueError, match="would delete 1 of the destination's 4 live rows"):
        sh.check_floor(spec, int(row["gone"]), int(row["live"]))


def _params(**kw):
    params = {
        "source_table_name": "src",
        "destination_catalog": "spark_catalog",
        "destination_schema_name": "default",
        "destination_table_name": "dim",
        "db_type": "databricks",
        "load_strategy": "scd2",
        "incremental_column": "ts",
        "merge_keys": ["id"],
        "delete_detection": "soft",
    }
    params.update(kw)
    return params


def _analysed_until_delta_is_needed(spark, statement):
    """Run ``statement``: every name must resolve; plain Spark then refuses the MERGE itself."""
    with pytest.raises(Exception) as raised:
        spark.sql(statement).collect()
    text = str(raised.value)
    # Analysis passed (a wrong name fails with UNRESOLVED_COLUMN first); only Delta is missing
    # (Spark 4's planner says "does not support", Spark 3.5's "not supported temporarily").
    refused = ("does not support MERGE INTO TABLE", "MERGE INTO TABLE is not supported temporarily")
    assert any(words in text for words in refused), text


@pytest.mark.parametrize("soft", [True, False])
def test_generated_merges_parse_and_resolve(spark, tables, soft):
    start = sh.start_expression("ts", "timestamp", LOAD_TS, "s")
    scd2 = sh.scd2_merge(
        tables, "rows_read", "src_keys", ["id"], COLUMNS, start=start, soft=soft, load_ts=LOAD_TS
    )
    assert "WHEN NOT MATCHED BY SOURCE AND t.`__END_AT` IS NULL" in scd2
    _analysed_until_delta_is_needed(spark, scd2)
    deletes = sh.deletes_merge(
        tables, "rows_read", "src_keys", ["id"], COLUMNS, soft=soft, load_ts=LOAD_TS
    )
    assert ("THEN UPDATE SET t.`__DELETED_AT` = " if soft else "THEN DELETE") in deletes
    _analysed_until_delta_is_needed(spark, deletes)


def test_history_statement_reads_keys_checks_the_floor_and_refuses_a_key_type_change(spark, tables):
    fields = [("id", "int"), ("v", "string"), ("n", "int"), ("ts", "timestamp")]
    target_fields = [
        *fields,
        (START_AT, "timestamp"),
        (END_AT, "timestamp"),
        (DELETED_AT, "timestamp"),
    ]
    logged = []

    def statement(fraction, source_fields=fields):
        where = ["reconcile schema"]
        spec = parse_load_spec(_params(delete_max_fraction=fraction))
        try:
            return sh.history_statement(
                spark,
                spec,
                None,
                tables,
                "rows_read",
                source_fields,
                target_fields,
                True,
                "scd2",
                where,
                lambda: spark.table("src_keys"),
                logged.append,
            ), where
        except ValueError as exc:
            return exc, where

    write, where = statement(0.5)
    text = write.text
    assert write.kind == "merge" and text.startswith(f"MERGE INTO {tables} AS t USING (")
    assert "src_keys" not in text  # the key snapshot became a temp view of its own
    assert where == ["write destination"]
    refused, where = statement(0.2)  # 1 of 4 current versions would be closed: 25% > 20%
    assert where == ["check deletes"] and "more than delete_max_fraction 0.2" in str(refused)
    changed = [("id", "bigint"), *fields[1:]]
    refused, _ = statement(0.5, changed)
    assert "merge key 'id' changed type: int in the destination, bigint in the source" in str(
        refused
    )
