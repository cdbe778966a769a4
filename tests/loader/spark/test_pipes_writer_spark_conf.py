"""The DBFS message writer never stops a load over the cluster-log lookup (issue 12, item 5).

dagster-pipes' ``PipesDbfsMessageWriter.get_opened_extras`` catches only ``Py4JJavaError``; a
Spark Connect session (Standard access mode) or a missing ``clusterUsageTags`` key raises other
exceptions. Shown on a real local SparkSession, where reading the missing Databricks conf key raises
``SparkNoSuchElementException``."""

import shutil

import pytest
from dagster_pipes import PipesDbfsMessageWriter

from databricks_scripts.pipes_io import DbfsMessageWriter


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("dataloader-pipes-writer")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_upstream_writer_raises_on_a_conf_error_that_is_not_py4j(spark):
    with pytest.raises(Exception) as raised:
        PipesDbfsMessageWriter().get_opened_extras()
    assert "clusterLogDeliveryEnabled" in str(raised.value)


def test_our_writer_reports_no_log_extras_and_says_why(spark, capsys):
    assert DbfsMessageWriter("/dbfs").get_opened_extras() == {}
    assert "driver log forwarding disabled" in capsys.readouterr().err


def test_with_log_delivery_configured_the_location_is_still_reported(spark):
    conf = {
        "spark.databricks.clusterUsageTags.clusterLogDeliveryEnabled": "true",
        "spark.databricks.clusterUsageTags.clusterLogDestination": "dbfs:/cluster-logs",
        "spark.databricks.clusterUsageTags.clusterId": "0101-000000-abc",
    }
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        assert DbfsMessageWriter("/dbfs").get_opened_extras() == {
            "cluster_driver_log_root": "dbfs:/cluster-logs/0101-000000-abc/driver"
        }
    finally:
        for key in conf:
            spark.conf.unset(key)
