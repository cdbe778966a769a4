"""Every exit path of an attempt settles the row and its history row with a message.

Issue 16, items 3, 4, 5 and 8. Real parts: the embedded PostgreSQL, a Dagster instance, the local
Pipes runner running a real subprocess (``tests/fault_pipes_script.py`` as the load script, which
does one harmful thing mid-load) or the real loader against a real source table:

- the script reports malformed metadata -> Failed with the database's own words;
- the success write-back is refused by the control database -> Failed with that error;
- every connection to the control database is cut mid-load -> the write-back reconnects;
- the row's schedule cannot be computed at write-back (a row from before sql/005) -> Failed,
  watermark saved (no reload of committed data), reason on the row, not scheduled again;
- a control_key renamed while Queued -> the claimed row (by config_id) loads and Succeeds;
- the row deleted before the load started -> the run fails saying so, nothing loaded;
- the row deleted while In Progress, partition gone -> the run ends cleanly, nothing
  materialized, no partition error;
- the stuck-row monitors fail a row whose schedule cannot be computed and the rows after it.
Never left Queued or In Progress.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from helpers import (
    add_control_row,
    claim_due,
    control_row,
    fail_stuck_queued,
    history,
    lakebase_for,
)
from psycopg.rows import dict_row

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient

FAULT_SCRIPT = Path(__file__).parents[1] / "fault_pipes_script.py"
SETTLED = {"Succeeded", "Failed"}


def _legacy_schedules_allowed(db) -> None:
    """This database behaves as one written before sql/005 (its schedule guards switched off)."""
    db.execute(
        "ALTER TABLE table_control DISABLE TRIGGER table_control_schedule_must_be_computable"
    )
    db.execute(
        "ALTER TABLE table_control DROP CONSTRAINT"
        " schedule_cron_must_have_fields_in_range_and_a_future_slot,"
        " DROP CONSTRAINT schedule_timezone_must_be_a_known_time_zone"
    )


def _scripts_dir(tmp_path: Path, control_db: str, fault: str) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(FAULT_SCRIPT, scripts / "dataloader_pipe.py")
    (scripts / "fault.json").write_text(json.dumps({"conninfo": control_db, "fault": fault}))
    return scripts


def _materialize(control_db, lake_root, instance, key, *, scripts: Path | None = None):
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    return _run(control_db, lake_root, instance, claimed, scripts=scripts), claimed


def _run(control_db, lake_root, instance, claimed, *, scripts: Path | None = None):
    settings = load_settings(
        {"DATALOADER_LAKE_ROOT": str(lake_root)}
        | ({"DATALOADER_SCRIPTS_PATH": str(scripts)} if scripts else {})
    )
    return dg.materialize(
        [build_load_asset(settings)],
        partition_key=claimed.control_key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(
                settings, termination_grace_seconds=3
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


def _settled_failed(db, key: str, *words: str) -> dict:
    row = control_row(db, key)
    [attempt] = history(db, key)
    assert row["last_status"] == "Failed", row["last_message"]
    assert attempt["status"] == "Failed" and attempt["ended_at"] is not None
    for text in (row["last_message"], attempt["message"]):
        for word in words:
            assert word in text, text
    return row


def test_malformed_metadata_ends_the_attempt_failed(
    control_db, source_db, lake_root, db, instance, tmp_path
):
    add_control_row(db, source_db, "f.malformed", "orders")
    scripts = _scripts_dir(tmp_path, control_db, "malformed_metadata")

    result, _ = _materialize(control_db, lake_root, instance, "f.malformed", scripts=scripts)

    assert not result.success
    _settled_failed(db, "f.malformed", "Load failed after it started", "lots")


def test_a_refused_success_write_back_ends_the_attempt_failed(
    control_db, source_db, lake_root, db, instance, tmp_path
):
    add_control_row(db, source_db, "f.diskfull", "orders")
    scripts = _scripts_dir(tmp_path, control_db, "writeback_refused")

    result, _ = _materialize(control_db, lake_root, instance, "f.diskfull", scripts=scripts)

    assert not result.success
    _settled_failed(db, "f.diskfull", "No space left on device")


def test_a_lost_control_database_connection_still_settles_the_attempt(
    control_db, source_db, lake_root, db, instance, tmp_path
):
    add_control_row(db, source_db, "f.dropped", "orders")
    scripts = _scripts_dir(tmp_path, control_db, "drop_connections")

    result, _ = _materialize(control_db, lake_root, instance, "f.dropped", scripts=scripts)

    # The pool checks a connection before handing it out, so the write-back reconnects.
    assert result.success
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as fresh:
        row = control_row(fresh, "f.dropped")  # the test's own connection was cut as well
        [attempt] = history(fresh, "f.dropped")
    assert (row["last_status"], attempt["status"]) == ("Succeeded", "Succeeded")
    assert row["last_message"] == "Loaded 3 rows" and row["incremental_value"] == "2024-01-02"


def test_an_uncomputable_schedule_at_write_back_keeps_the_watermark_and_says_why(
    control_db, source_db, lake_root, db, instance, tmp_path
):
    _legacy_schedules_allowed(db)
    add_control_row(db, source_db, "f.cron", "orders")
    scripts = _scripts_dir(tmp_path, control_db, "uncomputable_schedule")

    result, _ = _materialize(control_db, lake_root, instance, "f.cron", scripts=scripts)

    row = _settled_failed(
        db, "f.cron", "committed and watermark saved", "Not scheduled again", "outside 0-59"
    )
    # The committed load is recorded: a retry continues after it instead of loading it again.
    assert row["incremental_value"] == "2024-01-02"
    assert history(db, "f.cron")[0]["rows_written"] == 3
    assert row["next_load_date_time"] is None
    assert result.success  # the data was loaded; the row says what needs a person


def test_a_key_renamed_while_queued_loads_the_claimed_row(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "f.old_name", "orders")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["f.old_name"])
    db.execute("UPDATE table_control SET control_key = 'f.new_name'")

    result = _run(control_db, lake_root, instance, claimed)

    assert result.success
    row = control_row(db, "f.new_name")
    assert row["last_status"] == "Succeeded" and row["last_message"] == "Loaded 25 rows"
    [attempt] = db.execute("SELECT * FROM historical_metadata").fetchall()
    assert (attempt["status"], attempt["rows_written"]) == ("Succeeded", 25)


def test_a_row_deleted_before_the_load_started_fails_the_run_saying_so(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "f.gone", "orders")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    db.execute("DELETE FROM table_control")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["f.gone"])

    result = _run(control_db, lake_root, instance, claimed)

    assert not result.success
    failure = result.failure_data_for_node(LOAD_ASSET)
    assert "no longer queued" in failure.error.message
    assert not (lake_root / "lake" / "raw" / "orders").exists()


def test_a_row_deleted_while_loading_ends_cleanly_without_a_partition_error(
    control_db, source_db, lake_root, db, instance, tmp_path
):
    add_control_row(db, source_db, "f.deleted", "orders")
    scripts = _scripts_dir(tmp_path, control_db, "delete_row")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["f.deleted"])
    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            result=_run(control_db, lake_root, instance, claimed, scripts=scripts)
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while control_row(db, "f.deleted") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert control_row(db, "f.deleted") is None, "the script never deleted the row"
    # What master_sensor's next tick does with the key of a deleted row.
    instance.delete_dynamic_partition(PARTITIONS_NAME, "f.deleted")
    (scripts / "go").write_text("")
    worker.join(timeout=120)

    result = outcome["result"]
    assert result.asset_materializations_for_node(LOAD_ASSET) == []
    failure = result.failure_data_for_node(LOAD_ASSET)
    assert "no longer exists" in failure.error.message
    assert "nothing is materialized" in failure.error.message
    texts = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("was deleted while this attempt was loading" in t for t in texts), texts
    assert not any("DagsterUnknownPartitionError" in t for t in texts)
    assert db.execute("SELECT count(*) AS n FROM historical_metadata").fetchone()["n"] == 0


@pytest.mark.parametrize("monitor", ["queued", "running"])
def test_stuck_row_monitors_fail_rows_whose_schedule_cannot_be_computed(
    control_db, source_db, db, monitor
):
    _legacy_schedules_allowed(db)
    add_control_row(
        db,
        source_db,
        "m.bad_zone",
        "a",
        schedule_interval=None,
        schedule_cron="0 2 * * *",
        schedule_timezone="UTC+3",
    )
    add_control_row(
        db, source_db, "m.never", "b", schedule_interval=None, schedule_cron="0 0 30 2 *"
    )
    add_control_row(db, source_db, "m.healthy", "c")
    with LakebaseClient(control_db) as client:
        claimed = claim_due(client, 10)
        assert len(claimed) == 3
        if monitor == "running":
            for row in claimed:
                assert client.start_load(
                    row.config_id, row.metadata_id, dagster_run_id="r", dagster_run_url="u"
                )
        db.execute(
            "UPDATE table_control SET last_status_date_time = now() - interval '5 hours',"
            " last_load_date_time = now() - interval '5 hours'"
        )
        if monitor == "queued":
            failed = fail_stuck_queued(client, 60)
            assert len(failed) == 3
        else:
            for row in client.find_stuck_running(180):
                assert client.fail_stuck_running(row.config_id, row.last_metadata_id, 180)

    for key, problem in [("m.bad_zone", "unknown time zone 'UTC+3'"), ("m.never", "never fires")]:
        row = control_row(db, key)
        [attempt] = history(db, key)
        assert (row["last_status"], attempt["status"]) == ("Failed", "Failed")
        assert row["last_message"].startswith("Cancelled - ")
        assert problem in row["last_message"] and "Not scheduled again" in attempt["message"]
        assert row["next_load_date_time"] is None
    healthy = control_row(db, "m.healthy")
    assert (
        healthy["last_status"] == "Failed" and "Not scheduled again" not in healthy["last_message"]
    )
    assert healthy["next_load_date_time"] is not None
    assert {
        r["last_status"] for r in db.execute("SELECT last_status FROM table_control")
    } <= SETTLED
