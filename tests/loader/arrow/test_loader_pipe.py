"""dataloader_pipe.py end to end: real PostgreSQL -> real Delta through Dagster Pipes, every strategy."""

import datetime as dt
import decimal
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from dagster_pipes import encode_param
from deltalake import DeltaTable
from helpers import pg_config

from databricks_scripts.contract import ERROR_MESSAGE_KEY, STDERR_ERROR_PREFIX

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "databricks_scripts" / "dataloader_pipe.py"
UTC = dt.UTC


def make_params(source_db: str, table: str, **overrides) -> dict:
    params = {
        "config_id": 1,
        "control_key": f"test.{table}",
        "metadata_id": 1,
        "source_catalog": None,
        "source_schema_name": "public",
        "source_table_name": table,
        "destination_catalog": "lake",
        "destination_schema_name": "landing",
        "destination_table_name": table.replace('"', "").replace(" ", "_").replace(";", "")[:40]
        or "t",
        "db_type": "postgresql",
        "db_config_value": pg_config(source_db),
        "db_kv_scope": None,
        "load_strategy": "full",
        "incremental_column": None,
        "incremental_value": None,
        "merge_keys": None,
        "lookback_window_seconds": 0,
        "force_full_reload": False,
    }
    params.update(overrides)
    return params


def materialize_load(params: dict, env: dict | None = None) -> dict:
    """Run the real script with PipesSubprocessClient inside dg.materialize; return metadata."""

    @dg.asset(name="dl_test_table")
    def dl_test_table(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        return pipes.run(
            command=[sys.executable, str(SCRIPT)],
            context=context,
            extras={"params": params},
            env={**os.environ, **(env or {})},
        ).get_materialize_result()

    result = dg.materialize([dl_test_table], resources={"pipes": dg.PipesSubprocessClient()})
    assert result.success
    (mat,) = result.asset_materializations_for_node("dl_test_table")
    return {k: v.value for k, v in mat.metadata.items()}


def pipes_context(params: dict, *, run_id: str, job_name: str | None) -> dict:
    """The Pipes context data Dagster would hand the script for one unpartitioned asset."""
    return {
        "asset_keys": ["dl_test_table"],
        "code_version_by_asset_key": {"dl_test_table": None},
        "provenance_by_asset_key": {"dl_test_table": None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": run_id,
        "job_name": job_name,
        "retry_number": 0,
        "extras": {"params": params},
    }


def run_raw(params: dict, tmp_path: Path, env: dict | None = None, *, popen: bool = False):
    """Run the script as Pipes would, with the real local context file and message file."""
    context = pipes_context(params, run_id="test-run", job_name="test_job")
    ctx_file = tmp_path / "context.json"
    ctx_file.write_text(json.dumps(context))
    msg_file = tmp_path / "messages.jsonl"
    msg_file.write_text("")
    full_env = {
        **os.environ,
        "DAGSTER_PIPES_CONTEXT": encode_param({"path": str(ctx_file)}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(msg_file)}),
        **(env or {}),
    }
    cmd = [sys.executable, str(SCRIPT)]
    if popen:
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return proc, msg_file
    proc = subprocess.run(
        cmd, check=False, env=full_env, capture_output=True, text=True, timeout=300
    )
    messages = [json.loads(line) for line in msg_file.read_text().splitlines() if line.strip()]
    return proc, messages


def dest(lake_root: Path, params: dict) -> Path:
    return lake_root / "lake" / "landing" / params["destination_table_name"]


def read_rows(path: Path, order_by: str = "id") -> list[dict]:
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: (r[order_by] is None, r[order_by]))


def execute(conninfo: str, sql: str, params=None) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql, params)


TYPED_DDL = """
CREATE TABLE typed (
    id int PRIMARY KEY, amount numeric(12,2), big numeric(38,10), free numeric,
    ts timestamp, tstz timestamptz, label text, flag boolean, day date, doc jsonb
)"""


def test_full_load_keeps_types_nulls_unicode_and_reports_metadata(source_db, lake_root):
    execute(source_db, TYPED_DDL)
    execute(
        source_db,
        "INSERT INTO typed VALUES "
        "(1, 1234567890.12, 1234567890123456789012345678.0123456789, 3.14159265358979323846264338,"
        " '2024-02-29 23:59:59.999999', '2024-02-29 23:59:59.000001+05:30', 'Grüße, 東京 ☃',"
        " true, '2024-02-29', '{\"k\": [1,2]}'),"
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    params = make_params(source_db, "typed", incremental_column="tstz")
    meta = materialize_load(params)

    rows = read_rows(dest(lake_root, params))
    assert rows[0]["amount"] == decimal.Decimal("1234567890.12")
    assert rows[0]["big"] == decimal.Decimal("1234567890123456789012345678.0123456789")
    assert rows[0]["free"] == "3.14159265358979323846264338"  # unconstrained NUMERIC: exact text
    assert rows[0]["ts"] == dt.datetime(2024, 2, 29, 23, 59, 59, 999999)
    assert rows[0]["tstz"] == dt.datetime(2024, 2, 29, 18, 29, 59, 1, tzinfo=UTC)
    assert rows[0]["label"] == "Grüße, 東京 ☃"
    assert rows[0]["flag"] is True and rows[0]["day"] == dt.date(2024, 2, 29)
    assert rows[1] == {k: (2 if k == "id" else None) for k in rows[1]}

    schema = pa.schema(DeltaTable(str(dest(lake_root, params))).schema().to_arrow())
    types = {f.name: str(f.type) for f in schema}
    assert types["amount"] == "decimal128(12, 2)"
    assert types["ts"] == "timestamp[us]" and types["tstz"] == "timestamp[us, tz=UTC]"

    assert meta["rows_read"] == 2 and meta["rows_written"] == 2
    assert meta["watermark_after"] == "2024-02-29T18:29:59.000001+00:00"
    assert meta["load_strategy"] == "full"
    assert meta["dagster/row_count"] == 2
    assert meta["dagster/table_name"] == "lake.landing.typed"
    cols = {c.name: c.type for c in meta["dagster/column_schema"].columns}
    assert cols["amount"] == "decimal128(12, 2)" and "label" in cols


def _events_table(source_db: str) -> None:
    execute(
        source_db,
        "CREATE TABLE events (id int, updated_at timestamptz, payload text)",
    )


def test_incremental_loads_late_rows_once_and_second_run_writes_nothing(source_db, lake_root):
    _events_table(source_db)
    execute(
        source_db,
        "INSERT INTO events VALUES (1, '2024-01-01 10:00:00+00', 'a'),"
        " (2, '2024-01-01 11:00:00.000001+00', 'b'), (3, NULL, 'null cursor')",
    )
    params = make_params(
        source_db,
        "events",
        load_strategy="incremental",
        incremental_column="updated_at",
        lookback_window_seconds=3600,
    )
    first = materialize_load(params)  # no watermark yet: runs as full, NULL cursor row included
    assert first["load_strategy"] == "full" and first["rows_written"] == 3
    assert first["watermark_after"] == "2024-01-01T11:00:00.000001+00:00"

    # A row committed late, inside the look-back window, and a new row above the watermark.
    execute(
        source_db,
        "INSERT INTO events VALUES (4, '2024-01-01 10:30:00+00', 'late'),"
        " (5, '2024-01-01 12:00:00+00', 'new'), (6, NULL, 'null cursor, not incremental')",
    )
    params["incremental_value"] = first["watermark_after"]
    second = materialize_load(params)
    assert second["load_strategy"] == "incremental"
    assert second["rows_read"] == 3  # rows 2, 4, 5: window (10:00:00.000001, ...]
    assert second["rows_written"] == 2  # row 2 was already there
    assert second["watermark_after"] == "2024-01-01T12:00:00.000000+00:00"
    path = dest(lake_root, params)
    assert [r["id"] for r in read_rows(path)] == [1, 2, 3, 4, 5]

    version = DeltaTable(str(path)).version()
    params["incremental_value"] = second["watermark_after"]
    third = materialize_load(params)
    assert third["rows_written"] == 0
    assert third["watermark_after"] == second["watermark_after"]
    assert DeltaTable(str(path)).version() == version  # no empty commit
    assert [r["id"] for r in read_rows(path)] == [1, 2, 3, 4, 5]


def test_merge_updates_and_inserts_and_adds_new_columns(source_db, lake_root):
    execute(source_db, "CREATE TABLE customers (id int, name text, updated_at timestamp)")
    execute(
        source_db,
        "INSERT INTO customers VALUES (1, 'Ann', '2024-01-01 00:00:00'),"
        " (2, 'Bob', '2024-01-01 00:00:00')",
    )
    params = make_params(
        source_db,
        "customers",
        load_strategy="merge",
        merge_keys=["id"],
        incremental_column="updated_at",
    )
    first = materialize_load(params)
    assert first["watermark_after"] == "2024-01-01T00:00:00.000000"

    execute(source_db, "ALTER TABLE customers ADD COLUMN tier text")
    execute(
        source_db,
        "UPDATE customers SET name = 'Bobby', tier = 'gold', updated_at = '2024-01-02 00:00:00.5'"
        " WHERE id = 2; INSERT INTO customers VALUES (3, 'Cy', '2024-01-02 00:00:00', 'new')",
    )
    params["incremental_value"] = first["watermark_after"]
    second = materialize_load(params)
    assert second["load_strategy"] == "merge"
    assert second["rows_read"] == 2 and second["rows_written"] == 2
    assert second["watermark_after"] == "2024-01-02T00:00:00.500000"
    rows = read_rows(dest(lake_root, params))
    assert [(r["id"], r["name"], r["tier"]) for r in rows] == [
        (1, "Ann", None),
        (2, "Bobby", "gold"),
        (3, "Cy", "new"),
    ]


def test_incremental_with_keys_deduplicates_by_merging(source_db, lake_root):
    execute(source_db, "CREATE TABLE orders (id bigint, status text, seq numeric(10,0))")
    execute(source_db, "INSERT INTO orders VALUES (1, 'new', 1), (2, 'new', 2)")
    params = make_params(
        source_db,
        "orders",
        load_strategy="incremental",
        incremental_column="seq",
        merge_keys=["id"],
    )
    first = materialize_load(params)
    assert first["watermark_after"] == "2"
    execute(source_db, "UPDATE orders SET status = 'paid', seq = 3 WHERE id = 1")
    params["incremental_value"] = first["watermark_after"]
    second = materialize_load(params)
    assert second["watermark_after"] == "3"
    rows = read_rows(dest(lake_root, params))
    assert [(r["id"], r["status"]) for r in rows] == [(1, "paid"), (2, "new")]


def test_schema_change_to_incompatible_type_fails_naming_the_column(source_db, lake_root, tmp_path):
    execute(source_db, "CREATE TABLE shifty (id int, price numeric(8,2))")
    execute(source_db, "INSERT INTO shifty VALUES (1, 9.99)")
    params = make_params(source_db, "shifty", load_strategy="merge", merge_keys=["id"])
    materialize_load(params)
    version = DeltaTable(str(dest(lake_root, params))).version()
    execute(source_db, "ALTER TABLE shifty ALTER COLUMN price TYPE text")
    proc, messages = run_raw(params, tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(STDERR_ERROR_PREFIX) and "'price'" in last
    assert "reconcile schema" in last and "public.shifty" in last
    custom = [m for m in messages if m["method"] == "report_custom_message"]
    assert "'price'" in custom[0]["params"]["payload"][ERROR_MESSAGE_KEY]
    assert not [m for m in messages if m["method"] == "report_asset_materialization"]
    closed = next(m for m in messages if m["method"] == "closed")
    assert "'price'" in closed["params"]["exception"]["message"]
    assert DeltaTable(str(dest(lake_root, params))).version() == version


def test_driver_error_is_redacted_and_names_table_and_step(source_db, lake_root, tmp_path):
    params = make_params(
        source_db,
        "events",
        db_kv_scope="kv-main",
        db_config_value={
            **make_params(source_db, "x")["db_config_value"],
            "password_secret": "pg-pass",
            "host": "127.0.0.1",
            "port": 1,
        },
    )
    secret = "s3cr3t-Hunter2"
    proc, messages = run_raw(params, tmp_path, env={"DATALOADER_SECRET__KV_MAIN__PG_PASS": secret})
    assert proc.returncode == 1
    assert secret not in proc.stderr and secret not in json.dumps(messages)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(STDERR_ERROR_PREFIX) and "connect to source" in last
    assert "public.events" in last


def test_bad_identifiers_are_read_safely_or_refused(source_db, lake_root, tmp_path):
    evil = 'we"ird; DROP TABLE victim; --'
    execute(source_db, "CREATE TABLE victim (id int)")
    execute(
        source_db, f'CREATE TABLE "{evil.replace(chr(34), chr(34) * 2)}" (id int, "a ""b"" c" text)'
    )
    execute(source_db, f"INSERT INTO \"{evil.replace(chr(34), chr(34) * 2)}\" VALUES (1, 'x')")
    params = make_params(
        source_db,
        evil,
        load_strategy="incremental",
        incremental_column="id",
        destination_table_name="weird",
    )
    materialize_load(params)
    execute(source_db, f"INSERT INTO \"{evil.replace(chr(34), chr(34) * 2)}\" VALUES (2, 'y')")
    params["incremental_value"] = "1"
    meta = materialize_load(params)
    assert meta["rows_written"] == 1
    assert [r['a "b" c'] for r in read_rows(dest(lake_root, params))] == ["x", "y"]
    with psycopg.connect(source_db) as conn:  # the "SQL" in the name was never executed
        assert conn.execute("SELECT to_regclass('public.victim')").fetchone()[0] is not None

    refused = make_params(source_db, "bad\nname", destination_table_name="bad")
    proc, _ = run_raw(refused, tmp_path)
    assert proc.returncode == 1 and "control characters" in proc.stderr.splitlines()[-1]

    injected_watermark = dict(params, incremental_value="1; DROP TABLE victim")
    proc, _ = run_raw(injected_watermark, tmp_path)
    assert proc.returncode == 1 and "decode watermark" in proc.stderr.splitlines()[-1]
    with psycopg.connect(source_db) as conn:
        assert conn.execute("SELECT to_regclass('public.victim')").fetchone()[0] is not None


def test_full_replace_is_atomic_for_a_concurrent_reader(source_db, lake_root):
    execute(source_db, "CREATE TABLE big (id int, gen int)")
    execute(source_db, "INSERT INTO big SELECT g, 1 FROM generate_series(1, 200000) g")
    params = make_params(source_db, "big")
    materialize_load(params)
    path = dest(lake_root, params)
    execute(
        source_db, "TRUNCATE big; INSERT INTO big SELECT g, 2 FROM generate_series(1, 150000) g"
    )

    seen: set[tuple[int, tuple]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            table = DeltaTable(str(path)).to_pyarrow_table(columns=["gen"])
            gens = tuple(sorted(set(table.column("gen").to_pylist())))
            seen.add((table.num_rows, gens))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        materialize_load(params, env={"DATALOADER_BATCH_BYTES": "65536"})
    finally:
        stop.set()
        thread.join()
    seen.add((DeltaTable(str(path)).to_pyarrow_table().num_rows, (2,)))
    assert seen <= {(200000, (1,)), (150000, (2,))}, seen


def test_killed_mid_load_leaves_destination_as_it_was(source_db, lake_root, tmp_path):
    execute(source_db, "CREATE TABLE slow_src (id int, payload text)")
    execute(
        source_db,
        "INSERT INTO slow_src SELECT g, repeat('x', 50) FROM generate_series(1, 100000) g",
    )
    params = make_params(source_db, "slow_src")
    materialize_load(params)
    path = dest(lake_root, params)
    before = DeltaTable(str(path)).version()

    # The source becomes a view that blocks at row 60,000 on an advisory lock this test holds,
    # so the script is reliably in the middle of its read when it is killed.
    execute(
        source_db,
        "ALTER TABLE slow_src RENAME TO slow_data;"
        "CREATE FUNCTION dl_block(i int) RETURNS int LANGUAGE sql AS"
        " $$ SELECT i FROM (SELECT pg_advisory_lock_shared(42)) AS wait_for_test $$;"
        "CREATE VIEW slow_src AS SELECT id, payload,"
        " CASE WHEN id = 60000 THEN dl_block(id) END AS blocker FROM slow_data",
    )
    with psycopg.connect(source_db, autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(42)")
        proc, msg_file = run_raw(
            params,
            tmp_path,
            popen=True,
            env={"DATALOADER_BATCH_BYTES": "65536", "DATALOADER_PROGRESS_SECONDS": "0"},
        )
        try:
            while "rows read so far" not in msg_file.read_text():
                assert proc.poll() is None, proc.stderr.read()
                threading.Event().wait(0.05)
            while not lock_conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()[0]:
                threading.Event().wait(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            lock_conn.execute("SELECT pg_advisory_unlock(42)")

    table = DeltaTable(str(path))
    assert table.version() == before
    assert table.to_pyarrow_table().num_rows == 100000
    assert (
        "blocker" not in pa.schema(table.schema().to_arrow()).names
    )  # nothing of the new load committed


def test_existing_cluster_bootstrap_with_dbfs_stand_in_root(source_db, lake_root, tmp_path):
    """CLI-args bootstrap + DBFS context/messages under DATALOADER_DBFS_ROOT, no SparkSession."""
    execute(source_db, "CREATE TABLE dbfs_src (id int)")
    execute(source_db, "INSERT INTO dbfs_src VALUES (1), (2)")
    params = make_params(source_db, "dbfs_src")
    root = tmp_path / "dbfs"
    (root / "tmp/ctx").mkdir(parents=True)
    (root / "tmp/msgs").mkdir(parents=True)
    context = pipes_context(params, run_id="r", job_name=None)
    (root / "tmp/ctx/context.json").write_text(json.dumps(context))
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--dagster-pipes-context",
        encode_param({"path": "/tmp/ctx/context.json"}),
        "--dagster-pipes-messages",
        encode_param({"path": "/tmp/msgs"}),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    proc = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "DATALOADER_DBFS_ROOT": str(root)},
    )
    assert proc.returncode == 0, proc.stderr
    messages = [
        json.loads(line)
        for chunk in sorted((root / "tmp/msgs").glob("*.json"))
        for line in chunk.read_text().splitlines()
    ]
    (mat,) = [m for m in messages if m["method"] == "report_asset_materialization"]
    assert mat["params"]["metadata"]["rows_written"]["raw_value"] == 2
    assert len(read_rows(dest(lake_root, params))) == 2


def _mysql_or_skip():
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            database="test",
            connect_timeout=2,
            autocommit=True,
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB/MySQL on 127.0.0.1:3306 (root, db test): {exc}")


def test_mysql_source_incremental_with_exact_types(lake_root):
    conn = _mysql_or_skip()
    table = "dl_loader_test_types"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(
            f"CREATE TABLE `{table}` (id int unsigned, amount decimal(12,2), "
            "created datetime(6), stamped timestamp(6) NULL, label varchar(50), big bigint)"
        )
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(
            f"INSERT INTO `{table}` VALUES (1, 1234567890.12, '2024-01-01 00:00:00.000001',"
            " '2024-01-01 00:00:00.5', 'Grüße ☃', 9007199254740993),"
            " (2, NULL, '2024-01-02 00:00:00', NULL, NULL, NULL)"
        )
    try:
        params = {
            **make_params("host=x port=1 dbname=x user=x", table),
            "db_type": "mysql",
            "source_schema_name": "test",
            "db_config_value": {
                "host": "127.0.0.1",
                "port": 3306,
                "database": "test",
                "user": "root",
            },
            "load_strategy": "incremental",
            "incremental_column": "created",
        }
        first = materialize_load(params)
        assert first["watermark_after"] == "2024-01-02T00:00:00.000000"
        rows = read_rows(dest(lake_root, params))
        assert rows[0]["amount"] == decimal.Decimal("1234567890.12")
        assert rows[0]["created"] == dt.datetime(2024, 1, 1, 0, 0, 0, 1)
        assert rows[0]["stamped"] == dt.datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
        assert rows[0]["label"] == "Grüße ☃" and rows[0]["big"] == 9007199254740993
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO `{table}` (id, created) VALUES (3, '2024-01-03 00:00:00')")
        params["incremental_value"] = first["watermark_after"]
        second = materialize_load(params)
        assert second["rows_written"] == 1
        assert [r["id"] for r in read_rows(dest(lake_root, params))] == [1, 2, 3]
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


def test_merge_streams_and_refuses_null_or_duplicate_keys_before_committing(
    source_db, lake_root, tmp_path
):
    """The merge source is streamed into delta-rs; a key check failing mid-stream commits nothing."""
    key = 'cu"st id'  # a key column whose name needs quoting in the MERGE predicate
    quoted = '"cu""st id"'
    execute(source_db, f"CREATE TABLE keyed ({quoted} int, name text)")
    execute(source_db, "INSERT INTO keyed SELECT g, 'v1' FROM generate_series(1, 30000) g")
    params = make_params(source_db, "keyed", load_strategy="merge", merge_keys=[key])
    materialize_load(params)
    path = dest(lake_root, params)

    # Many small batches: the update of every row and the insert of one reach delta-rs streamed.
    execute(source_db, "UPDATE keyed SET name = 'v2'; INSERT INTO keyed VALUES (30001, 'v2')")
    meta = materialize_load(params, env={"DATALOADER_BATCH_BYTES": "65536"})
    assert meta["rows_read"] == 30001 and meta["rows_written"] == 30001
    table = DeltaTable(str(path)).to_pyarrow_table()
    assert table.num_rows == 30001 and set(table.column("name").to_pylist()) == {"v2"}
    version = DeltaTable(str(path)).version()

    # A duplicate key far apart in the stream (first and last batch) is only seen at its end.
    execute(source_db, "INSERT INTO keyed VALUES (1, 'dup')")
    proc, messages = run_raw(params, tmp_path, env={"DATALOADER_BATCH_BYTES": "65536"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "not unique" in last and "write destination" in last and "Traceback" not in last
    assert (
        """merge keys ['cu"st id']""" in last and "row ordinal" not in last
    )  # ours, not delta-rs'
    assert not [m for m in messages if m["method"] == "report_asset_materialization"]
    assert DeltaTable(str(path)).version() == version

    execute(
        source_db,
        f"DELETE FROM keyed WHERE name = 'dup'; UPDATE keyed SET {quoted} = NULL"
        f" WHERE {quoted} = 20000",
    )
    proc, _ = run_raw(params, tmp_path, env={"DATALOADER_BATCH_BYTES": "65536"})
    assert proc.returncode == 1 and "is NULL in 1 source row" in proc.stderr.splitlines()[-1]
    assert DeltaTable(str(path)).version() == version


# A driver that runs an entry script the way a Databricks spark_python_task may: the source
# compiled with its path and exec'd in fresh globals, without ``__file__``.
EXEC_DRIVER = textwrap.dedent(
    """
    import json, sys
    path = sys.argv[1]
    scope = {"__name__": "__main__"}
    code = None
    try:
        exec(compile(open(path).read(), path, "exec"), scope)
    except SystemExit as exc:
        code = exc.code
    try:
        import redaction
        top_level = redaction.__file__
    except ImportError:
        top_level = None
    package = sys.modules["databricks_scripts.redaction"].__file__
    print(json.dumps({"code": code, "package": package, "top_level": top_level}))
    """
)


@pytest.mark.parametrize("script", ["dataloader_pipe.py", "dataloader_retry_pipe.py"])
def test_entry_script_imports_its_package_when_exec_compiled_without_file(script, tmp_path):
    """Run from the scripts folder (so ``''`` on sys.path is that folder) through exec(compile()):
    the imports resolve to this copy of the package, and no sibling loads as a top-level module."""
    scripts = tmp_path / "Workspace" / "files" / "databricks_scripts"
    shutil.copytree(
        REPO / "databricks_scripts", scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DAGSTER_PIPES") and k != "PYTHONPATH"
    }
    proc = subprocess.run(
        [sys.executable, "-c", EXEC_DRIVER, str(scripts / script)],
        cwd=scripts,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["code"] == 2, proc.stderr  # the "not launched by Dagster Pipes" exit
    assert Path(out["package"]).resolve() == (scripts / "redaction.py").resolve()
    assert out["top_level"] is None
    if script == "dataloader_pipe.py":
        last = proc.stderr.strip().splitlines()[-1]
        assert (
            last == f"{STDERR_ERROR_PREFIX}not launched by Dagster Pipes (no bootstrap parameters)"
        )
