"""The Spark engine's write path executed on Sail's Delta Lake, compared with the Arrow engine.

Every scenario plays the same source edits on a real PostgreSQL table and runs each load twice:
the Arrow engine (``run_arrow_load`` on the real PostgreSQL reader, into a local Delta table, with
MERGE chunks of two rows), and the Spark engine (``run_spark_load``) on Sail (tests/sail_spark.py),
whose source is the same rows copied into a Sail table at that load (the JDBC read itself is not
part of this: Sail has no JDBC source). Everything after the source read runs on Sail: the
watermark filter, the key check, the floor query, CREATE TABLE AS SELECT, INSERT OVERWRITE, the
look-back INSERT ... EXCEPT ALL, the key-range MERGE, the delete-detection and scd2 MERGEs with
WHEN NOT MATCHED BY SOURCE, the commit-metric lookup and the watermark read-back. After each load
both destinations are read back with ``deltalake`` and must hold the same rows; the applied
strategy, row count and watermark must agree too.

What stays unexecuted on Sail is named in ``sail_spark.SAIL_GAPS`` (and docs/databricks.md):
DESCRIBE HISTORY and ALTER TABLE ADD COLUMNS are answered from the Delta log instead, the
MERGE's per-statement userMetadata configuration is ignored by Sail (the writer option of every
other write is honoured), and CREATE OR REPLACE cannot change a schema.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from helpers import pg_config

from databricks_scripts.contract import DELETED_AT, END_AT, RECORDED_METADATA_ID_PARAM, START_AT
from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.load.columns import with_column_control
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.sources import readers as ls

pysail = pytest.importorskip(
    "pysail", reason="no pysail wheel for this platform: the Spark engine cannot run on Sail here"
)
from sail_spark import SAIL_GAPS, SailSession, connect, sail_server

UTC = dt.UTC
TECHNICAL = (START_AT, END_AT, DELETED_AT)
SPARK_TYPES = {
    "int": "INT",
    "text": "STRING",
    "numeric(12,2)": "DECIMAL(12,2)",
    "timestamp": "TIMESTAMP",
    "boolean": "BOOLEAN",
}


@pytest.fixture(scope="module")
def sail(tmp_path_factory):
    warehouse = str(tmp_path_factory.mktemp("sail_warehouse"))
    # Creating a Connect session switches pyspark into Connect mode for the whole process
    # (SPARK_CONNECT_MODE_ENABLED); a later test file in this worker needs classic Spark back.
    saved = os.environ.get("SPARK_CONNECT_MODE_ENABLED")
    with sail_server(warehouse) as url:
        try:
            spark = connect(url, warehouse)
            try:
                yield SailSession(spark)
            finally:
                spark.stop()
        finally:
            if saved is None:
                os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
            else:
                os.environ["SPARK_CONNECT_MODE_ENABLED"] = saved


def t(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour)


class Both:
    """One source table, loaded by both engines after the same edits."""

    def __init__(self, source_db: str, sail: SailSession, tmp_path, columns, **params):
        self.tag = uuid.uuid4().hex[:8]
        self.table = f"src_{self.tag}"
        self.conninfo, self.sail = source_db, sail
        self.columns = list(columns)  # (name, PostgreSQL type)
        self.started = dt.datetime.now(UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)
        self.sql(
            f"CREATE TABLE {self.table} ("
            + ", ".join(f'"{n}" {ty}' for n, ty in self.columns)
            + ")"
        )
        self.params = {
            "config_id": 1,
            "control_key": f"sail.{self.table}",
            "source_catalog": None,
            "source_schema_name": "public",
            "source_table_name": self.table,
            "destination_catalog": "lake",
            "destination_schema_name": "landing",
            "destination_table_name": self.table,
            "db_type": "postgresql",
            "db_config_value": pg_config(source_db),
            "db_kv_scope": None,
            "load_strategy": "full",
            "incremental_column": None,
            "merge_keys": None,
            "lookback_window_seconds": 0,
            **params,
        }
        self.arrow_path = tmp_path / f"arrow_{self.tag}"
        self.spark_source = f"`spark_catalog`.`default`.`{self.table}`"
        self.spark_target = f"`spark_catalog`.`default`.`dst_{self.tag}`"
        self.attempt = 0
        self.watermark = {"arrow": None, "spark": None}
        self.logged: list[str] = []
        self.hash_key: bytes | None = None  # the HMAC key of columns_hash, both engines
        self.spark_options: dict[str, Any] = {}  # more keyword arguments of run_spark_load

    def sql(self, text: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute(text, params or None)
            return cur.fetchall() if cur.description else []

    def add_column(self, name: str, pg_type: str) -> None:
        self.sql(f'ALTER TABLE {self.table} ADD COLUMN "{name}" {pg_type}')
        self.columns.append((name, pg_type))

    def _copy_to_sail(self) -> None:
        """The source's rows now, as the Spark engine's source table on Sail (timestamps as
        Spark's JDBC read gives a PostgreSQL ``timestamp``: TIMESTAMP in the UTC session)."""
        names = ", ".join(f'"{n}"' for n, _ in self.columns)
        rows = [
            tuple(v.replace(tzinfo=UTC) if isinstance(v, dt.datetime) else v for v in r)
            for r in self.sql(f"SELECT {names} FROM {self.table}")
        ]
        ddl = ", ".join(f"`{n}` {SPARK_TYPES[ty]}" for n, ty in self.columns)
        self.sail.sql(f"DROP TABLE IF EXISTS {self.spark_source}").collect()
        self.sail.createDataFrame(rows, ddl).write.format("delta").saveAsTable(self.spark_source)

    def load(self, **overrides) -> tuple[Any, Any]:
        """One load on each engine; both results (each engine's failure is raised as it is)."""
        arrow, spark = self.load_each(**overrides)
        for result in (arrow, spark):
            if isinstance(result, Exception):
                raise result
        self.watermark = {"arrow": arrow.watermark_after, "spark": spark.watermark_after}
        return arrow, spark

    def _next_attempt(self, overrides: dict) -> dict:
        self.attempt += 1
        return {
            **self.params,
            "metadata_id": self.attempt,
            RECORDED_METADATA_ID_PARAM: self.attempt - 1 or None,
            **overrides,
        }

    def load_spark(self, **overrides) -> Any:
        """One attempt on the Spark engine alone: its result or its error."""
        return self._run_spark(self._next_attempt(overrides))

    def load_each(self, **overrides) -> tuple[Any, Any]:
        """(Arrow result or its error, Spark result or its error) of one load."""
        common = self._next_attempt(overrides)
        spec = parse_load_spec({**common, "incremental_value": self.watermark["arrow"]})
        source = ls.PostgresReader(spec, None, batch_bytes=1 << 20, batch_rows=100)
        source = with_column_control(source, self.hash_key)
        try:
            arrow = la.run_arrow_load(
                spec, source, self.arrow_path, log=self.logged.append, merge_chunk_rows=2
            )
        except la.LoadStepError as exc:
            arrow = exc
        finally:
            source.close()
        return arrow, self._run_spark(common)

    def _run_spark(self, common: dict) -> Any:
        self._copy_to_sail()
        spark_spec = parse_load_spec(
            {
                **common,
                "incremental_value": self.watermark["spark"],
                "db_type": "databricks",
                "db_config_value": {},
                "source_catalog": "spark_catalog",
                "source_schema_name": "default",
                "destination_catalog": "spark_catalog",
                "destination_schema_name": "default",
                "destination_table_name": f"dst_{self.tag}",
            }
        )
        try:
            return lsp.run_spark_load(
                spark_spec,
                None,
                log=self.logged.append,
                spark=self.sail,
                hash_key=self.hash_key,
                **self.spark_options,
            )
        except la.LoadStepError as exc:
            return exc

    def _norm(self, value: Any, column: str) -> Any:
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            if column in TECHNICAL and value >= self.started:
                return "load time"  # each engine stamps its own load's time
        return value

    def rows(self, path: str) -> list[tuple]:
        table = DeltaTable(path).to_pyarrow_table()
        names = sorted(table.column_names)
        out = [tuple((n, self._norm(r[n], n)) for n in names) for r in table.to_pylist()]
        return sorted(out, key=lambda row: [(v is None, str(v)) for _, v in row])

    def check(self, arrow, spark) -> list[tuple]:
        """Both engines' destinations hold the same rows; their results agree."""
        want = self.rows(str(self.arrow_path))
        got = self.rows(self.sail.location(self.spark_target))
        assert got == want
        assert spark.applied_strategy == arrow.applied_strategy
        assert spark.row_count == arrow.row_count == len(want)
        assert spark.rows_written == arrow.rows_written  # a hard delete's deletes included
        assert _watermark(spark.watermark_after) == _watermark(arrow.watermark_after)
        return want


def _watermark(text: str | None) -> Any:
    """A watermark's value: the Arrow engine stores a PostgreSQL ``timestamp`` naive, the Spark
    engine a Spark TIMESTAMP in UTC."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _values(rows: list[tuple], *names: str) -> list[tuple]:
    picked = [tuple(dict(r)[n] for n in names) for r in rows]
    return sorted(picked, key=lambda v: [(x is None, str(x)) for x in v])


COLUMNS = [("id", "int"), ("v", "text"), ("amount", "numeric(12,2)"), ("ts", "timestamp")]
D = decimal.Decimal


def _seed(both: Both) -> None:
    both.sql(
        f"INSERT INTO {both.table} VALUES (1,'a',1.50,%s),(2,'b',NULL,%s),(3,NULL,3.00,%s),"
        "(4,'d',4.25,%s),(5,'e',5.00,NULL)",
        (t(1), t(2), t(2), t(3)),
    )


def test_full_loads_create_then_overwrite(source_db, sail, tmp_path):
    both = Both(source_db, sail, tmp_path, COLUMNS)
    _seed(both)
    both.check(*both.load())  # CREATE TABLE AS SELECT
    both.sql(f"UPDATE {both.table} SET v = 'A' WHERE id = 1; DELETE FROM {both.table} WHERE id = 2")
    rows = both.check(*both.load())  # INSERT OVERWRITE
    assert _values(rows, "id", "v") == [(1, "A"), (3, None), (4, "d"), (5, "e")]
    rows = both.check(*both.load(force_full_reload=True))  # CREATE OR REPLACE TABLE AS SELECT
    assert len(rows) == 4


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"load_strategy": "merge", "merge_keys": ["nope"]}, "merge key 'nope'"),
        (
            {"load_strategy": "incremental", "incremental_column": "nope"},
            "incremental_column 'nope'",
        ),
    ],
)
def test_both_engines_refuse_a_key_or_cursor_the_source_lacks(
    source_db, sail, tmp_path, params, said
):
    # One rule (load.plan.check_source_columns): the Spark engine used to fail later, on Spark's
    # own error, or not at all; now both refuse before writing, naming the column, and nothing is
    # created.
    both = Both(source_db, sail, tmp_path, COLUMNS, **params)
    _seed(both)
    arrow, spark = both.load_each()
    for result in (arrow, spark):
        assert isinstance(result, la.LoadStepError), result
        assert f"{said} is not a column of the source table" in str(result)
    assert not DeltaTable.is_deltatable(str(both.arrow_path))
    assert not both.sail.catalog.tableExists(f"spark_catalog.default.dst_{both.tag}")


def test_both_engines_refuse_a_cursor_whose_type_has_no_order(source_db, sail, tmp_path):
    # One rule (load.driver.check_source): the Spark engine used to take a boolean cursor (its
    # type read as text); now both refuse it at the probe, with the same words, creating nothing.
    columns = [*COLUMNS, ("flag", "boolean")]
    both = Both(
        source_db, sail, tmp_path, columns, load_strategy="incremental", incremental_column="flag"
    )
    both.sql(f"INSERT INTO {both.table} VALUES (1,'a',1.50,%s,true)", (t(1),))
    arrow, spark = both.load_each()
    said = "incremental_column 'flag' cannot be a cursor: its type bool has no order"
    for result in (arrow, spark):
        assert isinstance(result, la.LoadStepError), result
        assert result.step == "probe source", result.step
        assert said in str(result), str(result)
    assert str(arrow) == str(spark)
    assert not DeltaTable.is_deltatable(str(both.arrow_path))
    assert not both.sail.catalog.tableExists(f"spark_catalog.default.dst_{both.tag}")


def test_incremental_append_with_a_lookback_loads_a_late_row_once(source_db, sail, tmp_path):
    both = Both(
        source_db,
        sail,
        tmp_path,
        COLUMNS,
        load_strategy="incremental",
        incremental_column="ts",
        lookback_window_seconds=7200,
    )
    _seed(both)
    both.check(*both.load())  # first load: full (NULL cursor of 5 included)
    # New rows above the watermark, a late row inside the window, one equal to a loaded row.
    both.sql(
        f"INSERT INTO {both.table} VALUES (6,'f',6.00,%s),(7,'late',NULL,%s),(4,'d',4.25,%s)",
        (t(4), t(2, 23), t(3)),
    )
    arrow, spark = both.load()
    rows = both.check(arrow, spark)
    assert arrow.applied_strategy == "incremental"
    assert _values(rows, "id").count((4,)) == 2  # the source holds two identical rows of 4
    assert (7,) in _values(rows, "id")
    both.check(*both.load())  # nothing new: the window's rows are all loaded already


@pytest.mark.parametrize("cursor", ["ts", None])
def test_merge_upserts_on_the_keys_with_and_without_a_cursor(source_db, sail, tmp_path, cursor):
    both = Both(
        source_db,
        sail,
        tmp_path,
        COLUMNS,
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column=cursor,
    )
    _seed(both)
    both.check(*both.load())
    both.sql(f"UPDATE {both.table} SET v = NULL, ts = %s WHERE id = 1", (t(5),))
    both.sql(f"UPDATE {both.table} SET amount = 9.99, ts = %s WHERE id = 3", (t(5),))
    both.sql(f"INSERT INTO {both.table} VALUES (10,'j',NULL,%s),(0,'z',0.01,%s)", (t(5), t(6)))
    arrow, spark = both.load()
    rows = both.check(arrow, spark)
    assert _values(rows, "id", "v", "amount")[:2] == [(0, "z", D("0.01")), (1, None, D("1.50"))]
    merges = [m for m in both.logged if m.startswith("running: MERGE")]
    # The MERGE ran restricted to the key range of the rows read (and its source to that range).
    assert merges and all("t.`id` >= 0 AND t.`id` <= 10 AND" in m for m in merges), merges


@pytest.mark.parametrize("detection", ["soft", "hard"])
def test_delete_detection_marks_or_removes_gone_keys(source_db, sail, tmp_path, detection):
    both = Both(
        source_db,
        sail,
        tmp_path,
        COLUMNS,
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column="ts",
        delete_detection=detection,
        delete_max_fraction=0.5,
    )
    _seed(both)
    both.check(*both.load())
    both.sql(f"DELETE FROM {both.table} WHERE id IN (2, 5)")
    both.sql(f"UPDATE {both.table} SET v = 'D', ts = %s WHERE id = 4", (t(6),))
    both.sql(f"INSERT INTO {both.table} VALUES (6,'f',NULL,%s)", (t(6),))
    rows = both.check(*both.load())
    live = [r for r in rows if dict(r).get(DELETED_AT) is None]
    assert _values(live, "id") == [(1,), (3,), (4,), (6,)]
    both.sql(f"INSERT INTO {both.table} VALUES (2,'back',NULL,%s)", (t(7),))  # a key comes back
    rows = both.check(*both.load())
    assert (2, "back") in _values(rows, "id", "v")
    # Above the floor (3 of 5 live keys gone > 50%): both engines refuse and write nothing.
    both.sql(f"DELETE FROM {both.table} WHERE id IN (1, 3, 4)")
    arrow, spark = both.load_each()
    for refused in (arrow, spark):
        assert isinstance(refused, la.LoadStepError), refused
        assert refused.step == "check deletes" and "delete_max_fraction" in str(refused)
    assert both.rows(str(both.arrow_path)) == rows
    assert both.rows(both.sail.location(both.spark_target)) == rows


@pytest.mark.parametrize("detection", ["none", "soft"])
def test_scd2_keeps_versions_and_closes_gone_keys(source_db, sail, tmp_path, detection):
    both = Both(
        source_db,
        sail,
        tmp_path,
        COLUMNS,
        load_strategy="scd2",
        merge_keys=["id"],
        incremental_column="ts",
        delete_detection=detection,
        delete_max_fraction=1,
    )
    _seed(both)
    both.check(*both.load())
    both.sql(f"UPDATE {both.table} SET amount = NULL, ts = %s WHERE id = 1", (t(8),))
    both.sql(f"UPDATE {both.table} SET ts = %s WHERE id = 4", (t(8),))  # cursor only: a change
    both.sql(f"DELETE FROM {both.table} WHERE id = 3")
    both.sql(f"INSERT INTO {both.table} VALUES (7,'g',7.00,%s)", (t(8),))
    rows = both.check(*both.load())
    versions = _values(rows, "id", END_AT)
    assert versions.count((1, t(8))) == 1 and (7, None) in versions
    both.sql(f"UPDATE {both.table} SET v = 'again', ts = %s WHERE id = 1", (t(9),))
    both.check(*both.load())


def test_schema_evolution_adds_a_source_column(source_db, sail, tmp_path):
    both = Both(
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
    both.add_column("note", "text")
    both.sql(f"UPDATE {both.table} SET note = 'n', ts = %s WHERE id = 2", (t(9),))
    rows = both.check(*both.load())  # ALTER TABLE ADD COLUMNS, then the MERGE with the column
    assert _values(rows, "id", "note")[:2] == [(1, None), (2, "n")]
    assert "ALTER TABLE ADD COLUMNS" in both.sail.answered


# ---- what stays unexecuted on Sail (sail_spark.SAIL_GAPS; docs/databricks.md) -------------------
# Each is a strict xfail: the day Sail implements it, the test passes and says so.


def _gap(key: str, raises: type[BaseException] | None = None):
    """Strict xfail on the failure the gap gives (Sail refusing the statement by default), so a
    failure of anything else (the server, the session) still shows as an error."""
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    return pytest.mark.xfail(
        strict=True,
        raises=raises or SparkConnectGrpcException,
        reason=f"not executed on Sail: {SAIL_GAPS[key]}",
    )


def _table(sail: SailSession, rows: str = "SELECT 1 AS id, 'a' AS v") -> str:
    target = f"`spark_catalog`.`default`.`gap_{uuid.uuid4().hex[:8]}`"
    sail.sql(f"CREATE TABLE {target} USING DELTA AS {rows}").collect()
    return target


@_gap("DESCRIBE HISTORY")
def test_gap_describe_history(sail):
    sail._spark.sql(f"DESCRIBE HISTORY {_table(sail)} LIMIT 1").collect()


@_gap("ALTER TABLE ADD COLUMNS")
def test_gap_alter_table_add_columns(sail):
    sail._spark.sql(f"ALTER TABLE {_table(sail)} ADD COLUMNS (`n` INT)").collect()


@_gap("command parameters")
def test_gap_parameters_in_a_command(sail):
    target = _table(sail)
    sail._spark.sql(f"INSERT INTO {target} SELECT :id, 'b'", args={"id": 2}).collect()


@_gap("session userMetadata", AssertionError)
def test_gap_session_user_metadata_names_the_commit(sail):
    """What reconciling and fencing read (engines.spark.commits): the session-wide userMetadata
    in the commit the statement makes."""
    from databricks_scripts.engines.spark.commits import commit_named, read_last_commit

    target = _table(sail)
    spec = parse_load_spec(
        {
            "source_table_name": "s",
            "destination_catalog": "spark_catalog",
            "destination_schema_name": "default",
            "destination_table_name": "d",
            "db_type": "databricks",
            "load_strategy": "full",
            "metadata_id": 41,
        }
    )
    with commit_named(sail, spec, "full"):
        sail.sql(f"INSERT INTO {target} SELECT 2, 'b'").collect()
    last = read_last_commit(sail, target)
    assert last is not None and last.metadata_id == 41


@_gap("txnAppId", AssertionError)
def test_gap_idempotent_writes_with_txn_app_id(sail):
    target = _table(sail)
    for _ in range(2):  # the same (txnAppId, txnVersion) twice: Delta skips the second write
        (
            sail.createDataFrame([(2, "b")], "id INT, v STRING")
            .write.format("delta")
            .mode("append")
            .option("txnAppId", "dataloader-1")
            .option("txnVersion", "7")
            .saveAsTable(target)
        )
    assert sail.table(target).count() == 2


@_gap("REPLACE schema")
def test_gap_create_or_replace_changes_the_schema(sail):
    target = _table(sail)
    sail.sql(f"CREATE OR REPLACE TABLE {target} USING DELTA AS SELECT 1 AS id").collect()
    assert sail.table(target).columns == ["id"]


@_gap("column mapping refusal", pytest.fail.Exception)
def test_gap_a_column_name_delta_refuses_without_column_mapping(sail):
    with pytest.raises(Exception, match="(?i)column ?mapping|invalid character"):
        _table(sail, "SELECT 1 AS `a b`, 2 AS `c,d`")
