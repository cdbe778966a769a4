"""One snapshot per load on the Spark engine, executed on Sail, counting the source's reads in
PostgreSQL.

The Spark engine's source here is the real PostgreSQL table, read through a Python data source
on Sail (Sail has no JDBC source): like a JDBC DataFrame, every action on it runs its query on
PostgreSQL again, and each run takes ``nextval`` of a sequence in the source database first, so
the sequence counts the source's reads. A delete-detecting or scd2 load stages what it read
(engines.spark.stage) and runs the key check, the floor query and the MERGE on the staged rows:
one read of the rows, plus one read of the key columns when the load read only the rows above
its watermark. Before staging, every one of those statements read the source again (a different
snapshot each time). Each load is compared with the Arrow engine's on the same rows (``Both``).
"""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip(
    "pysail", reason="no pysail wheel for this platform: the Spark engine cannot run on Sail here"
)
pytest.importorskip(
    "pyspark.sql.datasource",
    reason="Python data sources (the counting source these tests read) are Spark 4 and later; "
    "under pyspark 3.5 (make test-spark35) the one-snapshot rule is not executed",
)
from pyspark.sql.datasource import DataSource, DataSourceReader
from sail_spark import SailSession
from test_spark_on_sail import COLUMNS, SPARK_TYPES, Both, _seed, sail, t  # noqa: F401

from databricks_scripts.contract import END_AT
from databricks_scripts.engines.spark.stage import STAGE_MARK


class _CountedReader(DataSourceReader):
    def __init__(self, options: dict):
        self.options = options

    def read(self, partition):
        """The table's rows now (DECIMAL and TIMESTAMP as text: Sail's Python source path takes
        neither; the session casts them back)."""

        import psycopg

        with psycopg.connect(self.options["conninfo"], autocommit=True) as conn:
            conn.execute(f"SELECT nextval('{self.options['counter']}')")
            rows = conn.execute(self.options["query"]).fetchall()
        for row in rows:
            yield tuple(_spark_value(v) for v in row)


def _spark_value(v):
    import decimal

    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")  # a PostgreSQL timestamp: read in the UTC session
    return str(v) if isinstance(v, decimal.Decimal) else v


class CountedPostgres(DataSource):
    """A PostgreSQL table as a Spark source; every read bumps the counter sequence."""

    @classmethod
    def name(cls) -> str:
        return "dl_counted_postgres"

    def schema(self) -> str:
        return self.options["schema"]

    def reader(self, schema):
        return _CountedReader(dict(self.options))


class _Read:
    def __init__(self, session: CountedSession):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session._spark.read, name)

    def table(self, name: str):
        if name != self._session.source:
            return self._session._spark.read.table(name)
        from pyspark.sql import functions as F

        opts = self._session.options
        df = self._session._spark.read.format("dl_counted_postgres").options(**opts).load()
        return df.select(*[F.col(n).cast(ty).alias(n) for n, ty in self._session.types])


def _read_type(pg_type: str) -> str:
    return "STRING" if pg_type.startswith(("numeric", "timestamp")) else SPARK_TYPES[pg_type]


class CountedSession(SailSession):
    """The Sail session whose source table is the PostgreSQL table itself, read counted."""

    def __init__(self, base: SailSession, both: Both):
        super().__init__(base._spark)
        self._named, self.answered = base._named, base.answered
        self.source = both.spark_source
        names = ", ".join(f'"{n}"' for n, _ in both.columns)
        self.options = {
            "conninfo": both.conninfo,
            "counter": f"reads_{both.tag}",
            "query": f"SELECT {names} FROM {both.table}",
            "schema": ", ".join(f"`{n}` {_read_type(ty)}" for n, ty in both.columns),
        }
        self.types = [(n, SPARK_TYPES[ty]) for n, ty in both.columns]
        base._spark.dataSource.register(CountedPostgres)

    @property
    def read(self):
        return _Read(self)


def _counted(source_db, sail, tmp_path, **params) -> Both:  # noqa: F811
    both = Both(source_db, sail, tmp_path, COLUMNS, **params)
    both.sql(f"CREATE SEQUENCE reads_{both.tag}")
    both.sail = CountedSession(sail, both)
    _seed(both)
    return both


def _reads_during(both: Both) -> int:
    """Source reads of the Spark engine's load (both engines load; only Spark's are counted)."""
    before = both.sql(f"SELECT last_value, is_called FROM reads_{both.tag}")[0]
    both.check(*both.load())
    after = both.sql(f"SELECT last_value, is_called FROM reads_{both.tag}")[0]
    return (after[0] if after[1] else 0) - (before[0] if before[1] else 0)


def test_scd2_reads_the_source_once_per_load(source_db, sail, tmp_path):  # noqa: F811
    both = _counted(
        source_db,
        sail,
        tmp_path,
        load_strategy="scd2",
        merge_keys=["id"],
        incremental_column="ts",
        delete_detection="none",
    )
    assert _reads_during(both) == 1  # first load: the key check and CREATE on the staged rows
    both.sql(f"UPDATE {both.table} SET v = 'A', ts = %s WHERE id = 1", (t(8),))
    assert _reads_during(both) == 1  # key check, MERGE: one read
    rows = both.rows(both.sail.location(both.spark_target))
    assert sum(1 for r in rows if dict(r)["id"] == 1 and dict(r)[END_AT] is None) == 1
    leftovers = [r for r in both.sail.sql("SHOW TABLES IN `spark_catalog`.`default`").collect()]
    assert not [r for r in leftovers if STAGE_MARK in r["tableName"]]  # staging tables dropped


@pytest.mark.parametrize(
    ("cursor", "reads"),
    [(None, 1), ("ts", 2)],  # a whole-table read gives the keys too; above a watermark: + keys
)
def test_delete_detection_reads_each_source_query_once(source_db, sail, tmp_path, cursor, reads):  # noqa: F811
    both = _counted(
        source_db,
        sail,
        tmp_path,
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column=cursor,
        delete_detection="soft",
        delete_max_fraction=0.5,
    )
    assert _reads_during(both) == 1
    both.sql(f"DELETE FROM {both.table} WHERE id = 2")
    both.sql(f"UPDATE {both.table} SET v = 'D', ts = %s WHERE id = 4", (t(6),))
    assert _reads_during(both) == reads  # key check, floor, MERGE on the staged rows
