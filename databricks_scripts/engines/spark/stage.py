"""One snapshot per load: the source rows of a delete-detecting or scd2 load, staged once.

A Spark DataFrame over a JDBC source is a query, run again by every action on it: the key check,
the floor query and the MERGE would each read the source anew, each a different snapshot, so the
floor would be counted on other rows than the MERGE applies. Such a load therefore writes what it
read into a staging Delta table first (one read of the source) and runs the key check, the floor
and the MERGE on the staged rows. A staged table is valid on every compute, Spark Connect
(serverless, standard access mode) included, where ``localCheckpoint`` and the RDD API are not,
and where ``cache`` / ``persist`` are not available or only a hint that a later action may
re-read the source anyway.

The staging tables sit beside the destination (``<table>__dl_stage_<hex>``, same catalog and
schema: the load can create tables there) and are dropped when the load ends, whatever happens.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from databricks_scripts.engines.spark.writes import table_properties
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import spark_table

STAGE_MARK = "__dl_stage_"


def is_history_load(spec: LoadSpec) -> bool:
    """Delete detection or scd2: the loads whose checks and MERGE must see one snapshot."""
    return spec.load_strategy == "scd2" or spec.delete_detection != "none"


class Stages:
    """The staging tables of one load."""

    def __init__(self, spark: Any, spec: LoadSpec):
        self._spark, self._spec = spark, spec
        self.names: list[str] = []

    def stage(self, df: Any, what: str, log: Callable[[str], None]) -> Any:
        """``df``'s rows written once into a staging Delta table; that table as a DataFrame."""
        spec = self._spec
        name = spark_table(
            spec.destination_catalog,
            spec.destination_schema_name,
            f"{spec.destination_table_name}{STAGE_MARK}{uuid.uuid4().hex[:12]}",
        )
        writer = df.writeTo(name).using("delta")
        for key, value in table_properties(df.columns).items():
            writer = writer.tableProperty(key, value)
        self.names.append(name)
        writer.create()
        log(f"staged the {what} in {name} (one read of the source)")
        return self._spark.table(name)

    def drop_all(self) -> None:
        """Drop every staging table; a drop that fails (the session is gone) does not hide the
        load's own outcome: the table keeps its ``__dl_stage_`` name for a later cleanup."""
        for name in reversed(self.names):
            try:
                self._spark.sql(f"DROP TABLE IF EXISTS {name}").collect()
            except Exception:  # noqa: BLE001, S110 - best effort, see above
                pass
        self.names.clear()


@contextmanager
def staging(spark: Any, spec: LoadSpec) -> Iterator[Stages]:
    stages = Stages(spark, spec)
    try:
        yield stages
    finally:
        stages.drop_all()
