"""Spark JDBC reads split over several connections: same rows as one connection, N partitions,
the watermark filter still pushed down, NULL keys kept, and a note when a read cannot be split."""

from __future__ import annotations

import datetime as dt
import decimal
import shutil
import socket
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.engines.spark import partitions as lpp
from databricks_scripts.load.params import parse_load_spec

UTC = dt.UTC
PG_JARS = sorted(
    (Path.home() / ".m2/repository/org/postgresql/postgresql").glob("*/postgresql-*.jar")
)


# -- the plan's pure parts ----------------------------------------------------------------------


def _spec(**kw):
    params = {
        "source_schema_name": "public",
        "source_table_name": "items",
        "destination_catalog": "main",
        "destination_schema_name": "bronze",
        "destination_table_name": "items",
        "db_type": "postgresql",
        "db_config_value": {"host": "127.0.0.1", "database": "d", "user": "u"},
        "load_strategy": "full",
    }
    params.update(kw)
    return parse_load_spec(params)


FIELDS = [("id", "bigint"), ("code", "string"), ("amount", "decimal(12,2)"), ("ts", "timestamp")]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"merge_keys": ["ID"], "incremental_column": "ts"}, ("id", "bigint")),
        ({"merge_keys": ["code"], "incremental_column": "ts"}, ("ts", "timestamp")),
        ({"merge_keys": ["id", "code"], "incremental_column": "ts"}, ("ts", "timestamp")),
        ({"jdbc_partition_column": "amount", "merge_keys": ["id"]}, ("amount", "decimal(12,2)")),
    ],
)
def test_the_column_is_the_override_the_single_merge_key_or_the_cursor(kw, expected):
    assert lpp.choose_partition_column(_spec(**kw), FIELDS) == expected


def test_a_column_that_cannot_be_split_is_named_and_a_bad_override_refused():
    column, why = lpp.choose_partition_column(_spec(merge_keys=["code"]), FIELDS)
    assert column is None and why == "the merge key 'code' is string"
    column, why = lpp.choose_partition_column(_spec(merge_keys=["id", "code"]), FIELDS)
    assert column is None and "several columns" in why
    column, why = lpp.choose_partition_column(_spec(), FIELDS)
    assert column is None and "no merge key or incremental column" in why
    with pytest.raises(ValueError, match="'nope' is not a column"):
        lpp.choose_partition_column(_spec(jdbc_partition_column="nope"), FIELDS)
    with pytest.raises(ValueError, match="'code' is string"):
        lpp.choose_partition_column(_spec(jdbc_partition_column="code"), FIELDS)


def test_partition_count_follows_the_estimate_within_the_cap():
    assert lpp.partition_count(None, 100, 8) == 1
    assert lpp.partition_count(0, 100, 8) == 1
    assert lpp.partition_count(250, 100, 8) == 3
    assert lpp.partition_count(10**9, 100, 8) == 8


def test_only_typed_watermarks_reach_the_probe_text():
    assert lpp.filter_literal("postgresql", 42) == "42"
    assert lpp.filter_literal("mysql", decimal.Decimal("1.50")) == "1.50"
    when = dt.datetime(2024, 1, 1, 2, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert lpp.filter_literal("postgresql", when) == "'2024-01-01 00:00:00.000005+00:00'"
    assert lpp.filter_literal("mysql", when) == "'2024-01-01 00:00:00.000005'"
    assert lpp.filter_literal("postgresql", dt.date(2024, 2, 29)) == "'2024-02-29'"
    assert lpp.filter_literal("postgresql", "x' OR 1=1 --") is None
    assert lpp.filter_literal("sqlserver", 42) is None
    assert lpp.filter_literal("postgresql", float("nan")) is None


# -- on a local SparkSession against the real PostgreSQL -----------------------------------------


class _TcpToUnixSocket:
    """The embedded PostgreSQL listens on a Unix socket only; the JDBC driver speaks TCP. Bytes are
    forwarded both ways between a loopback port and the socket, nothing is interpreted."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    if not PG_JARS:
        pytest.skip("no PostgreSQL JDBC driver jar in the local Maven repository (~/.m2)")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark_warehouse")))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    # Another module's session may already run in this JVM: the driver jar is added to it.
    session.sql(f"ADD JAR '{PG_JARS[-1]}'")
    session.conf.set("spark.sql.session.timeZone", "UTC")
    yield session


@pytest.fixture
def pg(source_db):
    """(conninfo, db_config_value over loopback TCP) of a fresh source database."""
    parts = conninfo_to_dict(source_db)
    proxy = _TcpToUnixSocket(f"{parts['host']}/.s.PGSQL.{parts['port']}")
    config = {
        "host": "127.0.0.1",
        "port": proxy.port,
        "database": parts["dbname"],
        "user": "postgres",
    }
    yield source_db, config
    proxy.close()


T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)


def _items(conn, n: int, *, analyze: bool = True) -> None:
    # Without ANALYZE, autovacuum is kept off too: it would analyze the table at its own time.
    conn.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, code text, nk int,"
        " amount numeric(12,2), updated_at timestamptz)"
        + ("" if analyze else " WITH (autovacuum_enabled = false)")
    )
    conn.execute(
        "INSERT INTO items SELECT g, 'c' || g, CASE WHEN g %% 10 = 0 THEN NULL ELSE g END,"
        " g * 1.25, %s::timestamptz + g * interval '1 minute' FROM generate_series(1, %s) g",
        (T0, n),
    )
    if analyze:
        conn.execute("ANALYZE items")


def _read(spark, config, lower=None, partitioning=(100, 4), **kw):
    spec = _spec(db_config_value=config, **kw)
    return lsp.read_source_planned(spark, spec, None, lower, partitioning)


def _rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def test_a_full_read_on_the_merge_key_is_split_and_reads_the_same_rows(spark, pg):
    conninfo, config = pg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 1000)
    df, plan = _read(spark, config, merge_keys=["id"])
    assert plan.partitions == 4 and plan.note is None
    assert dict(plan.options) == {
        "partitionColumn": "id",
        "lowerBound": "1",
        "upperBound": "1000",
        "numPartitions": "4",
    }
    assert df.rdd.getNumPartitions() == 4
    one, single = _read(spark, config, partitioning=None, merge_keys=["id"])
    assert single.partitions == 1 and one.rdd.getNumPartitions() == 1
    assert _rows(df) == _rows(one) and len(_rows(df)) == 1000


def test_an_incremental_read_is_split_on_the_cursor_and_keeps_the_filter(spark, pg):
    conninfo, config = pg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 1000)
    lower = T0 + dt.timedelta(minutes=400)
    kw = {"load_strategy": "incremental", "incremental_column": "updated_at"}
    df, plan = _read(spark, config, lower, **kw)
    # 600 rows above the watermark (the probe's count within the filter): 100 per partition, cap 4
    assert plan.partitions == 4 and plan.options["partitionColumn"] == "updated_at"
    assert plan.options["lowerBound"] == "2024-01-01 06:41:00.000000"
    assert df.rdd.getNumPartitions() == 4
    physical = df._jdf.queryExecution().executedPlan().toString()
    assert "GreaterThan(updated_at," in physical
    one, _ = _read(spark, config, lower, partitioning=None, **kw)
    assert _rows(df) == _rows(one) and len(_rows(df)) == 600


def test_rows_with_a_null_partition_key_are_read_in_the_first_partition(spark, pg):
    from pyspark.sql import functions as F

    conninfo, config = pg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 1000)
    df, plan = _read(spark, config, jdbc_partition_column="nk", merge_keys=["id"])
    assert plan.partitions == 4 and plan.options["partitionColumn"] == "nk"
    nulls = df.filter(F.col("nk").isNull()).select(F.spark_partition_id().alias("p")).collect()
    assert len(nulls) == 100 and {r["p"] for r in nulls} == {0}
    assert df.count() == 1000


def test_empty_and_one_row_tables_read_on_one_connection_without_a_note(spark, pg):
    conninfo, config = pg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 0)
    df, plan = _read(spark, config, merge_keys=["id"])
    assert (plan.partitions, plan.note, df.count()) == (1, None, 0)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (7, 'c7', NULL, 1, now())")
        conn.execute("ANALYZE items")
    df, plan = _read(spark, config, merge_keys=["id"])
    assert (plan.partitions, plan.note, df.count()) == (1, None, 1)


def test_a_read_that_cannot_be_split_says_why(spark, pg):
    conninfo, config = pg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _items(conn, 300, analyze=False)
    # Never analyzed: PostgreSQL has no estimate (reltuples -1) for a whole-table read.
    df, plan = _read(spark, config, merge_keys=["id"])
    assert plan.partitions == 1 and "no row estimate" in plan.note
    assert df.count() == 300
    df, plan = _read(spark, config, merge_keys=["code"])
    assert plan.partitions == 1
    assert plan.note.startswith("read on one connection: the merge key 'code' is string")
    assert "jdbc_partition_column" in plan.note
    # A person's cap of one connection is obeyed without a note.
    _, plan = _read(spark, config, merge_keys=["id"], jdbc_num_partitions=1)
    assert (plan.partitions, plan.note) == (1, None)


# -- the control row's two columns reach the script -----------------------------------------------


def test_the_control_row_columns_are_checked_and_reach_the_load_spec(control_db):
    from psycopg.rows import dict_row

    from dagsters.control.rows import ControlRow, fetch_one
    from dagsters.policy.run_requests import load_params

    with psycopg.connect(control_db, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, db_config_value)"
            " VALUES ('k', 'items', 'c', 's', 't', 'postgresql', '{\"host\": \"127.0.0.1\"}')"
        )
        conn.commit()
        for assignment, rule in (
            ("jdbc_num_partitions = 0", "jdbc_num_partitions_must_be_between_1_and_256"),
            ("jdbc_num_partitions = 257", "jdbc_num_partitions_must_be_between_1_and_256"),
            ("jdbc_partition_column = ' '", "jdbc_partition_column_must_not_be_blank"),
        ):
            with pytest.raises(psycopg.errors.CheckViolation, match=rule):
                conn.execute(f"UPDATE table_control SET {assignment}")
            conn.rollback()
        conn.execute(
            "UPDATE table_control SET jdbc_partition_column = 'id', jdbc_num_partitions = 4"
        )
        row = fetch_one(conn, ControlRow, "SELECT * FROM table_control")
    assert row is not None
    spec = parse_load_spec(load_params(row))
    assert (spec.jdbc_partition_column, spec.jdbc_num_partitions) == ("id", 4)
    with pytest.raises(ValueError, match="jdbc_num_partitions must be a whole number"):
        parse_load_spec({**load_params(row), "jdbc_num_partitions": "4"})


def test_a_loads_notes_follow_its_row_count_in_the_history_message():
    from dagsters.assets.forced_reload import loaded_message as _loaded_message

    note = "read on one connection: the merge key 'code' is string"
    assert _loaded_message(120, note) == f"Loaded 120 rows; {note}"
    assert _loaded_message(None, note) == f"Loaded ? rows; {note}"
    assert _loaded_message(120, None) is None  # the default "Loaded 120 rows"
