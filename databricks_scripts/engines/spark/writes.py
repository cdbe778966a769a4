"""The Spark engine's one write per load, and how it commits (engines.spark.commits).

Every write but the MERGE is a DataFrame write (``DataFrameWriterV2``, ``df.writeTo(target)``) of
a SELECT's rows, with this attempt's writer options (``userMetadata``, ``txnAppId``,
``txnVersion``): ``create`` (a first load: ``CREATE TABLE AS SELECT`` in the history), ``replace``
(a forced rebuild, ``CREATE OR REPLACE TABLE AS SELECT``), ``overwrite`` (a full load into the
table, ``WRITE``: the table, its grants and properties stay), ``append`` (``WRITE``). A ``merge``
is a SQL ``MERGE INTO``, which takes no writer options: on classic compute it runs with the same
values as the SQL configurations Databricks documents, for that statement only (``commit_named``);
on serverless, which lets a job set none of them, it runs with no configuration and is followed by
the marker commit that names it (``mark_merge``: an empty append with the writer options).

A created table gets column mapping (``delta.columnMapping.mode = 'name'``) when a column name
needs it: Delta refuses a name with a space or one of ``,;{}()=`` (and newline, tab) in a table
without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from databricks_scripts.engines.spark.commits import commit_named, mark_merge, write_options
from databricks_scripts.load.columns import COLUMN_MAPPING_MODE, needs_column_mapping
from databricks_scripts.load.params import LoadSpec

CREATE, REPLACE, OVERWRITE, APPEND, MERGE = "create", "replace", "overwrite", "append", "merge"


def table_properties(names: Sequence[str]) -> dict[str, str]:
    """The properties a table created with these columns needs (the Arrow engine's rule,
    load.columns.needs_column_mapping)."""
    return {COLUMN_MAPPING_MODE: "name"} if needs_column_mapping(names) else {}


@dataclass(frozen=True)
class SparkWrite:
    """One write: ``query`` is the SELECT whose rows are written, or the MERGE statement."""

    kind: str
    target: str
    query: str
    args: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)  # of a created table

    @property
    def text(self) -> str:
        """The write as the SQL statement it stands for (the log line; the history operation
        ``engines.spark.engine.write_operation`` reads from it)."""
        if self.kind == MERGE:
            return self.query
        if self.kind in (CREATE, REPLACE):
            verb = "CREATE OR REPLACE TABLE" if self.kind == REPLACE else "CREATE TABLE"
            props = ", ".join(f"'{k}' = '{v}'" for k, v in sorted(self.properties.items()))
            return (
                f"{verb} {self.target} USING DELTA"
                + (f" TBLPROPERTIES ({props})" if props else "")
                + f" AS {self.query}"
            )
        verb = "INSERT OVERWRITE TABLE" if self.kind == OVERWRITE else "INSERT INTO"
        return f"{verb} {self.target} {self.query}"


def created(target: str, query: str, columns: Sequence[str], *, replace: bool) -> SparkWrite:
    """A first load (or a forced rebuild) of ``columns``, column mapping when they need it."""
    kind = REPLACE if replace else CREATE
    return SparkWrite(kind, target, query, properties=table_properties(columns))


def run_write(
    spark: Any,
    write: SparkWrite,
    spec: LoadSpec,
    strategy: str,
    *,
    marker: bool = False,
    committed: Callable[[], None] = lambda: None,
) -> list[Any]:
    """Run ``write`` naming this attempt; the statement's result rows (a MERGE's metrics).

    ``marker`` (serverless): a MERGE sets no Spark configuration; the marker commit after it
    names it (``mark_merge``). Every other write is the same DataFrame write either way.
    ``committed()`` is called once the data's commit is made (the stop signal counts it, so a stop
    after it no longer says "committed nothing"; for the serverless MERGE, before its marker).
    """
    if write.kind == MERGE and marker:
        rows = spark.sql(write.query).collect()
        committed()
        try:
            mark_merge(spark, write.target, spec, strategy)
        except Exception as exc:
            raise RuntimeError(
                "the MERGE committed, but the marker commit naming it failed "
                f"({type(exc).__name__}: {exc}); the row's next load upserts the same rows again"
            ) from exc
        return rows
    if write.kind == MERGE:
        with commit_named(spark, spec, strategy):
            rows = spark.sql(write.query).collect()
        committed()
        return rows
    rows = spark.sql(write.query, args=dict(write.args)) if write.args else spark.sql(write.query)
    writer = rows.writeTo(write.target).options(**write_options(spec, strategy))
    if write.kind in (CREATE, REPLACE):
        writer = writer.using("delta")
        for name, value in write.properties.items():
            writer = writer.tableProperty(name, value)
        (writer.createOrReplace if write.kind == REPLACE else writer.create)()
    elif write.kind == OVERWRITE:
        from pyspark.sql import functions as F

        writer.overwrite(F.lit(True))
    elif write.kind == APPEND:
        writer.append()
    else:
        raise ValueError(f"unknown write kind {write.kind!r}")
    committed()
    return []
