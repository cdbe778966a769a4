"""Migrations apply once and in order, refuse edited files, roll back failures; CHECKs refuse bad edits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import psycopg
import psycopg.sql
import pytest
from helpers import claim_due

from dagsters.local.migrate import SQL_DIR, MigrationError, apply_migrations, main
from dagsters.utils.lakebase_client import LakebaseClient

ALL_FILES = sorted(p.name for p in SQL_DIR.glob("[0-9]*.sql"))


def test_first_apply_runs_every_file_in_order_and_second_apply_nothing(source_db):
    assert apply_migrations(source_db) == ALL_FILES
    assert apply_migrations(source_db) == []
    with psycopg.connect(source_db) as conn:
        recorded = conn.execute(
            "SELECT filename, length(sha256) FROM schema_migrations ORDER BY filename"
        ).fetchall()
        views = {
            r[0]
            for r in conn.execute(
                "SELECT viewname FROM pg_views WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert recorded == [(name, 64) for name in ALL_FILES]
    assert {"v_table_status", "v_load_history"} <= views


def test_files_are_rerunnable_even_without_the_bookkeeping(control_db):
    # The DDL itself must be idempotent (IF NOT EXISTS / OR REPLACE), not only the runner.
    with psycopg.connect(control_db) as conn:
        for path in sorted(SQL_DIR.glob("[0-9]*.sql")):
            conn.execute(path.read_text())


def test_concurrent_starts_apply_each_file_once(source_db):
    # Webserver, daemon and code server may all migrate the embedded server at start-up.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(apply_migrations, source_db) for _ in range(4)]
        results = [f.result() for f in futures]
    assert sorted(name for r in results for name in r) == ALL_FILES


def _write(dir_: Path, name: str, text: str) -> Path:
    path = dir_ / name
    path.write_text(text)
    return path


def test_failed_file_rolls_back_completely_and_names_the_file(source_db, tmp_path):
    _write(tmp_path, "001_first.sql", "CREATE TABLE first_table (id int);")
    _write(
        tmp_path,
        "002_second.sql",
        "CREATE TABLE second_table (id int);\n"
        "INSERT INTO second_table VALUES (1);\n"
        "SELECT no_such_function();\n",
    )
    with pytest.raises(MigrationError, match="002_second.sql") as err:
        apply_migrations(source_db, tmp_path)
    assert "rolled back" in str(err.value)
    with psycopg.connect(source_db) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        applied = [r[0] for r in conn.execute("SELECT filename FROM schema_migrations")]
    assert "first_table" in tables and "second_table" not in tables
    assert applied == ["001_first.sql"]

    # Fixed file: only it is applied now.
    _write(tmp_path, "002_second.sql", "CREATE TABLE second_table (id int);")
    assert apply_migrations(source_db, tmp_path) == ["002_second.sql"]


def test_multi_statement_file_with_dollar_quotes_and_percent_signs(source_db, tmp_path):
    _write(
        tmp_path,
        "001_tricky.sql",
        "CREATE TABLE t (note text);\n"
        "INSERT INTO t VALUES ('50% done; still going');\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'a;b'; END; $$;\n",
    )
    assert apply_migrations(source_db, tmp_path) == ["001_tricky.sql"]
    with psycopg.connect(source_db) as conn:
        assert conn.execute("SELECT note, f() FROM t").fetchone() == (
            "50% done; still going",
            "a;b",
        )


def test_file_changed_after_it_was_applied_is_refused(source_db, tmp_path):
    path = _write(tmp_path, "001_a.sql", "CREATE TABLE a (id int);")
    apply_migrations(source_db, tmp_path)
    path.write_text("CREATE TABLE a (id bigint);")
    with pytest.raises(MigrationError, match="001_a.sql was changed after it was applied"):
        apply_migrations(source_db, tmp_path)


def test_duplicate_numbers_are_refused(source_db, tmp_path):
    _write(tmp_path, "001_a.sql", "SELECT 1;")
    _write(tmp_path, "001_b.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="share number 1"):
        apply_migrations(source_db, tmp_path)


def test_command_line_applies_then_reports_up_to_date(source_db, capsys):
    assert main(["--conninfo", source_db]) == 0
    assert f"applied {len(ALL_FILES)} file(s)" in capsys.readouterr().out
    assert main(["--conninfo", source_db]) == 0
    assert "up to date" in capsys.readouterr().out


def test_command_line_without_target_explains_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("LAKEBASE_HOST", raising=False)
    assert main([]) == 1
    assert "LAKEBASE_HOST" in capsys.readouterr().err


def test_connection_error_does_not_show_the_password(tmp_path):
    conninfo = f"host={tmp_path} port=1 dbname=x user=u password=Sup3rSecretPw connect_timeout=2"
    with pytest.raises(MigrationError) as err:
        apply_migrations(conninfo)
    assert "Sup3rSecretPw" not in str(err.value)


# -- CHECK constraints: each bad edit is refused, naming the rule it breaks ------------------------

VALID_ROW = (
    "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
    " destination_schema_name, destination_table_name, db_type)"
    " VALUES ('k', 't', 'c', 's', 't', 'postgresql')"
)

BAD_EDITS = [
    (
        "SET last_status = 'Running'",
        "last_status_must_be_null_queued_in_progress_succeeded_or_failed",
    ),
    ("SET load_strategy = 'append'", "load_strategy_must_be_full_incremental_merge_or_scd2"),
    ("SET db_type = 'db2'", "db_type_must_be_postgresql_mysql_sqlserver_oracle_or_databricks"),
    ("SET load_strategy = 'merge'", "merge_strategy_requires_merge_keys"),
    ("SET load_strategy = 'merge', merge_keys = '{}'", "merge_strategy_requires_merge_keys"),
    ("SET load_strategy = 'incremental'", "incremental_strategy_requires_incremental_column"),
    (
        "SET load_strategy = 'incremental', incremental_column = ' '",
        "incremental_strategy_requires_incremental_column",
    ),
    ("SET schedule_cron = 'every day'", "schedule_cron_must_be_five_fields_or_a_macro"),
    ("SET schedule_cron = '0 0 * *'", "schedule_cron_must_be_five_fields_or_a_macro"),
    ("SET schedule_timezone = 'Mars/Olympus'", "schedule_timezone_must_be_a_known_time_zone"),
    (
        "SET schedule_cron = '0 2 * * *', schedule_interval = '1 hour'",
        "schedule_is_either_cron_or_interval_not_both",
    ),
    ("SET schedule_interval = '-5 minutes'", "schedule_interval_must_be_positive"),
    ("SET lookback_window = '-1 hour'", "lookback_window_must_not_be_negative"),
    ("SET retry_count = -1", "retry_count_must_not_be_negative"),
    (
        'SET db_config_value = \'{"host": "h", "password": "x"}\'',
        "db_config_value_must_be_an_object_without_password",
    ),
    ("SET db_config_value = '[1, 2]'", "db_config_value_must_be_an_object_without_password"),
    ("SET control_key = '  '", "control_key_must_not_be_blank"),
]


@pytest.mark.parametrize(("assignment", "constraint"), BAD_EDITS)
def test_check_constraint_refuses_bad_edit(control_db, assignment, constraint):
    with psycopg.connect(control_db) as conn:
        conn.execute(VALID_ROW)
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation) as err:
            conn.execute(f"UPDATE table_control {assignment} WHERE control_key = 'k'")
    assert constraint in str(err.value)


def test_duplicate_control_key_is_refused(control_db):
    with psycopg.connect(control_db) as conn:
        conn.execute(VALID_ROW)
        with pytest.raises(psycopg.errors.UniqueViolation, match="control_key_must_be_unique"):
            conn.execute(VALID_ROW)


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("SET status = 'Done'", "history_status_must_be_queued_in_progress_succeeded_or_failed"),
        ("SET triggered_by = 'cron'", "history_triggered_by_must_be_sensor_ui_or_retry"),
        ("SET retry_decision = 'Maybe'", "history_retry_decision_must_be_known"),
    ],
)
def test_history_checks_refuse_bad_edits(control_db, assignment, constraint):
    with psycopg.connect(control_db) as conn:
        conn.execute(VALID_ROW)
        conn.execute(
            "INSERT INTO historical_metadata (config_id, control_key)"
            " SELECT config_id, control_key FROM table_control"
        )
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation) as err:
            conn.execute(f"UPDATE historical_metadata {assignment}")
    assert constraint in str(err.value)


def test_valid_schedules_are_accepted(control_db):
    with psycopg.connect(control_db) as conn:
        conn.execute(VALID_ROW)
        for assignment in (
            "SET schedule_cron = '*/15 6-18 * * mon-fri', schedule_timezone = 'Europe/Berlin'",
            "SET schedule_cron = '@hourly'",
            "SET schedule_cron = NULL, schedule_interval = '90 minutes'",
            "SET load_strategy = 'merge', merge_keys = '{id}'",
        ):
            conn.execute(f"UPDATE table_control {assignment} WHERE control_key = 'k'")


class _RecordingCursor(psycopg.Cursor):
    """A cursor that keeps what it executes (``conn.execute`` and the typed reads use one)."""

    def execute(self, query, params=None, **kwargs):  # type: ignore[override]
        if query:
            _RecordingConnection.statements.append((query, params))
        return super().execute(query, params, **kwargs)


class _RecordingConnection(psycopg.Connection):
    """Keeps every statement the client sends, so the test can EXPLAIN exactly those."""

    statements: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cursor_factory = _RecordingCursor


def _plans(conn: psycopg.Connection, statements: list) -> list[str]:
    plans = []
    for query, params in statements:
        prefix = "EXPLAIN (FORMAT JSON) "
        explain = (
            psycopg.sql.SQL(prefix) + query
            if isinstance(query, psycopg.sql.Composable)
            else prefix + query
        )
        # EXPLAIN without ANALYZE plans the UPDATE/INSERT without running it.
        plans.append(json.dumps(conn.execute(explain, params).fetchone()[0]))
    return plans


def test_sensor_queries_use_their_partial_indexes_at_100k_rows(control_db):
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
            " destination_catalog, destination_schema_name, destination_table_name, db_type,"
            " db_config_value, load_strategy, schedule_interval, next_load_date_time,"
            " last_status, last_status_date_time, last_load_date_time, staging_model_processed)"
            " SELECT 'idx.t' || g, 'public', 't' || g, 'lake', 'raw', 't' || g, 'postgresql',"
            " jsonb_build_object('host', 'src', 'port', 5432, 'database', 'db'), 'full',"
            " interval '1 day', now() + g * interval '1 second', 'Succeeded', now(), now(), true"
            " FROM generate_series(1, 100000) g"
        )
        conn.execute(
            "UPDATE table_control SET last_status = NULL, next_load_date_time = now()"
            " WHERE config_id <= 10"
        )
        for status, ids in (("Queued", 11), ("In Progress", 12), ("Failed", 13)):
            conn.execute(
                "UPDATE table_control SET last_status = %s WHERE config_id = %s", (status, ids)
            )
        conn.execute(
            "UPDATE table_control SET staging_model_processed = false WHERE config_id = 14"
        )
        conn.execute("ANALYZE table_control")
        expected = {
            "table_control_due_idx": lambda c: claim_due(c, 10),
            "table_control_queued_idx": lambda c: c.find_stuck_queued(60),
            "table_control_in_progress_idx": lambda c: c.find_stuck_running(180),
            "table_control_failed_not_reviewed_idx": lambda c: c.claim_failed_for_analysis(10, 3),
            "table_control_unprocessed_landing_idx": lambda c: c.get_unprocessed_landing_tables(),
        }
        with LakebaseClient(control_db, connection_class=_RecordingConnection) as client:
            for index, call in expected.items():
                _RecordingConnection.statements = []
                call(client)
                plans = _plans(conn, _RecordingConnection.statements)
                assert any(index in plan for plan in plans), (index, plans)
                for plan in plans:
                    assert '"Relation Name": "table_control"' not in plan or (
                        '"Seq Scan"' not in plan
                    ), (index, plan)
