"""Spark engine: the MERGE is restricted to the key range of the rows read (without a checkpoint:
the source then holds to those bounds; on Spark Connect with a changing source:
test_spark_connect.py)."""

from __future__ import annotations

import datetime as dt

from test_loader_spark import spark  # noqa: F401 - the session's local SparkSession

from databricks_scripts.engines.spark.merge import key_range_literal, with_key_range
from databricks_scripts.load.sql import spark_merge


def test_key_range_comes_from_the_rows_read(spark):  # noqa: F811
    logged: list[str] = []
    df = spark.createDataFrame([(5, "a"), (9, "b"), (7, "c")], "id bigint, v string")
    merged, key_range = with_key_range(df, "id", logged.append)
    assert key_range == ("5", "9")
    assert sorted(r["id"] for r in merged.collect()) == [5, 7, 9]
    text = spark_merge("cat.sch.t", "dl_src", ["id"], ["id", "v"], key_range)
    assert "ON t.`id` >= 5 AND t.`id` <= 9 AND t.`id` = s.`id` WHEN MATCHED" in text

    days = spark.createDataFrame([(dt.date(2024, 1, 2),), (dt.date(2024, 3, 1),)], "d date")
    assert with_key_range(days, "d", logged.append)[1] == ("DATE'2024-01-02'", "DATE'2024-03-01'")
    # Text keys: no range (their order in Delta statistics is not the comparison's).
    assert with_key_range(df, "v", logged.append)[1] is None


def test_key_range_literals_are_only_integers_and_dates():
    assert key_range_literal(12, "bigint") == "12"
    assert key_range_literal(True, "int") is None
    assert key_range_literal("1; DROP TABLE x", "int") is None
    assert key_range_literal(dt.date(2024, 1, 1), "date") == "DATE'2024-01-01'"
    assert key_range_literal(None, "int") is None
