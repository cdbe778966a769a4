"""Batch runs on Databricks (DATALOADER_RUN_BATCH_SIZE > 1, issue 28): ONE Databricks run for a
batch, one task per table on shared compute, against the local Databricks stand-in.

Real parts: the embedded control and source databases, the real master_sensor claiming the
batch, the batch job, databricks-sdk and dagster-databricks' Pipes readers, the unmodified load
script run by the stand-in for each task, real Delta tables.

- a batch of 10 tables on an existing cluster is ONE ``runs/submit`` with 10 tasks (one after the
  other); the one failing table fails only its own row, the other nine end Succeeded, each with
  its own history row, Databricks task link and materialization of its own partition;
- a batch on a new cluster is one transient job (``jobs/create`` with ONE job cluster, each task
  on it by ``job_cluster_key``, ``jobs/run-now``, the job deleted after): one cluster start;
- serverless: one ``runs/submit`` whose tasks share the run's one environment;
- the payload is the SDK's own types (``SubmitTask`` / ``Task`` / ``JobCluster`` round trips drop
  nothing), and the stand-in refuses any field they do not know.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import dagster as dg
import pytest
from databricks.sdk.service import jobs
from databricks_fixtures import BACKENDS, NEW_CLUSTER, databricks_backend
from databricks_standin import (  # noqa: F401
    CLUSTER,
    REPO_SCRIPTS,
    VOLUME,
    WORKSPACE_SCRIPTS,
    DatabricksStandin,
    arrow_runtime,
    databricks_standin,
    event_text,
)
from deltalake import DeltaTable
from helpers import SensorLoop, add_control_row, control_row, history, lakebase_for
from test_load_asset import _source_query_running
from test_run_batches import batch_settings, master_sensor

from dagsters.assets.load_batch import build_load_batch_job
from dagsters.policy.run_requests import LOAD_ASSET, LOAD_BATCH_JOB
from dagsters.runners.databricks import DatabricksRunner
from dagsters.runners.databricks_batch import JOB_CLUSTER_KEY, batch_tasks, task_key


def claim_and_run_batch(control_db, instance, lake_root, size: int, backend: str):
    """master_sensor's claim of one batch, then the run worker executing it on Databricks."""
    settings = batch_settings(lake_root, size=size)
    [request] = SensorLoop(master_sensor(settings), instance, control_db).tick().run_requests
    assert request.job_name == LOAD_BATCH_JOB
    result = build_load_batch_job(settings).execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": databricks_backend(backend),
        },
        raise_on_error=False,
    )
    return result


def load_partitions(instance) -> dict[str, dg.EventLogRecord]:
    records = instance.fetch_materializations(dg.AssetKey(LOAD_ASSET), limit=50).records
    return {r.partition_key: r for r in records}


def test_a_batch_of_ten_is_one_run_of_ten_tasks_and_a_failing_task_fails_only_its_row(
    standin, control_db, source_db, source, lake_root, db, instance
):
    keys = [f"d.t{i}" for i in range(10)]
    for key in keys:
        table = "no_such_table" if key == "d.t4" else "orders"
        add_control_row(db, source_db, key, table, destination_table_name=key.replace(".", "_"))

    result = claim_and_run_batch(control_db, instance, lake_root, 10, "existing_cluster")

    assert not result.success
    submits = standin.requests_to("POST", r"/api/2\.[12]/jobs/runs/submit")
    assert len(submits) == 1, "a batch of 10 is one Databricks run"
    run = standin.only_job_run()
    assert [t.task["task_key"] for t in run.task_runs] == [
        task_key(i, k) for i, k in enumerate(keys)
    ]
    assert {t.cluster_id for t in run.task_runs} == {CLUSTER}
    for before, task in zip(run.task_runs, run.task_runs[1:], strict=False):
        assert task.task["depends_on"] == [{"task_key": before.task["task_key"]}]
        assert task.task["run_if"] == "ALL_DONE"  # a failed table does not skip the next
    states = {t.task["task_key"]: t.result_state for t in run.task_runs}
    assert [k for k, state in states.items() if state != "SUCCESS"] == [task_key(4, "d.t4")]

    by_partition = load_partitions(instance)
    assert set(by_partition) == set(keys) - {"d.t4"}
    for index, key in enumerate(keys):
        row, [attempt] = control_row(db, key), history(db, key)
        task = run.task_runs[index]
        page = standin.workspace_client().jobs.get_run(run.run_id).tasks[index].run_page_url
        assert row["last_databricks_run"] == page, key  # its own task's page
        assert attempt["dagster_run_id"] == result.run_id
        if key == "d.t4":
            assert row["last_status"] == "Failed"
            assert "no_such_table" in row["last_message"]
            assert (attempt["status"], attempt["message"]) == ("Failed", row["last_message"])
            assert task.result_state == "FAILED"
            continue
        assert row["last_status"] == "Succeeded", row
        assert (attempt["status"], attempt["rows_written"]) == ("Succeeded", 25)
        meta = by_partition[key].asset_materialization.metadata
        assert meta["metadata_id"].value == str(row["last_metadata_id"])
        assert meta["rows_written"].value == 25
        table = lake_root / "lake" / "raw" / key.replace(".", "_")
        assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 25
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "1 of 10 table(s) failed" in str(failure.event_specific_data.error)


def test_terminating_a_databricks_batch_cancels_its_one_run_and_ends_each_table_on_its_own(
    standin, control_db, source_db, source, lake_root, db, instance
):
    # As the local batch (test_run_batches): the second table's source query takes a minute and
    # the Dagster run is terminated inside it. On Databricks the batch is one run: the terminate
    # cancels it (runs/cancel), the running task stops, and each table ends on its own.
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
    terminated = threading.Event()

    def terminate_inside_the_source_query() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _source_query_running(source, "slow_orders"):
                os.kill(os.getpid(), signal.SIGINT)  # what a run worker gets on termination
                terminated.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=terminate_inside_the_source_query, daemon=True)
    killer.start()
    result = claim_and_run_batch(control_db, instance, lake_root, 3, "existing_cluster")
    killer.join(timeout=5)

    assert terminated.is_set(), "the slow table's load never reached its source query"
    assert not result.success
    assert len(standin.requests_to("POST", r"/api/2\.[12]/jobs/runs/submit")) == 1
    assert len(standin.requests_to("POST", r"/api/2\.[12]/jobs/runs/cancel")) == 1
    run = standin.only_job_run()
    assert run.done.wait(60), "the cancelled run never ended"
    assert run.state()[:2] == ("TERMINATED", "CANCELED")
    assert run.task_runs[0].result_state == "SUCCESS"
    assert control_row(db, "t.first")["last_status"] == "Succeeded"
    for key in ("t.slow", "t.after"):
        row = control_row(db, key)
        assert row["last_status"] == "Failed", (key, row["last_message"])
        assert row["last_message"].startswith("Cancelled - "), (key, row["last_message"])
        assert row["last_failure_kind"] == "cancelled", key
        assert [h["status"] for h in history(db, key)] == ["Failed"], key
    assert set(load_partitions(instance)) == {"t.first"}  # the written table is recorded
    assert DeltaTable(str(lake_root / "lake" / "raw" / "t_first")).to_pyarrow_table().num_rows == 25


def test_a_new_cluster_batch_starts_compute_once(
    standin, control_db, source_db, source, lake_root, db, instance
):
    keys = ["c.one", "c.two", "c.three"]
    for key in keys:
        add_control_row(db, source_db, key, "orders", destination_table_name=key.replace(".", "_"))

    result = claim_and_run_batch(control_db, instance, lake_root, 3, "new_cluster")

    assert result.success, event_text(instance, result.run_id)
    run = standin.only_job_run()
    assert len(run.task_runs) == 3
    [created] = standin.requests_to("POST", r"/api/2\.[12]/jobs/create")
    assert [c["job_cluster_key"] for c in created.body["job_clusters"]] == [JOB_CLUSTER_KEY]
    assert {t.task["job_cluster_key"] for t in run.task_runs} == {JOB_CLUSTER_KEY}
    assert len(standin.cluster_starts) == 1  # one cluster for the batch, not one per table
    assert len({t.cluster_id for t in run.task_runs}) == 1
    assert standin.jobs == {} and len(standin.deleted_jobs) == 1  # the transient job went
    for key in keys:
        assert control_row(db, key)["last_status"] == "Succeeded"
    assert set(load_partitions(instance)) == set(keys)


def test_a_serverless_batch_of_jdbc_rows_is_refused_before_anything_is_submitted(
    standin, control_db, source_db, source, lake_root, db, instance
):
    """Serverless runs no spark.read.format('jdbc'): each row of the batch fails on its own with
    the fix in its message, and no run starts (the shared environment is checked by the
    payload test below)."""
    keys = ["c.one", "c.two", "c.three"]
    for key in keys:
        add_control_row(db, source_db, key, "orders", destination_table_name=key.replace(".", "_"))

    result = claim_and_run_batch(control_db, instance, lake_root, 3, "serverless")

    assert not result.success
    assert standin.requests_to("POST", r"/api/2\.[12]/jobs/runs/submit") == []
    for key in keys:
        row, [attempt] = control_row(db, key), history(db, key)
        assert (row["last_status"], row["last_failure_kind"]) == ("Failed", "bad_config"), row
        assert "Lakehouse Federation" in row["last_message"]
        assert attempt["status"] == "Failed"
    assert load_partitions(instance) == {}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_batch_payload_is_the_sdks_own_types(backend):
    settings = databricks_backend(backend)
    runner: DatabricksRunner = settings.databricks_runner()
    keys = [task_key(i, k) for i, k in enumerate(["a.b", "weird key/ü", "x" * 200])]
    assert keys[1] == "t001_weird_key__" and len(keys[2]) == 100
    tasks, clusters = batch_tasks(runner, "dataloader_pipe.py", keys, [["--a", "1"]] * 3)
    kind = jobs.Task if clusters else jobs.SubmitTask
    for task in tasks:  # a round trip through the SDK's type drops nothing
        assert kind.from_dict(task).as_dict() == task
    for cluster in clusters:
        assert jobs.JobCluster.from_dict(cluster).as_dict() == cluster
    assert bool(clusters) == (backend == "new_cluster")
    if backend == "serverless":  # the tasks share the run's one environment
        assert {t["environment_key"] for t in tasks} == {"dataloader"}
    if clusters:
        assert clusters[0]["new_cluster"]["spark_version"] in NEW_CLUSTER
