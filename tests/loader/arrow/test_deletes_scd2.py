"""Delete detection (soft/hard) and SCD type 2 on the Arrow engine: real PostgreSQL -> real Delta.

Each test runs a sequence of loads over insert/update/delete/re-insert edits of the source and
compares the whole destination with the expected rows exactly (versions, times, flags). One
sequence runs through the real script (Dagster Pipes, subprocess); the others call the engine the
script calls (``run_arrow_load`` on a real PostgreSQL reader), which is the same code minus the
process start.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from deltalake import DeltaTable
from helpers import add_row
from test_loader_pipe import dest, execute, make_params, run_raw

from databricks_scripts.contract import (
    DELETED_AT,
    END_AT,
    ERROR_MESSAGE_KEY,
    RECORDED_METADATA_ID_PARAM,
    START_AT,
)
from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.sources import readers as ls

UTC = dt.UTC


def ts(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, tzinfo=UTC)


class Loads:
    """Runs successive loads of one table as the asset would: a new attempt each time, the
    previous one recorded, the watermark handed back."""

    def __init__(self, source_db, lake_root, table, **params):
        self.source_db, self.lake_root = source_db, lake_root
        self.params = make_params(source_db, table, **params)
        self.attempt = 0
        self.watermark = None
        self.last = None

    def run(self, source_class=None, engine_args=None, **overrides):
        """One load; ``engine_args`` go to ``run_arrow_load`` (``stop``, ``merge_chunk_rows``)."""
        self.attempt += 1
        params = {
            **self.params,
            "metadata_id": self.attempt,
            "incremental_value": self.watermark,
            RECORDED_METADATA_ID_PARAM: self.attempt - 1 or None,
            **overrides,
        }
        spec = parse_load_spec(params)
        reader_class = source_class or ls.PostgresReader
        source = reader_class(spec, None, batch_bytes=1 << 20, batch_rows=100)
        try:  # closed as dataloader_pipe closes it: a failed load's own error is reported
            started = dt.datetime.now(UTC)
            result = la.run_arrow_load(
                spec, source, self.path, log=lambda _m: None, **(engine_args or {})
            )
            self.last = (started, dt.datetime.now(UTC))
        except BaseException:
            try:
                source.close()
            except Exception:  # noqa: BLE001, S110
                pass
            raise
        source.close()
        self.watermark = result.watermark_after
        return result

    @property
    def path(self):
        return dest(self.lake_root, self.params)

    def rows(self, order=("id", START_AT)):
        rows = DeltaTable(str(self.path)).to_pyarrow_table().to_pylist()
        present = [k for k in order if rows and k in rows[0]]
        return sorted(rows, key=lambda r: tuple((r[k] is None, r[k]) for k in present))

    def during_last(self, value) -> bool:
        return value is not None and self.last[0] <= value <= self.last[1]


def test_soft_deletes_through_the_script_mark_clear_and_respect_the_floor(
    source_db, lake_root, tmp_path
):
    execute(source_db, "CREATE TABLE cust (id int PRIMARY KEY, name text, score numeric(5,1))")
    execute(source_db, "INSERT INTO cust VALUES (1,'a',1.0),(2,'b',NULL),(3,'c',3.0),(4,'d',4.0)")
    params = make_params(
        source_db, "cust", load_strategy="merge", merge_keys=["id"], delete_detection="soft"
    )

    def run(**over):
        proc, messages = run_raw({**params, **over}, tmp_path)
        return proc, messages

    def table():
        rows = DeltaTable(str(dest(lake_root, params))).to_pyarrow_table().to_pylist()
        return sorted(rows, key=lambda r: r["id"])

    proc, _ = run()
    assert proc.returncode == 0, proc.stderr
    assert [r[DELETED_AT] for r in table()] == [None] * 4

    execute(source_db, "DELETE FROM cust WHERE id = 2; UPDATE cust SET score = NULL WHERE id = 3")
    before = dt.datetime.now(UTC)
    proc, _ = run(metadata_id=2)
    after = dt.datetime.now(UTC)
    assert proc.returncode == 0, proc.stderr
    rows = table()
    assert [(r["id"], r["name"], r["score"]) for r in rows] == [
        (1, "a", 1),
        (2, "b", None),
        (3, "c", None),
        (4, "d", 4),
    ]
    assert rows[1][DELETED_AT] is not None and before <= rows[1][DELETED_AT] <= after
    assert [r[DELETED_AT] for r in rows if r["id"] != 2] == [None] * 3

    # A key that comes back clears the mark and takes the new values.
    execute(source_db, "INSERT INTO cust VALUES (2, 'b again', 2.5)")
    assert run(metadata_id=3)[0].returncode == 0
    assert [(r["id"], r["name"], r[DELETED_AT]) for r in table()][1] == (2, "b again", None)

    # The floor: 3 of the 4 live rows gone is refused, nothing is marked.
    execute(source_db, "DELETE FROM cust WHERE id <> 1")
    version = DeltaTable(str(dest(lake_root, params))).version()
    proc, messages = run(metadata_id=4)
    assert proc.returncode != 0
    error = next(
        m["params"]["payload"][ERROR_MESSAGE_KEY]
        for m in messages
        if m.get("method") == "report_custom_message"
    )
    assert "delete detection refused" in error and "3 of the destination's 4 live rows" in error
    assert "delete_max_fraction 0.5" in error
    assert DeltaTable(str(dest(lake_root, params))).version() == version
    assert [r[DELETED_AT] for r in table()] == [None] * 4

    # Raised for one load, it goes through.
    assert run(metadata_id=5, delete_max_fraction=1)[0].returncode == 0
    assert [r["id"] for r in table() if r[DELETED_AT] is None] == [1]


def test_hard_deletes_with_incremental_reading(source_db, lake_root):
    execute(source_db, "CREATE TABLE ord (id int PRIMARY KEY, v text, ts timestamptz)")
    execute(
        source_db,
        "INSERT INTO ord VALUES (1,'a','2024-01-01'),(2,'b','2024-01-01'),(3,'c','2024-01-01'),"
        "(4,'d','2024-01-01')",
    )
    loads = Loads(
        source_db,
        lake_root,
        "ord",
        load_strategy="incremental",
        incremental_column="ts",
        merge_keys=["id"],
        delete_detection="hard",
    )
    loads.run()
    execute(source_db, "UPDATE ord SET v = 'b2', ts = '2024-01-02' WHERE id = 2")
    execute(source_db, "DELETE FROM ord WHERE id = 3")
    result = loads.run()
    assert result.rows_read == 1  # only the changed row was read; the deletes came from the keys
    assert result.applied_strategy == "incremental"
    assert [(r["id"], r["v"]) for r in loads.rows()] == [(1, "a"), (2, "b2"), (4, "d")]
    assert loads.watermark.startswith("2024-01-02")
    execute(source_db, "INSERT INTO ord VALUES (3, 'c again', '2024-01-03')")
    loads.run()
    assert [(r["id"], r["v"]) for r in loads.rows()] == [
        (1, "a"),
        (2, "b2"),
        (3, "c again"),
        (4, "d"),
    ]
    assert DELETED_AT not in loads.rows()[0]


def _scd2_rows(loads):
    return [(r["id"], r["v"], r[START_AT], r[END_AT], r.get(DELETED_AT)) for r in loads.rows()]


def test_scd2_with_an_incremental_cursor_keeps_every_version_and_soft_deletes(source_db, lake_root):
    execute(source_db, "CREATE TABLE dim (id int PRIMARY KEY, v text, n int, ts timestamptz)")
    execute(
        source_db,
        "INSERT INTO dim VALUES (1,'a',NULL,'2024-01-01'),(2,'b',2,'2024-01-01'),"
        "(3,'c',3,'2024-01-01')",
    )
    loads = Loads(
        source_db,
        lake_root,
        "dim",
        load_strategy="scd2",
        incremental_column="ts",
        merge_keys=["id"],
        delete_detection="soft",
        lookback_window_seconds=7 * 86400,
    )
    loads.run()
    assert _scd2_rows(loads) == [
        (1, "a", ts(1), None, None),
        (2, "b", ts(1), None, None),
        (3, "c", ts(1), None, None),
    ]
    # Re-read through the look-back: 1 (n NULL = NULL) and 3 unchanged write nothing;
    # 2: value -> NULL is a change.
    execute(source_db, "UPDATE dim SET n = NULL, ts = '2024-01-02 06:00' WHERE id = 2")
    result = loads.run()
    assert result.rows_read == 3  # look-back re-reads everything: unchanged rows write nothing
    assert _scd2_rows(loads) == [
        (1, "a", ts(1), None, None),
        (2, "b", ts(1), ts(2, 6), None),
        (2, "b", ts(2, 6), None, None),
        (3, "c", ts(1), None, None),
    ]
    assert [r["n"] for r in loads.rows() if r["id"] == 2] == [2, None]
    # A delete closes the current version and marks it; history stays.
    execute(source_db, "DELETE FROM dim WHERE id = 3")
    loads.run()
    rows = _scd2_rows(loads)
    assert rows[-1][:3] == (3, "c", ts(1))
    assert loads.during_last(rows[-1][3]) and rows[-1][4] == rows[-1][3]
    # A re-insert starts a new current version; nothing else changes.
    execute(source_db, "INSERT INTO dim VALUES (3, 'c2', 3, '2024-01-05')")
    loads.run()
    assert _scd2_rows(loads)[-1] == (3, "c2", ts(5), None, None)
    assert len(loads.rows()) == 5
    # Nothing changed: no commit at all.
    version = DeltaTable(str(loads.path)).version()
    assert loads.run().committed is False
    assert DeltaTable(str(loads.path)).version() == version


def test_scd2_full_reading_hard_deletes_close_and_new_columns_version(source_db, lake_root):
    execute(source_db, "CREATE TABLE prod (id int PRIMARY KEY, v text)")
    execute(source_db, "INSERT INTO prod VALUES (1,'a'),(2,'b'),(3,'c')")
    loads = Loads(
        source_db,
        lake_root,
        "prod",
        load_strategy="scd2",
        merge_keys=["id"],
        delete_detection="hard",
    )
    loads.run()
    first = loads.rows()
    assert all(loads.during_last(r[START_AT]) and r[END_AT] is None for r in first)
    assert DELETED_AT not in first[0]
    execute(source_db, "UPDATE prod SET v = 'b2' WHERE id = 2; DELETE FROM prod WHERE id = 3")
    loads.run()
    rows = loads.rows()
    assert [(r["id"], r["v"]) for r in rows] == [(1, "a"), (2, "b"), (2, "b2"), (3, "c")]
    closed_b, new_b, closed_c = rows[1], rows[2], rows[3]
    assert loads.during_last(new_b[START_AT]) and closed_b[END_AT] == new_b[START_AT]
    assert loads.during_last(closed_c[END_AT])  # closed, never deleted
    # A new column: rows with a value in it get a version; a NULL there is no change.
    execute(source_db, "ALTER TABLE prod ADD COLUMN tier text")
    execute(source_db, "UPDATE prod SET tier = 'gold' WHERE id = 1")
    loads.run()
    current = [(r["id"], r["v"], r["tier"]) for r in loads.rows() if r[END_AT] is None]
    assert current == [(1, "a", "gold"), (2, "b2", None)]
    assert len(loads.rows()) == 5


def test_scd2_refuses_a_key_changing_type(source_db, lake_root):
    execute(source_db, "CREATE TABLE kt (id bigint PRIMARY KEY, v text)")
    execute(source_db, "INSERT INTO kt VALUES (1,'a')")
    loads = Loads(source_db, lake_root, "kt", load_strategy="scd2", merge_keys=["id"])
    loads.run()
    # int widens into bigint (allowed for other columns), but a key must keep its type.
    execute(source_db, "ALTER TABLE kt ALTER COLUMN id TYPE int")
    version = DeltaTable(str(loads.path)).version()
    with pytest.raises(la.LoadStepError, match="merge key 'id' changed type: int64 .* int32"):
        loads.run()
    assert DeltaTable(str(loads.path)).version() == version
    # The documented way on: a forced reload archives the old history and starts a new one.
    loads.run(force_full_reload=True)
    assert len(list(loads.path.parent.glob("kt__archived_*"))) == 1
    assert [(r["id"], r["v"]) for r in loads.rows()] == [(1, "a")]


def test_scd2_key_changing_type_then_a_forced_reload_archives_the_history_and_starts_anew(
    source_db, lake_root
):
    # Before: the refusal said to reload, and force_full_reload failed the same way on scd2.
    execute(source_db, "CREATE TABLE kc (id bigint PRIMARY KEY, v text)")
    execute(source_db, "INSERT INTO kc VALUES (1,'a'),(2,'b')")
    loads = Loads(source_db, lake_root, "kc", load_strategy="scd2", merge_keys=["id"])
    loads.run()
    execute(source_db, "UPDATE kc SET v = 'b2' WHERE id = 2")
    loads.run()
    old_versions = [(r["id"], r["v"]) for r in loads.rows()]
    assert old_versions == [(1, "a"), (2, "b"), (2, "b2")]
    execute(source_db, "ALTER TABLE kc ALTER COLUMN id TYPE text")
    with pytest.raises(la.LoadStepError, match="force_full_reload"):
        loads.run()

    loads.run(force_full_reload=True)

    [archive] = sorted(loads.path.parent.glob("kc__archived_*"))
    archived = DeltaTable(str(archive)).to_pyarrow_table().to_pylist()
    assert sorted((r["id"], r["v"]) for r in archived) == old_versions
    rows = loads.rows()
    assert [(r["id"], r["v"], r[END_AT]) for r in rows] == [("1", "a", None), ("2", "b2", None)]
    assert all(loads.during_last(r[START_AT]) for r in rows)
    # The new history goes on as any scd2 table (no forced reload any more).
    execute(source_db, "UPDATE kc SET v = 'a2' WHERE id = '1'")
    loads.run()
    assert [(r["id"], r["v"]) for r in loads.rows()] == [("1", "a"), ("1", "a2"), ("2", "b2")]
    assert len(list(loads.path.parent.glob("kc__archived_*"))) == 1


def test_a_forced_reload_of_scd2_without_a_type_change_keeps_its_history(source_db, lake_root):
    execute(source_db, "CREATE TABLE kf (id int PRIMARY KEY, v text)")
    execute(source_db, "INSERT INTO kf VALUES (1,'a')")
    loads = Loads(source_db, lake_root, "kf", load_strategy="scd2", merge_keys=["id"])
    loads.run()
    execute(source_db, "UPDATE kf SET v = 'a2'")
    loads.run(force_full_reload=True)
    assert [(r["id"], r["v"]) for r in loads.rows()] == [(1, "a"), (1, "a2")]
    assert not list(loads.path.parent.glob("kf__archived_*"))


class _KeysReadFails(ls.PostgresReader):
    """A real reader whose key-snapshot connection is terminated by the server mid-load."""

    def key_batches(self, keys):
        stmt, reader = self._execute("SELECT pg_backend_pid()")
        pid = reader.read_all().column(0)[0].as_py()
        reader.close()
        stmt.close()
        with psycopg.connect(self.conninfo_for_tests, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return super().key_batches(keys)


@pytest.mark.parametrize("strategy", ["merge", "scd2"])
def test_a_failed_key_snapshot_read_deletes_nothing(source_db, lake_root, strategy):
    execute(source_db, "CREATE TABLE ks (id int PRIMARY KEY, v text)")
    execute(source_db, "INSERT INTO ks VALUES (1,'a'),(2,'b'),(3,'c')")
    loads = Loads(
        source_db,
        lake_root,
        "ks",
        load_strategy=strategy,
        merge_keys=["id"],
        delete_detection="hard",
    )
    loads.run()
    before = loads.rows()
    version = DeltaTable(str(loads.path)).version()
    execute(source_db, "DELETE FROM ks WHERE id = 3; UPDATE ks SET v = 'b2' WHERE id = 2")
    _KeysReadFails.conninfo_for_tests = source_db
    with pytest.raises(la.LoadStepError) as failed:
        loads.run(source_class=_KeysReadFails)
    assert failed.value.step == "read source keys"
    assert DeltaTable(str(loads.path)).version() == version
    assert loads.rows() == before


@pytest.mark.parametrize(
    ("columns", "constraint"),
    [
        ({"delete_detection": "soft"}, "delete_detection_requires_merge_keys"),
        ({"delete_detection": "maybe", "merge_keys": ["id"]}, "delete_detection_must_be_none"),
        ({"load_strategy": "scd2"}, "scd2_strategy_requires_merge_keys"),
        (
            {"delete_detection": "soft", "merge_keys": ["id"]},
            "soft_delete_detection_cannot_use_full_strategy",
        ),
        (
            {"load_strategy": "merge", "merge_keys": ["id"], "delete_max_fraction": 0},
            "delete_max_fraction_must_be_above_0_and_at_most_1",
        ),
    ],
)
def test_the_control_table_refuses_bad_settings_by_name(db, columns, constraint):
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        add_row(db, "bad", **columns)


def test_a_control_row_sends_the_settings_to_the_script(db):
    from dagsters.control.rows import ControlRow, fetch_one
    from dagsters.policy.run_requests import load_params

    config_id = add_row(
        db,
        "dim",
        load_strategy="scd2",
        merge_keys=["id"],
        delete_detection="hard",
        delete_max_fraction=0.25,
    )
    row = fetch_one(
        db, ControlRow, "SELECT * FROM table_control WHERE config_id = %s", (config_id,)
    )
    assert row is not None
    spec = parse_load_spec(load_params(row))
    assert (spec.load_strategy, spec.delete_detection, spec.delete_max_fraction) == (
        "scd2",
        "hard",
        0.25,
    )
    plain = add_row(db, "plain")
    row = fetch_one(db, ControlRow, "SELECT * FROM table_control WHERE config_id = %s", (plain,))
    assert row is not None
    spec = parse_load_spec(load_params(row))
    assert (spec.delete_detection, spec.delete_max_fraction) == ("none", 0.5)


def test_mysql_source_hard_deletes_read_only_the_keys(lake_root):
    from test_loader_pipe import _mysql_or_skip

    conn = _mysql_or_skip()
    table = "dl_history_keys"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(f"CREATE TABLE `{table}` (region char(2), id int unsigned, v varchar(9))")
        cur.execute(f"INSERT INTO `{table}` VALUES ('eu',1,'a'),('eu',2,'b'),('us',1,'c')")
    try:
        mysql = {"host": "127.0.0.1", "port": 3306, "database": "test", "user": "root"}
        loads = Loads(
            "host=x port=1 dbname=x user=x",
            lake_root,
            table,
            db_type="mysql",
            source_schema_name="test",
            db_config_value=mysql,
            load_strategy="merge",
            merge_keys=["region", "id"],
            delete_detection="hard",
        )
        loads.run(source_class=ls.MySQLReader)
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM `{table}` WHERE region = 'eu' AND id = 2")
        loads.run(source_class=ls.MySQLReader)
        assert [(r["region"], r["id"], r["v"]) for r in loads.rows(("region", "id"))] == [
            ("eu", 1, "a"),
            ("us", 1, "c"),
        ]
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
