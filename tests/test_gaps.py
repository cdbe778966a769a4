"""Partitions follow table_control, stale analyses are retaken, landing notes, per-script libraries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
from helpers import add_history, control_row
from test_sensors import SensorLoop, add_row, tick

from dagsters.control.run_requests import retry_run_key
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import RETRY_JOB, build_failed_monitor
from dagsters.sensors.dataloader_master_sensor import (
    PARTITION_RESYNC_SECONDS,
    build_master_sensor,
    plan_partition_sync,
)
from dagsters.settings import RetryPolicy, Settings, SettingsError, load_settings
from dagsters.utils.lakebase_client import LakebaseClient


@pytest.fixture
def client(control_db: str) -> Iterator[LakebaseClient]:
    with LakebaseClient(control_db) as c:
        yield c


def partitions(instance: dg.DagsterInstance) -> list[str]:
    return sorted(instance.get_dynamic_partitions(PARTITIONS_NAME))


def requested(result) -> tuple[list[str], list[str]]:
    add, delete = [], []
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        target = add if isinstance(request, dg.AddDynamicPartitionsRequest) else delete
        target.extend(request.partition_keys)
    return sorted(add), sorted(delete)


# -- 1. partitions in step with table_control ----------------------------------------------------


def test_key_version_moves_on_key_changes_only(db, client):
    start = client.control_keys_version()
    db.execute(
        "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
        " destination_schema_name, destination_table_name, db_type)"
        " SELECT 'k' || g, 't', 'c', 's', 't', 'postgresql' FROM generate_series(1, 50) g"
    )
    assert client.control_keys_version() == start + 1  # one bump per statement, not per row
    assert client.list_control_keys()[:3] == ["k1", "k10", "k11"]
    # The sensors' own writes (claims, status changes) do not touch control_key.
    assert len(client.claim_due_tables(10)) == 10
    db.execute("UPDATE table_control SET last_message = 'x', is_active = false")
    assert client.control_keys_version() == start + 1
    db.execute("UPDATE table_control SET control_key = 'renamed' WHERE control_key = 'k1'")
    assert client.control_keys_version() == start + 2
    db.execute("DELETE FROM table_control WHERE control_key = 'k2'")
    assert client.control_keys_version() == start + 3
    db.execute("TRUNCATE historical_metadata, table_control")
    assert client.control_keys_version() == start + 4
    assert client.list_control_keys() == []


def test_master_sensor_keeps_partitions_in_step_with_table_control(control_db, db, instance):
    for key in ("a", "b", "c"):
        add_row(db, key, next_load_date_time=None)  # never due: no claim, still a partition
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["a", "gone"])
    loop = SensorLoop(build_master_sensor(Settings()), instance, control_db)

    first = loop.tick()
    assert requested(first) == (["b", "c"], ["gone"])
    assert partitions(instance) == ["a", "b", "c"]
    # In step: the next tick asks nothing of the daemon and is a plain skip.
    assert isinstance(loop.tick(), dg.SkipReason)

    db.execute("DELETE FROM table_control WHERE control_key = 'b'")
    add_row(db, "d", next_load_date_time=None)
    db.execute("UPDATE table_control SET control_key = 'c2' WHERE control_key = 'c'")
    assert requested(loop.tick()) == (["c2", "d"], ["b", "c"])
    assert partitions(instance) == ["a", "c2", "d"]
    assert isinstance(loop.tick(), dg.SkipReason)

    # A partition deleted by hand comes back as soon as its table is claimed.
    instance.delete_dynamic_partition(PARTITIONS_NAME, "a")
    db.execute("UPDATE table_control SET next_load_date_time = now() WHERE control_key = 'a'")
    result = loop.tick()
    assert [r.partition_key for r in result.run_requests] == ["a"]
    assert requested(result) == (["a"], [])
    assert partitions(instance) == ["a", "c2", "d"]


def test_sync_plan_lists_keys_only_when_needed_and_spreads_big_changes():
    def fail():
        raise AssertionError("listed although the version did not move")

    in_step = json.dumps({"keys_version": 7, "synced_at": 1000.0})
    quiet = plan_partition_sync(
        cursor=in_step,
        version=7,
        now=1000.0 + PARTITION_RESYNC_SECONDS - 1,
        list_control_keys=fail,
        list_partitions=fail,
        claimed=["x"],
    )
    assert (quiet.add, quiet.delete, quiet.cursor) == (["x"], [], None)

    # Once an hour the sets are compared anyway (someone may have edited partitions by hand).
    hourly = plan_partition_sync(
        cursor=in_step,
        version=7,
        now=1000.0 + PARTITION_RESYNC_SECONDS,
        list_control_keys=lambda: ["k1"],
        list_partitions=lambda: ["k1", "manual"],
    )
    assert (hourly.add, hourly.delete) == ([], ["manual"])

    # 5 missing, 3 per tick: the first tick adds 3 and does not record the version ...
    keys = [f"k{i}" for i in range(5)]
    first = plan_partition_sync(
        cursor=None,
        version=8,
        now=0.0,
        list_control_keys=lambda: keys,
        list_partitions=list,
        limit=3,
    )
    assert first.add == keys[:3] and json.loads(first.cursor)["keys_version"] is None
    # ... so the next one compares again and finishes.
    second = plan_partition_sync(
        cursor=first.cursor,
        version=8,
        now=60.0,
        list_control_keys=lambda: keys,
        list_partitions=lambda: keys[:3],
        limit=3,
    )
    assert second.add == keys[3:] and json.loads(second.cursor)["keys_version"] == 8
    # An unreadable cursor means "compare".
    assert plan_partition_sync(
        cursor="not json",
        version=8,
        now=0.0,
        list_control_keys=lambda: ["k"],
        list_partitions=list,
    ).add == ["k"]


# -- 2. a retry analysis that died is taken back -------------------------------------------------


def failed(db, key: str, requested_minutes_ago: int | None, **cols) -> tuple[int, int]:
    config_id = add_row(db, key, **cols)
    metadata_id = add_history(db, config_id, key, "Failed")
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', last_status_date_time = now(),"
        " retry_analysis_requested_at = now() - make_interval(mins => %s) WHERE config_id = %s",
        (requested_minutes_ago, config_id),
    )
    return config_id, metadata_id


def test_claim_takes_back_analyses_older_than_the_timeout_only(db, client):
    failed(db, "new", None)
    failed(db, "stale", 61)
    failed(db, "running", 10)
    failed(db, "reviewed", 600, needs_review=True)
    stale_succeeded, _ = failed(db, "loaded", 600)
    db.execute(
        "UPDATE table_control SET last_status = 'Succeeded' WHERE config_id = %s",
        (stale_succeeded,),
    )
    assert [r["control_key"] for r in client.claim_failed_for_analysis(10, 3, stale_after_minutes=None)] == ["new"]  # fmt: skip
    claimed = {r["control_key"]: r for r in client.claim_failed_for_analysis(10, 3)}
    assert set(claimed) == {"stale"}
    stale = claimed["stale"]
    assert stale["previous_analysis_requested_at"] < stale["retry_analysis_requested_at"]
    assert (
        control_row(db, "stale")["retry_analysis_requested_at"]
        == stale["retry_analysis_requested_at"]
    )
    # Restamped: not taken again until the timeout passes once more.
    assert client.claim_failed_for_analysis(10, 3) == []


def test_failed_monitor_reanalyses_a_dead_analysis_with_a_new_run_key(control_db, db, instance):
    config_id, metadata_id = failed(db, "orders", 90)
    failed(db, "busy", 30)
    result = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=60))),
        instance,
        control_db,
    )
    [request] = result.run_requests
    first_key = retry_run_key({"control_key": "orders", "last_metadata_id": metadata_id})
    assert request.partition_key == "orders"
    assert request.run_key.startswith(first_key + ":again-") and request.run_key != first_key
    assert request.run_config["ops"]["dataloader__retry_analysis"]["config"]["metadata_id"] == (
        metadata_id
    )
    # Only the stale one: "busy" asked 30 min ago and may still be deciding.
    busy_stamp = control_row(db, "busy")["retry_analysis_requested_at"]
    assert busy_stamp < db.execute("SELECT now() - interval '29 minutes' AS t").fetchone()["t"]

    # The same after another timeout, but now the analysis run is still running in Dagster.
    db.execute(
        "UPDATE table_control SET retry_analysis_requested_at = now() - interval '2 hours'"
        " WHERE config_id = %s",
        (config_id,),
    )
    instance.add_run(
        dg.DagsterRun(
            job_name=RETRY_JOB,
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dataloader/metadata_id": str(metadata_id)},
        )
    )
    again = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=60))),
        instance,
        control_db,
    )
    assert isinstance(again, dg.SkipReason)
    restamped = control_row(db, "orders")["retry_analysis_requested_at"]
    assert restamped > db.execute("SELECT now() - interval '1 minute' AS t").fetchone()["t"]


def test_failed_monitor_uses_the_configured_analysis_timeout(control_db, db, instance):
    failed(db, "orders", 25)
    assert isinstance(tick(build_failed_monitor(Settings()), instance, control_db), dg.SkipReason)
    shorter = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=20))),
        instance,
        control_db,
    )
    assert [r.partition_key for r in shorter.run_requests] == ["orders"]


def test_analysis_timeout_setting():
    var = "DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES"
    assert load_settings({}).retry.analysis_timeout_minutes == 60
    assert load_settings({var: " 5 "}).retry.analysis_timeout_minutes == 5
    for bad in ("0", "soon"):
        with pytest.raises(SettingsError, match=var):
            load_settings({var: bad})


# -- 3. landing problems are visible on the control row -------------------------------------------


def test_landing_note_is_guarded_replaces_itself_and_is_cleared(db, client):
    ok = add_row(db, "ok", last_status="Succeeded", last_message="Loaded 5 rows")
    bare = add_row(db, "bare", last_status="Succeeded")
    busy = add_row(db, "busy", last_status="In Progress", last_message="running")
    done = add_row(
        db,
        "done",
        last_status="Succeeded",
        last_message="Loaded 1 rows",
        staging_model_processed=True,
    )
    assert client.note_landing_problem(ok, "no Delta table at /lake/x")
    assert client.note_landing_problem(ok, "password=hunter22 refused")  # replaces, redacted
    assert control_row(db, "ok")["last_message"].startswith("Loaded 5 rows | [Landing] ")
    assert control_row(db, "ok")["last_message"].count("[Landing]") == 1
    assert "hunter22" not in control_row(db, "ok")["last_message"]
    assert control_row(db, "ok")["last_status"] == "Succeeded"
    assert client.note_landing_problem(bare, "first")
    assert client.note_landing_problem(bare, "second")
    assert control_row(db, "bare")["last_message"] == "[Landing] second"
    # Not waiting for a staging model: left alone.
    assert not client.note_landing_problem(busy, "x")
    assert not client.note_landing_problem(done, "x")
    assert control_row(db, "busy")["last_message"] == "running"
    assert control_row(db, "done")["last_message"] == "Loaded 1 rows"
    # Generated later: the note goes, the load's own message stays.
    assert client.mark_staging_processed([ok, bare]) == 2
    assert control_row(db, "ok")["last_message"] == "Loaded 5 rows"
    assert control_row(db, "bare")["last_message"] is None


# -- 4. libraries per script on Databricks -------------------------------------------------------


def test_databricks_libraries_per_script_and_env_override():
    resource = PipesDatabricksResource.from_settings(
        load_settings({"DATALOADER_EXECUTION": "databricks"})
    )
    assert resource.libraries_for("dataloader_pipe.py") == ["dagster-pipes"]
    assert resource.libraries_for("dataloader_retry_pipe.py") == ["dagster-pipes", "openai"]
    assert resource.libraries_for("other.py") == ["dagster-pipes"]
    on_cluster = PipesDatabricksResource(execution="databricks", cluster_id="c")
    assert on_cluster.databricks_runner().task("dataloader_retry_pipe.py")["libraries"] == [
        {"pypi": {"package": "dagster-pipes"}},
        {"pypi": {"package": "openai"}},
    ]
    assert on_cluster.databricks_runner().task("dataloader_pipe.py")["libraries"] == [
        {"pypi": {"package": "dagster-pipes"}}
    ]
    pinned = PipesDatabricksResource.from_settings(
        load_settings(
            {
                "DATALOADER_EXECUTION": "databricks",
                "DATALOADER_DATABRICKS_LIBRARIES": "dagster-pipes==1.9.0, openai>=1.40",
            }
        )
    )
    for script in ("dataloader_pipe.py", "dataloader_retry_pipe.py"):
        assert pinned.libraries_for(script) == ["dagster-pipes==1.9.0", "openai>=1.40"]


# -- 5. a schema change brings the staging model back -------------------------------------------


def test_success_with_a_schema_change_asks_for_the_staging_model_again(db, client):
    for key in ("same", "changed"):
        add_row(db, key, staging_model_processed=True)
    for claimed in client.claim_due_tables(10):
        config_id, metadata_id = claimed["config_id"], claimed["metadata_id"]
        assert client.start_load(config_id, metadata_id, dagster_run_id="r", dagster_run_url="u")
        assert client.record_success(
            config_id,
            metadata_id,
            rows_read=1,
            rows_written=1,
            watermark_after=None,
            schema_changed=claimed["control_key"] == "changed",
        )
    assert control_row(db, "same")["staging_model_processed"] is True
    assert control_row(db, "changed")["staging_model_processed"] is False
    assert [r["control_key"] for r in client.get_unprocessed_landing_tables()] == ["changed"]
