"""The reconciliation check (databricks_scripts/engines/arrow/verify) on real sources and Delta tables:
it fails when the destination differs from the source, whoever caused it, and stays quiet on
correct loads of every strategy, look-back re-reads, scd2 versions and soft-deleted rows."""

from __future__ import annotations

import datetime as dt

import pytest
from deltalake import DeltaTable
from test_deletes_scd2 import Loads
from test_loader_pipe import _mysql_or_skip, execute

from databricks_scripts.sources import readers as ls
from databricks_scripts.sources.base import SourceBusyError

T0 = dt.datetime(2024, 5, 1)


def _table(source_db, name="recon"):
    execute(
        source_db,
        f"CREATE TABLE {name} (id int PRIMARY KEY, v text, ts timestamp NOT NULL)",
    )
    execute(
        source_db,
        f"INSERT INTO {name} SELECT g, 'v' || g, %s::timestamp + g * interval '1 second' "
        "FROM generate_series(1, 50) g",
        (T0,),
    )


def _loads(source_db, lake_root, strategy, **params):
    keyed = strategy != "incremental" or params.get("delete_detection", "none") != "none"
    return Loads(
        source_db,
        lake_root,
        "recon",
        load_strategy=strategy,
        incremental_column="ts",
        merge_keys=["id"] if keyed else None,
        lookback_window_seconds=10,
        **params,
    )


class LosingReader(ls.PostgresReader):
    """The failure mode of the MariaDB loss: the read returns nothing although rows exist."""

    def batches(self, lower_bound, **kw):
        schema, stream = super().batches(lower_bound, **kw)
        stream.close()
        return schema, iter(())


@pytest.mark.parametrize("strategy", ["incremental", "merge", "scd2"])
def test_a_read_that_returns_nothing_while_rows_exist_fails_the_check(
    source_db, lake_root, strategy
):
    _table(source_db)
    loads = _loads(source_db, lake_root, strategy)
    assert loads.run().verification.passed
    execute(source_db, "UPDATE recon SET v = 'new', ts = ts + interval '1 day' WHERE id <= 10")
    result = loads.run(source_class=LosingReader)
    assert result.rows_read == 0
    assert not result.verification.passed
    assert "above the previous watermark" in result.verification.description, result.verification
    assert result.verification.facts["source_rows_new"] == 10


@pytest.mark.parametrize(
    ("strategy", "detection"),
    [("incremental", "none"), ("merge", "hard"), ("merge", "none"), ("scd2", "soft")],
)
def test_rows_deleted_from_the_delta_table_behind_the_loaders_back_fail_the_check(
    source_db, lake_root, strategy, detection
):
    _table(source_db)
    loads = _loads(source_db, lake_root, strategy, delete_detection=detection)
    assert loads.run().verification.passed
    # Inside the look-back scope the next load reads the rows again and repairs the table; below
    # it, nothing reads them again: the whole-table counts show the loss.
    DeltaTable(str(loads.path)).delete("id <= 5")
    result = loads.run()
    assert not result.verification.passed, result.verification
    assert "5 source row(s) missing" in result.verification.description or (
        "differ by -5" in result.verification.description
    ), result.verification


def test_keys_depth_names_a_stale_row_that_counts_cannot_see(source_db, lake_root):
    _table(source_db)
    loads = _loads(source_db, lake_root, "merge", verify_depth="keys")
    assert loads.run().verification.passed
    # Behind the loader's back: row 5 goes back to an older version (same key, older cursor,
    # below the look-back scope), so the counts still agree.
    stale = {"ts": "ts - interval '1 second'", "v": "'old'"}
    DeltaTable(str(loads.path)).update(predicate="id = 5", updates=stale)
    counted = loads.run(verify_depth="counts")
    assert counted.verification.passed  # what counts cannot see, documented in docs/loader.md
    keyed = loads.run()
    assert not keyed.verification.passed
    assert "1 source key(s) missing or stale, first: (id=5, ts=" in (
        keyed.verification.description
    ), keyed.verification


@pytest.mark.parametrize(
    ("strategy", "detection"),
    [
        ("incremental", "none"),
        ("incremental", "hard"),
        ("merge", "none"),
        ("merge", "soft"),
        ("merge", "hard"),
        ("scd2", "none"),
        ("scd2", "soft"),
        ("scd2", "hard"),
        ("full", "none"),
    ],
)
@pytest.mark.parametrize("depth", ["counts", "keys"])
def test_twenty_correct_loads_of_a_changing_table_stay_quiet(
    source_db, lake_root, strategy, detection, depth
):
    _table(source_db)
    loads = _loads(source_db, lake_root, strategy, delete_detection=detection, verify_depth=depth)
    for n in range(20):
        result = loads.run()
        assert result.verification.passed, (n, result.verification)
        # Changes between loads: updates (inside and beyond the look-back), inserts, a delete,
        # a late row inside the look-back window, and equal cursor values.
        step = dt.timedelta(minutes=n + 1)
        execute(
            source_db,
            "UPDATE recon SET v = v || '+', ts = %s WHERE id %% 7 = %s",
            (T0 + dt.timedelta(days=1) + step, n % 7),
        )
        execute(
            source_db,
            "INSERT INTO recon VALUES (%s, 'new', %s), (%s, 'late', %s)",
            (
                1000 + 2 * n,
                T0 + dt.timedelta(days=1) + step,
                1001 + 2 * n,
                T0 + dt.timedelta(days=1) + step - dt.timedelta(seconds=5),
            ),
        )
        if n % 3 == 0 and detection != "none":
            execute(source_db, "DELETE FROM recon WHERE id = (SELECT min(id) FROM recon)")


def test_the_reader_refuses_a_statement_while_a_result_still_streams(source_db):
    from test_loader_pipe import make_params

    from databricks_scripts.load.params import parse_load_spec

    _table(source_db)
    spec = parse_load_spec(make_params(source_db, "recon", incremental_column="ts"))
    reader = ls.PostgresReader(spec, None, batch_bytes=1 << 10, batch_rows=5)
    try:
        reader.schema()
        _, stream = reader.batches(None)
        first = next(stream)
        with pytest.raises(SourceBusyError, match="one result at a time"):
            reader.count_rows()
        assert first.num_rows + sum(b.num_rows for b in stream) == 50  # nothing was dropped
        assert reader.count_rows() == (50,)  # the stream is consumed: the next statement runs
    finally:
        reader.close()


def test_mysql_newcomer_scenario_merge_with_soft_deletes_loads_every_change(lake_root):
    """Issue scenario: a MariaDB merge table on (order_id, line_no), DATETIME(6) cursor, soft
    delete detection. Every load after the first read 0 rows and stayed green."""
    conn = _mysql_or_skip()
    table = "dl_recon_orders"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(
            f"CREATE TABLE `{table}` (order_id int, line_no int, qty int, "
            "changed_at datetime(6), PRIMARY KEY (order_id, line_no))"
        )
        cur.execute(
            f"INSERT INTO `{table}` SELECT seq DIV 10, seq MOD 10, seq, "
            "TIMESTAMP('2024-01-01') + INTERVAL seq SECOND FROM seq_0_to_1999"
        )
    try:
        loads = Loads(
            "host=x port=1 dbname=x user=x",
            lake_root,
            table,
            db_type="mysql",
            source_schema_name="test",
            db_config_value={"host": "127.0.0.1", "port": 3306, "database": "test", "user": "root"},
            load_strategy="merge",
            merge_keys=["order_id", "line_no"],
            incremental_column="changed_at",
            delete_detection="soft",
        )
        first = loads.run(source_class=ls.MySQLReader)
        assert first.rows_read == 2000 and first.verification.passed
        with conn.cursor() as cur:
            cur.execute(
                f"UPDATE `{table}` SET qty = -qty, changed_at = '2024-02-01' WHERE order_id < 8"
            )
            cur.execute(
                f"INSERT INTO `{table}` SELECT 500 + seq DIV 10, seq MOD 10, 1, '2024-02-02' "
                "FROM seq_0_to_49"
            )
            cur.execute(f"DELETE FROM `{table}` WHERE order_id BETWEEN 100 AND 102")
        second = loads.run(source_class=ls.MySQLReader)
        assert second.rows_read == 130, second
        assert second.verification.passed, second.verification
        dest = DeltaTable(str(loads.path)).to_pyarrow_table().to_pylist()
        live = {(r["order_id"], r["line_no"]): r["qty"] for r in dest if not r["__DELETED_AT"]}
        with conn.cursor() as cur:
            cur.execute(f"SELECT order_id, line_no, qty FROM `{table}`")
            source = {(a, b): c for a, b, c in cur.fetchall()}
        assert live == source
        assert sum(1 for r in dest if r["__DELETED_AT"]) == 30
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


def test_local_delta_tables_are_scanned_through_arrows_own_filesystem(tmp_path):
    """deltalake's Python filesystem handler made a process that scanned a table abort at exit
    now and then (exit -6); a local table is read with pyarrow's LocalFileSystem instead."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    from deltalake import write_deltalake

    from databricks_scripts.engines.arrow.delta_dataset import delta_dataset, local_path

    write_deltalake(str(tmp_path / "t"), pa.table({"id": [1, 2, 3]}))
    dataset = delta_dataset(DeltaTable(str(tmp_path / "t")))
    assert isinstance(dataset.filesystem, pafs.SubTreeFileSystem)
    assert isinstance(dataset.filesystem.base_fs, pafs.LocalFileSystem)
    assert dataset.count_rows(filter=pa.compute.field("id") > 1) == 2
    assert local_path("file:///data/lake/t") == "/data/lake/t"
    assert local_path("/data/lake/t") == "/data/lake/t"
    assert local_path("s3://bucket/t") is None


def test_a_merge_bigger_than_a_default_chunk_is_streamed_and_lands_whole(source_db, lake_root):
    """A MERGE of more rows than a default chunk (a row's own DATALOADER_MERGE_CHUNK_ROWS) goes
    to delta-rs as a stream, not whole (engines.arrow.merge): every row lands, the check passes."""
    from databricks_scripts.engines.arrow.merge import DEFAULT_MERGE_CHUNK_ROWS

    rows = DEFAULT_MERGE_CHUNK_ROWS + 10
    execute(source_db, "CREATE TABLE big (id int PRIMARY KEY, v text, ts timestamp NOT NULL)")
    execute(
        source_db,
        "INSERT INTO big SELECT g, 'old', %s::timestamp + g * interval '1 second'"
        " FROM generate_series(1, %s) g",
        (T0, rows),
    )
    loads = Loads(
        source_db,
        lake_root,
        "big",
        load_strategy="merge",
        incremental_column="ts",
        merge_keys=["id"],
    )
    for _ in range(2):
        result = loads.run(engine_args={"merge_chunk_rows": 2 * rows})
        assert result.verification.passed, result.verification.description
        assert result.rows_read == rows
        # Every row changes, past the watermark: the second load is one MERGE of all of them.
        execute(source_db, "UPDATE big SET v = 'new', ts = ts + interval '1 year'")
    table = DeltaTable(str(loads.path)).to_pyarrow_table(columns=["v"])
    assert table.num_rows == rows
    assert set(table.column("v").to_pylist()) == {"new"}


class StoppingReader(ls.PostgresReader):
    """A stop (SIGTERM, terminate) arriving once the rows are read: the upsert's MERGE is what
    meets it, while its chunk is read from the spool."""

    stop = None

    def batches(self, lower_bound, **kw):
        schema, stream = super().batches(lower_bound, **kw)

        def then_stop():
            yield from stream
            self.stop.requested.set()

        return schema, then_stop()


def test_a_stop_met_by_a_merge_is_a_stop_and_commits_nothing(source_db, lake_root):
    """A default-sized chunk is handed to delta-rs whole, read by the loader: a stop raised
    while it is read is the loader's StopRequested, not a panic inside delta-rs (which is what a
    stream it reads itself turns the error into), and nothing is committed."""
    from databricks_scripts.load.interrupt import StopRequested, StopSignal

    _table(source_db)
    loads = _loads(source_db, lake_root, "merge")
    loads.run()
    version = DeltaTable(str(loads.path)).version()
    execute(source_db, "UPDATE recon SET v = 'new', ts = ts + interval '1 year' WHERE id <= 10")

    class Stopping(StoppingReader):
        stop = StopSignal()  # not installed: tripped as the handler would

    with pytest.raises(StopRequested):
        loads.run(source_class=Stopping, engine_args={"stop": Stopping.stop})
    assert DeltaTable(str(loads.path)).version() == version  # nothing committed
