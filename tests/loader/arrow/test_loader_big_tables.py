"""Big tables on the Arrow engine: upserts that follow the change, chunked MERGEs, resumable first loads.

Everything runs the real script against the real PostgreSQL into real Delta tables; the kills are
real SIGKILLs of the script after it was seen to commit.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from test_loader_pipe import dest, make_params, run_raw

from databricks_scripts.contract import RECORDED_METADATA_ID_PARAM
from databricks_scripts.engines.arrow.first_load import _CursorChunks
from databricks_scripts.engines.arrow.merge import key_parts
from databricks_scripts.load.commits import KEY_COMPLETE, KEY_METADATA_ID, KEY_RESUMABLE

ROWS = 6000


def sql(conninfo: str, statement: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement)


def source_rows(conninfo: str, table: str) -> Counter:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(f"SELECT id, label, updated_at FROM {table}").fetchall()
    return Counter(rows)


def destination_rows(path: Path) -> Counter:
    table = DeltaTable(str(path)).to_pyarrow_table(columns=["id", "label", "updated_at"])
    return Counter(tuple(r.values()) for r in table.to_pylist())


def metadata(messages: list[dict]) -> dict:
    for m in messages:
        if m["method"] == "report_asset_materialization":
            return {k: v["raw_value"] for k, v in m["params"]["metadata"].items()}
    raise AssertionError(f"no materialization: {json.dumps(messages)[-2000:]}")


def load(params: dict, tmp_path: Path, env: dict) -> dict:
    proc, messages = run_raw(params, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return metadata(messages)


def kill_after_commits(params: dict, tmp_path: Path, env: dict, path: Path, commits: int) -> int:
    """Start the script, SIGKILL it once the table has ``commits`` more versions; return them."""
    start = DeltaTable(str(path)).version() if (path / "_delta_log").exists() else -1
    proc, _ = run_raw(params, tmp_path, env, popen=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            log = path / "_delta_log"
            done = len(list(log.glob("*.json"))) - 1 - start if log.exists() else 0
            if done >= commits:
                os.kill(proc.pid, signal.SIGSTOP)  # no further commit while we look
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the load ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return DeltaTable(str(path)).version() - start


def make_source(conninfo: str, table: str, rows: int = ROWS) -> None:
    sql(conninfo, f"DROP TABLE IF EXISTS {table}")
    sql(conninfo, f"CREATE TABLE {table} (id int PRIMARY KEY, label text, updated_at int)")
    # Repeated cursor values (a chunk must not split one) and a few NULL cursors.
    sql(
        conninfo,
        f"INSERT INTO {table} SELECT g, 'row ' || g, CASE WHEN g % 1000 = 0 THEN NULL "
        f"ELSE g / 7 END FROM generate_series(1, {rows}) g",
    )
    sql(conninfo, f"ANALYZE {table}")


def keyed_params(source_db: str, table: str, **overrides) -> dict:
    return make_params(
        source_db,
        table,
        load_strategy="incremental",
        incremental_column="updated_at",
        merge_keys=["id"],
        **overrides,
    )


SMALL_FILES = {"DATALOADER_TARGET_FILE_BYTES": str(16 * 1024)}


def test_new_keys_are_appended_and_updates_rewrite_only_the_files_in_their_range(
    source_db, lake_root, tmp_path
):
    make_source(source_db, "big_upsert")
    params = keyed_params(source_db, "big_upsert")
    first = load(params, tmp_path, SMALL_FILES)
    path = dest(lake_root, params)
    files = len(DeltaTable(str(path)).file_uris())
    assert files >= 5

    # 1% new keys: appended, no MERGE, no file rewritten.
    sql(
        source_db,
        f"INSERT INTO big_upsert SELECT g, 'new ' || g, 100000 + g "
        f"FROM generate_series({ROWS + 1}, {ROWS + 60}) g",
    )
    params = {**params, "metadata_id": 2, "incremental_value": first["watermark_after"]}
    second = load(params, tmp_path, SMALL_FILES)
    table = DeltaTable(str(path))
    newest = table.history(1)[0]
    assert newest["operation"] == "WRITE" and newest["operationParameters"]["mode"] == "Append"
    assert newest[KEY_METADATA_ID] == "2" and KEY_COMPLETE not in newest
    assert second["rows_written"] == 60
    assert destination_rows(path) == source_rows(source_db, "big_upsert")

    # Updates in a narrow key range plus new keys: one MERGE that rewrites only that range.
    sql(
        source_db,
        "UPDATE big_upsert SET label = 'changed', updated_at = 200000 WHERE id BETWEEN 10 AND 20",
    )
    sql(source_db, f"INSERT INTO big_upsert VALUES ({ROWS + 100}, 'newer', 200000)")
    params = {**params, "metadata_id": 3, "incremental_value": second["watermark_after"]}
    third = load(params, tmp_path, SMALL_FILES)
    newest = DeltaTable(str(path)).history(1)[0]
    assert newest["operation"] == "MERGE"
    metrics = newest["operationMetrics"]
    assert metrics["num_target_rows_updated"] == 11 and metrics["num_target_rows_inserted"] == 1
    assert metrics["num_target_files_removed"] <= 2 < files
    assert third["rows_written"] == 12
    assert destination_rows(path) == source_rows(source_db, "big_upsert")


def test_chunked_merge_commits_in_key_order_and_a_killed_one_is_repeated_not_reconciled(
    source_db, lake_root, tmp_path
):
    make_source(source_db, "big_merge", rows=20000)
    params = keyed_params(source_db, "big_merge")
    env = {**SMALL_FILES, "DATALOADER_MERGE_CHUNK_ROWS": "1000"}
    first = load(params, tmp_path, env)
    path = dest(lake_root, params)
    sql(
        source_db,
        "UPDATE big_merge SET label = label || ' v2', updated_at = coalesce(updated_at, 0) + 10000",
    )
    params = {
        **params,
        "metadata_id": 2,
        "incremental_value": first["watermark_after"],
        RECORDED_METADATA_ID_PARAM: 1,
    }
    made = kill_after_commits(params, tmp_path, env, path, commits=2)
    history = DeltaTable(str(path)).history(made)
    assert made >= 2 and all(h["operation"] == "MERGE" for h in history)
    assert all(h[KEY_METADATA_ID] == "2" and h[KEY_COMPLETE] == "false" for h in history)
    assert destination_rows(path) != source_rows(source_db, "big_merge")  # half upserted

    # The rerun (attempt 2 never recorded) repeats the upsert instead of reconciling.
    again = load({**params, "metadata_id": 3}, tmp_path, env)
    assert "reconciled_metadata_id" not in again
    assert again["rows_written"] == 20000
    assert again["watermark_after"] == str(20000 // 7 + 10000)
    assert destination_rows(path) == source_rows(source_db, "big_merge")
    table = DeltaTable(str(path))
    ours = [h for h in table.history(100) if h.get(KEY_METADATA_ID) == "3"]
    assert len(ours) >= 20  # 1000 rows per commit
    assert all(h[KEY_COMPLETE] == "false" for h in ours[1:]) and KEY_COMPLETE not in ours[0]
    assert table.transaction_version("dataloader:1") == 3


def test_resumable_first_load_killed_after_a_chunk_resumes_and_equals_the_source(
    source_db, lake_root, tmp_path
):
    make_source(source_db, "big_first", rows=20000)
    params = make_params(
        source_db,
        "big_first",
        load_strategy="incremental",
        incremental_column="updated_at",
        **{RECORDED_METADATA_ID_PARAM: None},
    )
    env = {
        "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS": "1000",
        "DATALOADER_FIRST_LOAD_CHUNK_ROWS": "500",
        "DATALOADER_BATCH_BYTES": str(16 * 1024),
    }
    path = dest(lake_root, params)
    made = kill_after_commits(params, tmp_path, env, path, commits=3)
    table = DeltaTable(str(path))
    assert made >= 3 and table.history(1)[0][KEY_RESUMABLE] == "first_load"
    loaded = destination_rows(path)
    assert 0 < sum(loaded.values()) < 20000
    assert sum(n for (_, _, c), n in loaded.items() if c is None) == 20  # NULL cursors first

    resumed = load({**params, "metadata_id": 2}, tmp_path, env)
    assert destination_rows(path) == source_rows(source_db, "big_first")
    # The resume rewrites the 20 NULL-cursor rows (they replace the destination's), then appends.
    assert resumed["rows_written"] == 20000 - sum(loaded.values()) + 20
    assert resumed["watermark_after"] == str(19999 // 7)
    assert resumed["load_strategy"] == "full"


FIRST_LOAD_ENV = {
    "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS": "1000",
    "DATALOADER_FIRST_LOAD_CHUNK_ROWS": "500",
    "DATALOADER_BATCH_BYTES": str(16 * 1024),
}


def _first_load_params(source_db: str, table: str, destination: str, **overrides) -> dict:
    return make_params(
        source_db,
        table,
        load_strategy="incremental",
        incremental_column="updated_at",
        destination_table_name=destination,
        **{RECORDED_METADATA_ID_PARAM: None},
        **overrides,
    )


def _add_null_cursor_row(conninfo: str, table: str, row_id: int) -> None:
    sql(conninfo, f"INSERT INTO {table} VALUES ({row_id}, 'late null {row_id}', NULL)")


def test_a_first_load_killed_at_each_chunk_resumes_with_null_cursor_rows_added_meanwhile(
    source_db, lake_root, tmp_path
):
    # Before: the resume read only cursor > max, so a NULL-cursor row inserted between the kill
    # and the resume was never loaded (20,001 rows against 20,002).
    make_source(source_db, "resume_nulls", rows=3000)
    one_shot = _first_load_params(source_db, "resume_nulls", "resume_nulls_one_shot")
    load(one_shot, tmp_path, FIRST_LOAD_ENV)
    chunks = DeltaTable(str(dest(lake_root, one_shot))).version() + 1
    assert destination_rows(dest(lake_root, one_shot)) == source_rows(source_db, "resume_nulls")
    assert chunks >= 5

    # Killed after each chunk but the last (the last: see below), a NULL-cursor row added, resumed.
    for k in range(1, chunks - 1):
        params = _first_load_params(source_db, "resume_nulls", f"resume_nulls_{k}")
        path = dest(lake_root, params)
        made = kill_after_commits(params, tmp_path, FIRST_LOAD_ENV, path, commits=k)
        assert made >= k
        _add_null_cursor_row(source_db, "resume_nulls", 100_000 + k)
        load({**params, "metadata_id": 2}, tmp_path, FIRST_LOAD_ENV)
        assert destination_rows(path) == source_rows(source_db, "resume_nulls"), f"killed at {k}"
        assert DeltaTable(str(path)).history(1)[0][KEY_RESUMABLE] == "first_load"

    # Every chunk committed but the success never recorded: the rerun resumes (nothing above the
    # cursor), and the NULL-cursor row added since is loaded too.
    _add_null_cursor_row(source_db, "resume_nulls", 200_000)
    resumed = load({**one_shot, "metadata_id": 2}, tmp_path, FIRST_LOAD_ENV)
    assert destination_rows(dest(lake_root, one_shot)) == source_rows(source_db, "resume_nulls")
    assert resumed["load_strategy"] == "full"


def test_a_resume_drops_null_cursor_rows_the_source_no_longer_has(source_db, lake_root, tmp_path):
    make_source(source_db, "resume_gone", rows=3000)
    params = _first_load_params(source_db, "resume_gone", "resume_gone")
    path = dest(lake_root, params)
    kill_after_commits(params, tmp_path, FIRST_LOAD_ENV, path, commits=2)
    sql(source_db, "DELETE FROM resume_gone WHERE updated_at IS NULL")
    load({**params, "metadata_id": 2}, tmp_path, FIRST_LOAD_ENV)
    assert destination_rows(path) == source_rows(source_db, "resume_gone")


def test_full_strategy_keeps_its_single_commit(source_db, lake_root, tmp_path):
    make_source(source_db, "big_full", rows=3000)
    params = make_params(source_db, "big_full", incremental_column="updated_at")
    env = {
        "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS": "10",
        "DATALOADER_FIRST_LOAD_CHUNK_ROWS": "5",
    }
    load(params, tmp_path, env)
    assert DeltaTable(str(dest(lake_root, params))).version() == 0


def test_cursor_chunks_end_only_where_the_cursor_changes():
    values = [None, None, 1, 1, 2, 2, 2, 3, 4, 4, 5]
    batches = [
        pa.record_batch({"c": pa.array(values[i : i + 3], pa.int64())})
        for i in range(0, len(values), 3)
    ]
    chunks = _CursorChunks(iter(batches), "c", 3)
    got = []
    while not chunks.done:
        got.append([v for b in chunks.chunk() for v in b.column(0).to_pylist()])
    assert [v for chunk in got for v in chunk] == values
    assert got[0] == [None, None, 1, 1]  # NULLs never split, 1 not split
    for before, after in itertools.pairwise(got):
        if after:
            assert before[-1] != after[0]


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([(1, 10, 5), (11, 20, 5), (30, 40, 5)], [(1, 10), (11, 20), (30, 40)]),
        ([(1, 10, 5), (5, 20, 5), (30, 40, 5)], [(1, 20), (30, 40)]),  # overlap: one part
        ([], []),
    ],
)
def test_key_parts_are_disjoint_ranges(ranges, expected):
    assert key_parts(ranges) == expected


def test_mysql_first_load_goes_in_cursor_ordered_chunks(lake_root, tmp_path):
    from test_loader_pipe import _mysql_or_skip

    conn = _mysql_or_skip()
    table = "dl_big_first"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(f"CREATE TABLE `{table}` (id int primary key, label text, updated_at int)")
        cur.execute(
            f"INSERT INTO `{table}` SELECT seq, CONCAT('row ', seq), "
            "IF(seq % 100 = 0, NULL, seq DIV 3) FROM seq_1_to_2000"
        )
        cur.execute(f"ANALYZE TABLE `{table}`")
        cur.execute(f"SELECT id, label, updated_at FROM `{table}`")
        expected = Counter(cur.fetchall())
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
            "incremental_column": "updated_at",
        }
        env = {
            "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS": "100",
            "DATALOADER_FIRST_LOAD_CHUNK_ROWS": "300",
            "DATALOADER_BATCH_ROWS": "128",
        }
        result = load(params, tmp_path, env)
        path = dest(lake_root, params)
        history = DeltaTable(str(path)).history()
        assert len(history) >= 5 and all(h[KEY_RESUMABLE] == "first_load" for h in history)
        assert destination_rows(path) == expected
        assert result["watermark_after"] == str(1999 // 3)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()
