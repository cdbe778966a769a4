"""Batch runs (DATALOADER_RUN_BATCH_SIZE > 1, issue 28): several tables of one source in one run.

Real parts: the embedded control and source databases, the real master_sensor, the batch job
executed in a Dagster instance, the load script as a subprocess writing real Delta tables.

- a batch of three tables where one fails: the other two end Succeeded, each with its own history
  row and a materialization of its own ``dataloader__table_load`` partition and destination table;
  the failing one ends Failed with its own history row and message; the run fails naming it;
- the monitors find a batch run by its per-attempt tags: a started batch run's Queued rows are
  neither released nor failed, a batch run that ended without starting them fails them, a claim
  with no run at all is released;
- per-source slots count runs: a batch holds one slot of its source;
- batch size 1 (the default) launches one partitioned run per row, as without the knob.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from deltalake import DeltaTable
from helpers import (
    SensorLoop,
    add_control_row,
    control_row,
    evaluate,
    history,
    lakebase_for,
    load_scripts,
    sensor_resources,
)
from test_load_asset import _source_query_running

from dagsters.assets.load_batch import build_load_batch_job
from dagsters.control.rows import ClaimedRow
from dagsters.policy.run_requests import (
    LOAD_ASSET,
    LOAD_BATCH_JOB,
    attempt_tag,
    batch_run_tags,
)
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient


def batch_settings(lake_root, size: int = 3, **env: str):
    return load_settings(
        {"DATALOADER_RUN_BATCH_SIZE": str(size), "DATALOADER_LAKE_ROOT": str(lake_root), **env}
    )


def master_sensor(settings):
    load_job = dg.define_asset_job(LOAD_JOB, selection=[LOAD_ASSET])
    return build_master_sensor(settings, [load_job, build_load_batch_job(settings)])


def three_rows(db, source_db) -> None:
    for key, table in (("b.one", "orders"), ("b.bad", "no_such_table"), ("b.two", "orders")):
        add_control_row(db, source_db, key, table, destination_table_name=key.replace(".", "_"))


def run_batch(settings, request, control_db, instance) -> dg.ExecuteInProcessResult:
    """What the run worker does with master_sensor's batch request."""
    return build_load_batch_job(settings).execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(settings),
        },
        raise_on_error=False,
    )


def test_a_batch_of_three_where_one_fails_keeps_each_tables_own_outcome(
    control_db, source_db, source, lake_root, db, instance
):
    three_rows(db, source_db)
    settings = batch_settings(lake_root)

    result = SensorLoop(master_sensor(settings), instance, control_db).tick()

    [request] = result.run_requests
    assert request.job_name == LOAD_BATCH_JOB
    assert request.partition_key is None
    rows = {key: control_row(db, key) for key in ("b.one", "b.bad", "b.two")}
    for row in rows.values():
        assert row["last_status"] == "Queued"
        assert request.tags[attempt_tag(row["last_metadata_id"])] == str(row["config_id"])

    run = run_batch(settings, request, control_db, instance)

    assert not run.success
    [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "1 of 3 table(s) failed" in str(failure.event_specific_data.error)
    assert "b.bad" in str(failure.event_specific_data.error)
    for key in ("b.one", "b.two"):
        row = control_row(db, key)
        assert row["last_status"] == "Succeeded", row
        assert row["last_dagster_run"].endswith(f"/runs/{run.run_id}")
        [attempt] = history(db, key)
        assert attempt["status"] == "Succeeded"
        assert attempt["rows_written"] == 25
        assert attempt["dagster_run_id"] == run.run_id
        table = lake_root / "lake" / "raw" / key.replace(".", "_")
        assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 25
    bad = control_row(db, "b.bad")
    assert bad["last_status"] == "Failed"
    assert "no_such_table" in bad["last_message"]
    [attempt] = history(db, "b.bad")
    assert attempt["status"] == "Failed"
    assert attempt["dagster_run_id"] == run.run_id
    assert "no_such_table" in attempt["message"]

    # Each loaded table materialized its own partition of the load asset, in this run.
    records = instance.fetch_materializations(dg.AssetKey(LOAD_ASSET), limit=10).records
    by_partition = {r.partition_key: r for r in records}
    assert set(by_partition) == {"b.one", "b.two"}
    for key, record in by_partition.items():
        assert record.run_id == run.run_id
        meta = record.asset_materialization.metadata
        assert meta["metadata_id"].value == str(rows[key]["last_metadata_id"])
        assert meta["rows_written"].value == 25
    for name in ("b_one", "b_two"):
        [table] = instance.fetch_materializations(
            dg.AssetKey(["lake", "raw", name]), limit=1
        ).records
        assert table.asset_materialization.metadata["dagster/row_count"].value == 25
    assert not instance.fetch_materializations(
        dg.AssetKey(["lake", "raw", "b_bad"]), limit=1
    ).records
    checks = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert {c.dagster_event.asset_check_evaluation_data.asset_key for c in checks} == {
        dg.AssetKey(["lake", "raw", "b_one"]),
        dg.AssetKey(["lake", "raw", "b_two"]),
    }


def test_terminating_a_batch_ends_each_table_on_its_own(
    control_db, source_db, source, lake_root, db, instance
):
    # The second table's source query takes a minute: the run is terminated inside it.
    source.execute(
        "CREATE VIEW public.slow_orders AS SELECT o.* FROM public.orders o"
        " WHERE (SELECT count(*) FROM pg_sleep(60)) > 0"
    )
    for key, table in (("t.first", "orders"), ("t.slow", "slow_orders"), ("t.after", "orders")):
        add_control_row(
            db,
            source_db,
            key,
            table,
            load_strategy="full",
            incremental_column=None,
            destination_table_name=key.replace(".", "_"),
        )
    settings = batch_settings(lake_root)
    [request] = SensorLoop(master_sensor(settings), instance, control_db).tick().run_requests
    terminated = threading.Event()

    def terminate_inside_the_source_query() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                control_row(db, "t.slow")["last_status"] == "In Progress"
                and load_scripts()
                and _source_query_running(source, "slow_orders")
            ):
                os.kill(os.getpid(), signal.SIGINT)  # what a run worker gets on termination
                terminated.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=terminate_inside_the_source_query, daemon=True)
    killer.start()
    run = run_batch(settings, request, control_db, instance)
    killer.join(timeout=5)

    assert terminated.is_set(), "the load never reached its source query"
    assert not run.success
    assert control_row(db, "t.first")["last_status"] == "Succeeded"
    slow, after = control_row(db, "t.slow"), control_row(db, "t.after")
    assert slow["last_status"] == "Failed"
    assert slow["last_message"].startswith(f"Cancelled - Dagster run {run.run_id} was terminated")
    assert after["last_status"] == "Failed"
    assert after["last_message"] == (
        f"Cancelled - Dagster run {run.run_id} was terminated before this table's load started"
    )
    assert [h["status"] for h in history(db, "t.after")] == ["Failed"]
    # A terminate is a cancel, as for a one-table run: failed_monitor leaves both rows alone.
    assert slow["last_failure_kind"] == after["last_failure_kind"] == "cancelled"
    records = instance.fetch_materializations(dg.AssetKey(LOAD_ASSET), limit=10).records
    assert [r.partition_key for r in records] == ["t.first"]
    assert load_scripts() == []


def _age_claims(db, minutes: int) -> None:
    db.execute(
        "UPDATE table_control SET last_status_date_time = now() - make_interval(mins => %s)"
        " WHERE last_status = 'Queued'",
        (minutes,),
    )


def _claim_batch(control_db, size: int = 3, per_source: int = 2) -> list[ClaimedRow]:
    with LakebaseClient(control_db) as client:
        return client.claim_due_batch(size, per_source)


def test_monitors_find_the_batch_run_of_every_attempt(
    control_db, source_db, lake_root, db, instance
):
    three_rows(db, source_db)
    settings = batch_settings(lake_root)
    claimed = _claim_batch(control_db)
    assert len(claimed) == 3
    run = create_run_for_test(
        instance,
        job_name=LOAD_BATCH_JOB,
        tags=batch_run_tags(claimed),
        status=dg.DagsterRunStatus.STARTED,
    )
    _age_claims(db, 90)  # past the orphan check (5 min) and the long-queued threshold (60)

    SensorLoop(master_sensor(settings), instance, control_db).tick()
    evaluate(build_longqueued_monitor(settings), instance, sensor_resources(control_db))

    for row in claimed:  # the batch is loading the tables before them: left alone
        state = control_row(db, row.control_key)
        assert state["last_status"] == "Queued", state
        assert state["last_metadata_id"] == row.metadata_id

    instance.report_run_failed(run)  # the run ended without starting them (a crash)
    SensorLoop(master_sensor(settings), instance, control_db).tick()
    for row in claimed:
        state = control_row(db, row.control_key)
        assert state["last_status"] == "Failed", state
        assert run.run_id in state["last_message"]
        assert history(db, row.control_key)[-1]["status"] == "Failed"


def test_a_batch_claim_without_a_run_is_released(control_db, source_db, lake_root, db, instance):
    three_rows(db, source_db)
    claimed = _claim_batch(control_db)
    _age_claims(db, 10)

    SensorLoop(master_sensor(batch_settings(lake_root)), instance, control_db).tick()

    for row in claimed:
        [released, *_] = history(db, row.control_key)
        assert released["metadata_id"] == row.metadata_id
        assert released["status"] == "Failed"
        assert "no Dagster run was created" in released["message"]


def test_a_batch_holds_one_slot_of_its_source(control_db, source_db, db):
    for n in range(7):
        add_control_row(db, source_db, f"s.{n}", "orders", destination_table_name=f"t{n}")

    first = _claim_batch(control_db, size=3, per_source=2)
    second = _claim_batch(control_db, size=3, per_source=2)
    third = _claim_batch(control_db, size=3, per_source=2)

    assert (len(first), len(second), third) == (3, 3, [])  # two runs of three; the limit is 2
    assert {r.control_key for r in first} | {r.control_key for r in second} == {
        f"s.{n}" for n in range(6)
    }
    # A table of the first batch finishing frees nothing: its run still loads the others.
    db.execute(
        "UPDATE table_control SET last_status = 'Succeeded',"
        " next_load_date_time = now() + interval '1 hour' WHERE config_id = %s",
        (first[0].config_id,),
    )
    assert _claim_batch(control_db, size=3, per_source=2) == []
    db.execute(
        "UPDATE table_control SET last_status = 'Succeeded',"
        " next_load_date_time = now() + interval '1 hour' WHERE config_id = ANY(%s)",
        ([r.config_id for r in first],),
    )
    assert [r.control_key for r in _claim_batch(control_db, size=3, per_source=2)] == ["s.6"]


@pytest.mark.parametrize("env", [{}, {"DATALOADER_RUN_BATCH_SIZE": "1"}], ids=["unset", "1"])
def test_batch_size_one_is_one_partitioned_run_per_row(
    control_db, source_db, lake_root, db, instance, env
):
    three_rows(db, source_db)
    settings = load_settings(env)
    sensor = build_master_sensor(settings)

    result = SensorLoop(sensor, instance, control_db).tick()

    assert settings.run_batch_size == 1
    # One run per row, within the source's 2 slots, each its row's partition.
    assert sorted(r.partition_key for r in result.run_requests) == ["b.bad", "b.one"]
    for request in result.run_requests:
        assert request.job_name is None  # the sensor's one job, the load job
        assert not any(tag.startswith("dataloader/attempt-") for tag in request.tags)
    assert sensor.job_name == LOAD_JOB


def test_databricks_execution_does_not_batch_yet(lake_root):
    settings = batch_settings(lake_root, 10, DATALOADER_EXECUTION="databricks")
    assert build_master_sensor(settings).job_name == LOAD_JOB
