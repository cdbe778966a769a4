"""A source read through Unity Catalog (Lakehouse Federation, sql/019), executed on Sail.

A source_connection's ``foreign_catalog`` names the Unity Catalog foreign catalog that mirrors its
database. The row keeps its own db_type (here postgresql): on Databricks the Spark engine reads
``<foreign_catalog>.<schema>.<table>`` with ``spark.read.table`` instead of opening a JDBC
connection, which is how serverless compute reaches a database outside Databricks, and the job
resolves no password. Sail has no JDBC source at all, so a load that tried JDBC fails here: each
load below reads the Sail catalog that stands in for the foreign catalog (``spark_catalog``,
schema ``default``) and is compared with the Arrow engine's direct read of the same PostgreSQL rows
(``test_spark_on_sail.Both``). Lakehouse Federation itself (the query pushed down to the
database) is Databricks' and is not executed here.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip(
    "pysail", reason="no pysail wheel for this platform: the Spark engine cannot run on Sail here"
)
from test_spark_on_sail import COLUMNS, Both, _seed, _values, sail, t  # noqa: F401

from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.load.params import parse_load_spec


class Federated(Both):
    """The Spark engine's row is the PostgreSQL row itself, its connection naming a foreign
    catalog; the Arrow engine reads PostgreSQL directly, as a local load does."""

    def _run_spark(self, common: dict) -> Any:
        self._copy_to_sail()
        config = {**common["db_config_value"], "foreign_catalog": "spark_catalog"}
        spec = parse_load_spec(
            {
                **common,
                "incremental_value": self.watermark["spark"],
                "db_config_value": config,
                "source_schema_name": "default",  # the foreign catalog's schema of the table
                "destination_catalog": "spark_catalog",
                "destination_schema_name": "default",
                "destination_table_name": f"dst_{self.tag}",
            }
        )
        assert spec.db_type == "postgresql"
        assert spec.foreign_table == ("spark_catalog", "default", self.table)
        try:
            return lsp.run_spark_load(
                spec, None, log=self.logged.append, spark=self.sail, **self.spark_options
            )
        except la.LoadStepError as exc:
            return exc


def test_a_foreign_table_loads_like_a_direct_read(source_db, sail, tmp_path):  # noqa: F811
    both = Federated(
        source_db,
        sail,
        tmp_path,
        COLUMNS,
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column="ts",
    )
    _seed(both)
    both.check(*both.load())
    both.sql(f"UPDATE {both.table} SET v = 'A', ts = %s WHERE id = 1", (t(5),))
    both.sql(f"INSERT INTO {both.table} VALUES (10,'j',NULL,%s)", (t(6),))
    rows = both.check(*both.load())
    assert {(1, "A"), (2, "b"), (10, "j")} <= set(_values(rows, "id", "v"))
    # Read from the foreign table above the watermark; no JDBC connection was opened (Sail has
    # no JDBC source: the load would have failed at "read source").
    assert not any("JDBC" in line for line in both.logged), both.logged


def test_a_foreign_table_is_read_without_a_split(source_db, sail, tmp_path):  # noqa: F811
    # A JDBC split (jdbc_num_partitions) is meaningless through Unity Catalog: one read, no probe.
    both = Federated(source_db, sail, tmp_path, COLUMNS, jdbc_num_partitions=4)
    both.spark_options = {"partitioning": (1, 8)}
    _seed(both)
    both.check(*both.load())
    assert not any("JDBC connections" in line for line in both.logged), both.logged
