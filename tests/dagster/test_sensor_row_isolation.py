"""No single row stops the scheduler: each sensor, driven by real ticks, fails a poisoned row
(naming the value) and goes on with the healthy row beside it.

sql/012 refuses these values; the database here has those CHECKs dropped, as a copy of the
table without them would be, so the sensors' own isolation is what is tested.
"""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
from helpers import SensorLoop, add_history, add_row, control_row, tick

from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import LoadReport


@pytest.fixture
def unguarded(db):
    """The control database without sql/012's bound CHECKs (the values they refuse can exist)."""
    names = [
        r["conname"]
        for r in db.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'table_control'::regclass"
            " AND (conname LIKE '%%_finite_1900_to_3000' OR conname LIKE '%%_must_stay_within_%%')"
        ).fetchall()
    ]
    for name in names:
        db.execute(f'ALTER TABLE table_control DROP CONSTRAINT "{name}"')
    return db


def _poisoned(db, key: str) -> dict:
    """A poisoned row read without the timestamps Python cannot hold."""
    return db.execute(
        "SELECT last_status, needs_review, last_message, next_load_date_time::text AS nldt,"
        " is_active FROM table_control WHERE control_key = %s",
        (key,),
    ).fetchone()


def _history_status(db, metadata_id: int) -> tuple[str, str | None]:
    row = db.execute(
        "SELECT status, message FROM historical_metadata WHERE metadata_id = %s", (metadata_id,)
    ).fetchone()
    return row["status"], row["message"]


def test_master_sensor_fails_a_minus_infinity_row_and_claims_the_healthy_one(
    control_db, unguarded, instance
):
    db = unguarded
    add_row(db, "poisoned", next_load_date_time="-infinity")
    add_row(db, "healthy")
    loop = SensorLoop(build_master_sensor(Settings()), instance, control_db)

    result = loop.tick()

    assert [r.partition_key for r in result.run_requests] == ["healthy"]
    assert control_row(db, "healthy")["last_status"] == "Queued"
    poisoned = _poisoned(db, "poisoned")
    assert poisoned["last_status"] == "Failed" and poisoned["needs_review"] is True
    assert poisoned["last_message"].startswith(
        "Failed: cannot schedule this row: next_load_date_time = '-infinity' is outside"
    )
    assert "next_load_date_time_must_be_finite_1900_to_3000" in poisoned["last_message"]
    assert "dataloader release poisoned" in poisoned["last_message"]
    assert poisoned["nldt"] is None  # cleared: every reader can read the row again
    # The next tick: nothing raises, the failed row is not claimed again.
    again = loop.tick()
    assert isinstance(again, dg.SkipReason | dg.SensorResult)
    assert _poisoned(db, "poisoned")["last_status"] == "Failed"


def test_longqueued_monitor_fails_an_infinity_row_and_the_healthy_stuck_row(
    control_db, unguarded, instance
):
    db = unguarded
    poisoned = add_row(db, "poisoned", next_load_date_time="infinity")
    healthy = add_row(db, "healthy")
    poisoned_attempt = add_history(db, poisoned, "poisoned", "Queued")
    add_history(db, healthy, "healthy", "Queued")
    db.execute(
        "UPDATE table_control SET last_status = 'Queued',"
        " last_status_date_time = now() - interval '61 minutes'"
    )

    result = tick(build_longqueued_monitor(Settings()), instance, control_db)

    assert isinstance(result, dg.SkipReason)
    assert "healthy" in result.skip_message
    assert control_row(db, "healthy")["last_status"] == "Failed"
    assert control_row(db, "healthy")["last_message"] == (
        "Cancelled - stuck in queue for >60 minutes"
    )
    row = _poisoned(db, "poisoned")
    assert row["last_status"] == "Failed" and row["needs_review"] is True
    assert "next_load_date_time = 'infinity'" in row["last_message"]
    status, message = _history_status(db, poisoned_attempt)
    assert status == "Failed" and "next_load_date_time = 'infinity'" in message


def test_longrunning_monitor_fails_a_100000_year_interval_row_and_the_healthy_stuck_row(
    control_db, unguarded, instance
):
    db = unguarded
    poisoned = add_row(db, "poisoned", schedule_interval="100000 years")
    healthy = add_row(db, "healthy", schedule_interval="1 hour")
    add_history(db, poisoned, "poisoned", "In Progress")
    add_history(db, healthy, "healthy", "In Progress")
    # No run link: nothing to wait for, the healthy row is failed at once.
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress',"
        " last_load_date_time = now() - interval '181 minutes'"
    )

    result = tick(build_longrunning_monitor(Settings()), instance, control_db)

    assert "healthy" in result.skip_message
    assert control_row(db, "healthy")["last_status"] == "Failed"
    assert control_row(db, "healthy")["last_message"] == ("Cancelled - exceeded 180 minute timeout")
    row = _poisoned(db, "poisoned")
    assert row["last_status"] == "Failed" and row["needs_review"] is True
    assert (
        "schedule_interval = '100000 years' is outside 1 minute .. 366 days"
        in (row["last_message"])
    )


def test_failed_monitor_fails_an_infinity_row_and_analyses_the_healthy_failure(
    control_db, unguarded, instance
):
    db = unguarded
    poisoned = add_row(db, "poisoned")
    healthy = add_row(db, "healthy")
    add_history(db, poisoned, "poisoned", "Failed")
    healthy_attempt = add_history(db, healthy, "healthy", "Failed")
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', last_status_date_time = now(),"
        " last_message = 'connection reset'"
    )
    db.execute(
        "UPDATE table_control SET retry_analysis_requested_at = 'infinity',"
        " next_load_date_time = 'infinity' WHERE control_key = 'poisoned'"
    )

    result = tick(build_failed_monitor(Settings()), instance, control_db)

    [request] = result.run_requests
    assert request.partition_key == "healthy"
    assert request.run_key == f"retry-analysis:healthy:{healthy_attempt}"
    row = _poisoned(db, "poisoned")
    assert row["last_status"] == "Failed" and row["needs_review"] is True
    assert "next_load_date_time = 'infinity'" in row["last_message"]
    again = tick(build_failed_monitor(Settings()), instance, control_db)
    assert isinstance(again, dg.SkipReason)


def test_landing_table_monitor_fails_an_infinity_row_and_batches_the_healthy_one(
    control_db, unguarded, instance
):
    db = unguarded
    poisoned = add_row(db, "poisoned")
    healthy = add_row(db, "healthy")
    add_history(db, poisoned, "poisoned", "Succeeded")
    add_history(db, healthy, "healthy", "Succeeded")
    db.execute("UPDATE table_control SET last_status = 'Succeeded'")
    db.execute(
        "UPDATE table_control SET last_load_date_time = 'infinity' WHERE control_key = 'poisoned'"
    )

    request = tick(build_landing_table_monitor(Settings()), instance, control_db)

    assert isinstance(request, dg.RunRequest)
    assert request.run_config == {
        "ops": {"landing_table_git_op": {"config": {"config_ids": [healthy]}}}
    }
    row = _poisoned(db, "poisoned")
    assert row["last_status"] == "Failed" and row["needs_review"] is True
    assert "last_load_date_time = 'infinity'" in row["last_message"]


def test_a_committed_load_whose_next_slot_overflows_ends_failed_naming_the_interval(
    control_db, unguarded
):
    # Before: OverflowError after the commit; row and history stayed In Progress, no message.
    db = unguarded
    config_id = add_row(db, "overflow", schedule_interval="100000 years")
    metadata_id = add_history(db, config_id, "overflow", "In Progress")
    db.execute("UPDATE table_control SET last_status = 'In Progress'")
    with LakebaseClient(control_db) as client:
        assert client.record_success(
            config_id, metadata_id, LoadReport(rows_read=3, rows_written=3, watermark_after="42")
        )
    row = control_row(db, "overflow")
    assert row["last_status"] == "Failed"
    assert row["incremental_value"] == "42"
    assert row["next_load_date_time"] is None
    # psycopg reads '100000 years' as 36,500,000 days.
    assert "schedule_interval '36500000 days, 0:00:00'" in row["last_message"]
    status, message = _history_status(db, metadata_id)
    assert status == "Failed" and "Not scheduled again" in message


def test_the_check_for_uncomputable_rows_reads_an_empty_index(control_db):
    # Where the CHECKs hold, the first statement of every tick costs one look at an empty index.
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type)"
            " SELECT 'k' || g, 't', 'c', 's', 't' || g, 'postgresql'"
            " FROM generate_series(1, 20000) g"
        )
        conn.execute("ANALYZE table_control")
        plan = conn.execute(
            "EXPLAIN SELECT config_id FROM table_control WHERE dataloader_control_row_problem("
            "control_key, next_load_date_time, last_status_date_time, last_load_date_time,"
            " retry_analysis_requested_at, created_at, updated_at, schedule_interval,"
            " lookback_window, schedule_cron, retry_count, merge_keys) IS NOT NULL"
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "table_control_uncomputable_idx" in text, text
