"""The Spark engine's exactly-once parts on a local SparkSession (no Delta here: DESCRIBE HISTORY
rows are given as Databricks returns them; the key check and the commit metadata run on Spark).

Pins down: a keyed table's first load refuses NULL and duplicate keys (real Spark SQL over a
temp view); each write statement runs with userMetadata naming its attempt and the setting is
cleared afterwards; the newest DataLoader commit in a table's history is found among other
commits; an attempt the control database did not record is reported, a recorded one is not; a
commit by another attempt during the load stops this one (the stop signal's job tag:
test_spark_job_tags.py).
"""

from __future__ import annotations

import json
import shutil

import pytest

from databricks_scripts.contract import RECORDED_METADATA_ID_PARAM
from databricks_scripts.engines.spark.commits import (
    USER_METADATA_CONF,
    check_keys,
    check_still_current,
    commit_named,
    last_dataloader_commit,
    unrecorded,
    user_metadata,
)
from databricks_scripts.load.commits import StaleAttempt, UnrecordedCommit
from databricks_scripts.load.params import parse_load_spec


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("dataloader-tests")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark_warehouse")))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    yield session


def spec(metadata_id=7, recorded=5, **kw):
    params = {
        "config_id": 1,
        "control_key": "erp.orders",
        "metadata_id": metadata_id,
        "source_table_name": "src",
        "destination_catalog": "main",
        "destination_schema_name": "bronze",
        "destination_table_name": "orders",
        "db_type": "databricks",
        "load_strategy": "merge",
        "merge_keys": ["id"],
        RECORDED_METADATA_ID_PARAM: recorded,
    }
    params.update(kw)
    return parse_load_spec(params)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [([(1, "a"), (2, "b"), (2, "c")], "not unique"), ([(1, "a"), (None, "b")], "NULL")],
)
def test_first_load_key_check_refuses_bad_keys(spark, rows, expected):
    spark.createDataFrame(rows, "id int, v string").createOrReplaceTempView("keyed_src")
    with pytest.raises(ValueError, match=expected):
        check_keys(spark, "keyed_src", ["id"])
    spark.createDataFrame([(1, "a"), (2, "b")], "id int, v string").createOrReplaceTempView(
        "keyed_src"
    )
    check_keys(spark, "keyed_src", ["id"])  # set and unique: no error


def test_statements_carry_the_attempt_in_their_commit_metadata(spark):
    with commit_named(spark, spec(), "merge"):
        meta = json.loads(spark.conf.get(USER_METADATA_CONF))
    assert meta["dataloader.metadata_id"] == "7"
    assert meta["dataloader.control_key"] == "erp.orders"
    assert spark.conf.get(USER_METADATA_CONF, None) is None  # cleared after the statement


def history(*commits):
    """DESCRIBE HISTORY rows, newest first, as Databricks returns them."""
    return [{"version": v, "operation": op, "userMetadata": meta} for v, op, meta in commits]


def test_the_newest_dataloader_commit_is_found_among_other_commits():
    rows = history(
        (12, "OPTIMIZE", None),
        (11, "MERGE", user_metadata(spec(metadata_id=9), "merge")),
        (10, "WRITE", '{"someone": "else"}'),
        (9, "MERGE", user_metadata(spec(metadata_id=8), "merge")),
    )
    assert last_dataloader_commit(rows) == UnrecordedCommit(9, 11)
    assert last_dataloader_commit(history((3, "OPTIMIZE", None))) is None


def test_only_an_attempt_the_control_database_did_not_record_is_reconciled():
    last = UnrecordedCommit(6, 4)
    assert unrecorded(spec(metadata_id=7, recorded=5), last) == last  # 6 committed, 5 recorded
    assert unrecorded(spec(metadata_id=7, recorded=6), last) is None  # recorded
    assert unrecorded(spec(metadata_id=7, recorded=None), last) == last  # nothing recorded yet
    params = {k: v for k, v in spec().extra.items() if k != RECORDED_METADATA_ID_PARAM}
    assert unrecorded(parse_load_spec(params), last) is None  # an older orchestrator: no reconcile


def test_a_commit_by_another_attempt_during_the_load_stops_this_one():
    start = UnrecordedCommit(5, 3)
    check_still_current(spec(), start, start)  # nothing new
    with pytest.raises(StaleAttempt, match="attempt 8 .* committed nothing"):
        check_still_current(spec(), start, UnrecordedCommit(8, 4))
