"""historical_metadata keeps a configurable retention (default 400 days), applied in batches."""

from __future__ import annotations

import dagster as dg
import pytest
from helpers import SOME_SOURCE, insert_control_row, lakebase_for
from psycopg.types.json import Jsonb

from dagsters.definitions import build_definitions
from dagsters.jobs.history_retention_job import HISTORY_RETENTION_JOB, build_history_retention_job
from dagsters.settings import Settings, SettingsError, load_settings


def add_table(db, key: str) -> int:
    return insert_control_row(
        db,
        {
            "control_key": key,
            "source_schema_name": "public",
            "source_table_name": key,
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": key,
            "db_type": "postgresql",
            "db_config_value": Jsonb(SOME_SOURCE),
            "load_strategy": "full",
        },
    )


def add_attempts(db, config_id: int, key: str, status: str, days_ago: int, count: int) -> list:
    rows = db.execute(
        "INSERT INTO historical_metadata (config_id, control_key, status, queued_at)"
        " SELECT %s, %s, %s, now() - make_interval(days => %s) FROM generate_series(1, %s)"
        " RETURNING metadata_id",
        (config_id, key, status, days_ago, count),
    ).fetchall()
    return [r["metadata_id"] for r in rows]


def counts(db) -> dict[tuple[str, bool], int]:
    rows = db.execute(
        "SELECT status, queued_at < now() - interval '400 days' AS old, count(*) AS n"
        " FROM historical_metadata GROUP BY 1, 2"
    ).fetchall()
    return {(r["status"], r["old"]): r["n"] for r in rows}


def test_old_finished_history_is_deleted_in_batches_and_the_rest_kept(control_db, db):
    orders = add_table(db, "orders")
    stuck = add_table(db, "stuck")
    add_attempts(db, orders, "orders", "Succeeded", 500, 23)
    add_attempts(db, orders, "orders", "Failed", 401, 2)
    add_attempts(db, orders, "orders", "Succeeded", 399, 3)  # inside the retention
    add_attempts(db, orders, "orders", "Succeeded", 1, 4)
    [latest] = add_attempts(db, orders, "orders", "Succeeded", 800, 1)
    db.execute(
        "UPDATE table_control SET last_metadata_id = %s WHERE config_id = %s", (latest, orders)
    )
    add_attempts(db, stuck, "stuck", "In Progress", 450, 1)  # never finished: kept

    job = build_history_retention_job(Settings(history_retention_batch_rows=10))
    result = job.execute_in_process(resources={"lakebase": lakebase_for(control_db)})

    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert metadata["deleted_rows"] == 25
    assert metadata["batches"] == 3  # 10 + 10 + 5
    assert counts(db) == {
        ("Succeeded", True): 1,  # the attempt the control row points at
        ("Succeeded", False): 7,
        ("In Progress", True): 1,
    }
    # Nothing left to do: the next run deletes nothing.
    again = job.execute_in_process(resources={"lakebase": lakebase_for(control_db)})
    assert again.output_for_node("history_retention_op") == 0


def test_the_launchpad_can_override_the_retention_for_one_run(control_db, db):
    orders = add_table(db, "orders")
    add_attempts(db, orders, "orders", "Succeeded", 40, 5)
    # A newer success inside the retention: the row's latest Succeeded attempt is always kept.
    add_attempts(db, orders, "orders", "Succeeded", 1, 1)
    job = build_history_retention_job(Settings())
    result = job.execute_in_process(
        run_config={"ops": {"history_retention_op": {"config": {"older_than_days": 30}}}},
        resources={"lakebase": lakebase_for(control_db)},
    )
    assert result.output_for_node("history_retention_op") == 5


def test_retention_settings_and_schedule():
    settings = load_settings(
        {
            "DATALOADER_HISTORY_RETENTION_DAYS": "90",
            "DATALOADER_HISTORY_RETENTION_BATCH_ROWS": "500",
            "DATALOADER_HISTORY_RETENTION_CRON": "0 4 * * 0",
        }
    )
    assert (settings.history_retention_days, settings.history_retention_batch_rows) == (90, 500)
    assert Settings().history_retention_days == 400
    with pytest.raises(SettingsError, match="DATALOADER_HISTORY_RETENTION_CRON"):
        load_settings({"DATALOADER_HISTORY_RETENTION_CRON": "every night"})
    with pytest.raises(SettingsError, match="DATALOADER_HISTORY_RETENTION_DAYS"):
        load_settings({"DATALOADER_HISTORY_RETENTION_DAYS": "0"})
    repo = build_definitions(settings).get_repository_def()
    schedule = repo.get_schedule_def("dataloader__history_retention_schedule")
    assert schedule.cron_schedule == "0 4 * * 0"
    assert schedule.job_name == HISTORY_RETENTION_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING  # local mode
    job = repo.get_job(HISTORY_RETENTION_JOB)
    assert "90 days" in job.description


def test_each_rows_latest_succeeded_attempt_is_kept_whatever_its_age(control_db, db):
    orders = add_table(db, "orders")
    older = add_attempts(db, orders, "orders", "Succeeded", 900, 2)
    [latest_success] = add_attempts(db, orders, "orders", "Succeeded", 800, 1)
    failed = add_attempts(db, orders, "orders", "Failed", 700, 2)
    db.execute(
        "UPDATE table_control SET last_metadata_id = %s WHERE config_id = %s",
        (failed[-1], orders),
    )
    job = build_history_retention_job(Settings())
    result = job.execute_in_process(resources={"lakebase": lakebase_for(control_db)})
    assert result.output_for_node("history_retention_op") == len(older) + 1
    kept = [
        r["metadata_id"]
        for r in db.execute("SELECT metadata_id FROM historical_metadata ORDER BY 1").fetchall()
    ]
    assert kept == [latest_success, failed[-1]]
