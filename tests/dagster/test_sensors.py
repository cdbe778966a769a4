"""The five sensors against real control rows: what each yields and what it changes in Lakebase."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from helpers import SensorLoop, add_history, add_row, control_row, make_row, tick

from dagsters.control.rows import AnalysisClaim, control_values
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, RETRY_ASSET
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor, triage_failures
from dagsters.sensors.dataloader_landing_table_monitor import build_landing_table_monitor
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import RetryPolicy, Settings, SettingsError, load_settings


def test_master_sensor_skips_with_a_reason_when_nothing_is_due(control_db, db, instance):
    add_row(db, "future")
    db.execute("UPDATE table_control SET next_load_date_time = now() + interval '1 hour'")
    add_row(db, "inactive", is_active=False)
    loop = SensorLoop(build_master_sensor(Settings()), instance, control_db)
    # The first tick gives every row its partition (inactive ones too: a person may rerun them).
    first = loop.tick()
    assert "No table is due" in first.skip_reason.skip_message
    [add] = first.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["future", "inactive"]
    result = loop.tick()
    assert isinstance(result, dg.SkipReason)
    assert "No table is due" in result.skip_message
    assert db.execute("SELECT count(*) AS n FROM historical_metadata").fetchone()["n"] == 0


def test_master_sensor_claims_due_rows_and_requests_one_partitioned_run_each(
    control_db, db, instance
):
    add_row(
        db,
        "orders",
        load_strategy="incremental",
        incremental_column="updated_at",
        incremental_value="2024-01-01 00:00:00",
    )
    add_row(db, "customers", merge_keys=["id"], load_strategy="merge")
    add_row(db, "later")
    db.execute(
        "UPDATE table_control SET next_load_date_time = now() + interval '1 day'"
        " WHERE control_key = 'later'"
    )
    loop = SensorLoop(build_master_sensor(Settings()), instance, control_db)
    result = loop.tick()

    assert isinstance(result, dg.SensorResult)
    by_key = {r.partition_key: r for r in result.run_requests}
    assert set(by_key) == {"orders", "customers"}
    orders = control_row(db, "orders")
    assert orders["last_status"] == "Queued"
    request = by_key["orders"]
    assert request.run_key == f"orders:{orders['last_metadata_id']}"
    config = request.run_config["ops"][LOAD_ASSET]["config"]
    # Which attempt, nothing copied from the row for show: the asset reads the row itself.
    assert config == {
        "config_id": orders["config_id"],
        "control_key": "orders",
        "metadata_id": orders["last_metadata_id"],
    }
    assert request.tags["dataloader/control_key"] == "orders"
    assert request.tags["dataloader/source_system"] == "postgresql_db1.internal_5432"
    assert request.tags["dataloader/destination"] == "lake.raw.orders"
    # New tables become partitions in the same tick, claimed or not.
    [partition_request] = result.dynamic_partitions_requests
    assert partition_request.partitions_def_name == PARTITIONS_NAME
    assert set(partition_request.partition_keys) == {"orders", "customers", "later"}
    history = db.execute(
        "SELECT status, triggered_by FROM historical_metadata WHERE metadata_id = %s",
        (orders["last_metadata_id"],),
    ).fetchone()
    assert history == {"status": "Queued", "triggered_by": "sensor"}
    assert control_row(db, "later")["last_status"] is None

    # The next tick finds them already queued.
    assert isinstance(loop.tick(), dg.SkipReason)


def test_master_sensor_honours_batch_size(control_db, db, instance):
    for key in ("a", "b", "c"):
        add_row(db, key)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["a", "b", "c"])
    result = tick(
        build_master_sensor(Settings(master_batch_size=2, source_concurrency=3)),
        instance,
        control_db,
    )
    assert len(result.run_requests) == 2
    # Known keys may be requested again: the daemon adds only missing ones.
    [partition_request] = result.dynamic_partitions_requests
    assert set(partition_request.partition_keys) == {r.partition_key for r in result.run_requests}
    result = tick(
        build_master_sensor(Settings(master_batch_size=2, source_concurrency=3)),
        instance,
        control_db,
    )
    assert [r.partition_key for r in result.run_requests] == ["c"]


def test_master_sensor_skips_a_row_claimed_by_someone_else(control_db, db, instance):
    add_row(db, "locked")
    add_row(db, "free")
    with psycopg.connect(control_db) as other:
        # Another claimer holds the row in its open transaction: SKIP LOCKED passes it by.
        other.execute("SELECT 1 FROM table_control WHERE control_key = 'locked' FOR UPDATE")
        result = tick(build_master_sensor(Settings()), instance, control_db)
        other.rollback()
    assert [r.partition_key for r in result.run_requests] == ["free"]
    assert control_row(db, "locked")["last_status"] is None


def test_longqueued_monitor_fails_only_rows_queued_too_long(control_db, db, instance):
    stuck = add_row(db, "stuck")
    fresh = add_row(db, "fresh")
    started = add_row(db, "started")
    add_history(db, stuck, "stuck", "Queued")
    add_history(db, fresh, "fresh", "Queued")
    add_history(db, started, "started", "In Progress")
    db.execute(
        "UPDATE table_control SET last_status = 'Queued',"
        " last_status_date_time = now() - interval '61 minutes' WHERE control_key = 'stuck';"
    )
    db.execute(
        "UPDATE table_control SET last_status = 'Queued',"
        " last_status_date_time = now() - interval '5 minutes' WHERE control_key = 'fresh'"
    )
    # Its load started meanwhile: an old status time alone must not fail it.
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress', last_load_date_time = now(),"
        " last_status_date_time = now() - interval '2 hours' WHERE control_key = 'started'"
    )
    result = tick(build_longqueued_monitor(Settings()), instance, control_db)
    assert isinstance(result, dg.SkipReason)
    assert "stuck" in result.skip_message
    assert control_row(db, "stuck")["last_status"] == "Failed"
    assert control_row(db, "stuck")["last_message"] == "Cancelled - stuck in queue for >60 minutes"
    history = db.execute(
        "SELECT status, message FROM historical_metadata WHERE config_id = %s", (stuck,)
    ).fetchone()
    assert history["status"] == "Failed"
    assert control_row(db, "fresh")["last_status"] == "Queued"
    assert control_row(db, "started")["last_status"] == "In Progress"
    again = tick(build_longqueued_monitor(Settings()), instance, control_db)
    assert "No row has been Queued" in again.skip_message


def test_longrunning_monitor_cancels_the_dagster_run_then_fails_the_row(control_db, db, instance):
    # A queued run is cancelled by the run coordinator itself (no code server needed).
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                loadable_target_origin=LoadableTargetOrigin(module_name="dagsters.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name="dataloader__table_load_job",
    )
    run = dg.DagsterRun(
        job_name="dataloader__table_load_job",
        run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.QUEUED,
        remote_job_origin=origin,
    )
    instance.add_run(run)
    slow = add_row(db, "slow")
    metadata_id = add_history(db, slow, "slow", "In Progress")
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress',"
        " last_load_date_time = now() - interval '181 minutes', last_dagster_run = %s"
        " WHERE control_key = 'slow'",
        (f"http://127.0.0.1:3000/runs/{run.run_id}",),
    )
    recent = add_row(db, "recent")
    add_history(db, recent, "recent", "In Progress")
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress',"
        " last_load_date_time = now() - interval '10 minutes' WHERE control_key = 'recent'"
    )
    done = add_row(db, "done")
    add_history(db, done, "done", "Succeeded")
    db.execute(
        "UPDATE table_control SET last_status = 'Succeeded',"
        " last_load_date_time = now() - interval '5 hours' WHERE control_key = 'done'"
    )

    result = tick(build_longrunning_monitor(Settings()), instance, control_db)

    assert "slow" in result.skip_message
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    slow_row = control_row(db, "slow")
    assert slow_row["last_status"] == "Failed"
    assert slow_row["last_message"] == "Cancelled - exceeded 180 minute timeout"
    assert (
        db.execute(
            "SELECT status FROM historical_metadata WHERE metadata_id = %s", (metadata_id,)
        ).fetchone()["status"]
        == "Failed"
    )
    assert control_row(db, "recent")["last_status"] == "In Progress"
    assert control_row(db, "done")["last_status"] == "Succeeded"


def test_longrunning_monitor_threshold_comes_from_settings(control_db, db, instance):
    slow = add_row(db, "slow")
    add_history(db, slow, "slow", "In Progress")
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress',"
        " last_load_date_time = now() - interval '10 minutes' WHERE control_key = 'slow'"
    )
    tick(build_longrunning_monitor(Settings(longrunning_threshold_minutes=5)), instance, control_db)
    assert control_row(db, "slow")["last_message"] == "Cancelled - exceeded 5 minute timeout"


def test_failed_monitor_requests_one_analysis_per_failure(control_db, db, instance):
    failed = add_row(db, "failed")
    metadata_id = add_history(db, failed, "failed", "Failed")
    reviewed = add_row(db, "reviewed", needs_review=True)
    add_history(db, reviewed, "reviewed", "Failed")
    exhausted = add_row(db, "exhausted", retry_count=3)
    add_history(db, exhausted, "exhausted", "Failed")
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', last_status_date_time = now(),"
        " last_message = 'connection reset'"
    )

    result = tick(build_failed_monitor(Settings()), instance, control_db)

    [request] = result.run_requests
    assert request.partition_key == "failed"
    assert request.run_key == f"retry-analysis:failed:{metadata_id}"
    config = request.run_config["ops"][RETRY_ASSET]["config"]
    assert config == {"config_id": failed, "control_key": "failed", "metadata_id": metadata_id}
    assert control_row(db, "failed")["retry_analysis_requested_at"] is not None
    assert control_row(db, "reviewed")["retry_analysis_requested_at"] is None
    # Retries used up: marked for review by rule, no analysis run.
    exhausted_row = control_row(db, "exhausted")
    assert exhausted_row["needs_review"] is True
    assert exhausted_row["last_status"] == "Failed"
    assert exhausted_row["last_message"].startswith("[AI Analysis - Requires Review]")
    # Already being analysed: not requested twice.
    again = tick(build_failed_monitor(Settings()), instance, control_db)
    assert isinstance(again, dg.SkipReason)
    assert "No failure to analyse" in again.skip_message


def test_landing_table_monitor_batches_new_tables_into_one_run(control_db, db, instance):
    ids = []
    for key in ("t1", "t2"):
        config_id = add_row(db, key)
        add_history(db, config_id, key, "Succeeded")
        ids.append(config_id)
    processed = add_row(db, "t3", staging_model_processed=True)
    add_history(db, processed, "t3", "Succeeded")
    db.execute("UPDATE table_control SET last_status = 'Succeeded'")

    request = tick(build_landing_table_monitor(Settings()), instance, control_db)

    assert isinstance(request, dg.RunRequest)
    assert request.run_config == {
        "ops": {"landing_table_git_op": {"config": {"config_ids": sorted(ids)}}}
    }
    same = tick(build_landing_table_monitor(Settings()), instance, control_db)
    assert same.run_key == request.run_key  # same batch -> launched once

    instance.add_run(
        dg.DagsterRun(
            job_name="landing_table_git_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    waiting = tick(build_landing_table_monitor(Settings()), instance, control_db)
    assert isinstance(waiting, dg.SkipReason)
    assert "still in flight" in waiting.skip_message


def test_landing_table_monitor_idle(control_db, instance):
    result = tick(build_landing_table_monitor(Settings()), instance, control_db)
    assert isinstance(result, dg.SkipReason)


def test_runs_are_tagged_with_dagster_environment(control_db, db, instance):
    env = Settings(environment="prod")
    add_row(db, "due")
    failed = add_row(db, "failed")
    add_history(db, failed, "failed", "Failed")
    landed = add_row(db, "landed")
    add_history(db, landed, "landed", "Succeeded")
    db.execute(
        "UPDATE table_control SET last_status = 'Failed' WHERE control_key = 'failed';"
        "UPDATE table_control SET last_status = 'Succeeded' WHERE control_key = 'landed';"
        "UPDATE table_control SET next_load_date_time = now() + interval '1 day'"
        " WHERE control_key <> 'due'"
    )
    [load] = tick(build_master_sensor(env), instance, control_db).run_requests
    [analysis] = tick(build_failed_monitor(env), instance, control_db).run_requests
    landing = tick(build_landing_table_monitor(env), instance, control_db)
    for request in (load, analysis, landing):
        assert request.tags["dataloader/environment"] == "prod"
    # Unset (local work): no environment tag at all.
    db.execute("UPDATE table_control SET next_load_date_time = now() WHERE control_key = 'landed'")
    [plain] = tick(build_master_sensor(Settings()), instance, control_db).run_requests
    assert "dataloader/environment" not in plain.tags


def test_dagster_environment_is_validated():
    assert load_settings({}).environment is None
    assert load_settings({"DAGSTER_ENVIRONMENT": " PROD "}).environment == "prod"
    assert load_settings({"DAGSTER_ENVIRONMENT": "npd"}).environment == "npd"
    with pytest.raises(SettingsError, match="DAGSTER_ENVIRONMENT must be one of"):
        load_settings({"DAGSTER_ENVIRONMENT": "production"})


def test_sensor_skip_reasons_say_what_was_looked_for(control_db, instance):
    expected = {
        build_master_sensor: "No table is due: no active row with next_load_date_time <= now() "
        "outside Queued/In Progress.",
        build_longqueued_monitor: "No row has been Queued for more than 60 minutes.",
        build_longrunning_monitor: "No load has run for more than 180 minutes.",
        build_failed_monitor: "No failure to analyse (Failed, retry_count < 3, not under review, "
        "not already being analysed).",
        build_landing_table_monitor: "No newly loaded table is waiting for its staging model.",
    }
    for build, message in expected.items():
        result = tick(build(Settings()), instance, control_db)
        assert isinstance(result, dg.SkipReason), build
        assert result.skip_message == message


def test_failed_monitor_triage_follows_the_retry_policy():
    earlier = datetime(2024, 1, 1, tzinfo=UTC)

    def claim(key: str, retries: int, previous: datetime | None = None) -> AnalysisClaim:
        values = control_values(make_row(control_key=key, retry_count=retries))
        return AnalysisClaim(**values, previous_analysis_requested_at=previous)

    rows = [claim("a", 4), claim("b", 5), claim("c", 0, earlier), claim("d", 1, earlier)]
    active = {"c": "run-1"}

    triage = triage_failures(rows, RetryPolicy(max_retries=5), lambda r: active.get(r.control_key))

    assert [r.control_key for r in triage.analyse] == ["a", "d"]
    assert [(r.control_key, d.decider) for r, d in triage.by_rule] == [("b", "rules")]
    assert [(r.control_key, run) for r, run in triage.waiting] == [("c", "run-1")]
    assert [r.control_key for r in triage.again] == ["d"]
    spec = triage_failures(rows, RetryPolicy(), lambda r: None)
    assert [r.control_key for r, _ in spec.by_rule] == ["a", "b"]
