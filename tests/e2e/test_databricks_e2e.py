"""dataloader__table_load through the Databricks backend, against the local Databricks stand-in.

The real databricks-sdk and dagster-databricks clients submit the real, unmodified
databricks_scripts/dataloader_pipe.py (deployed to /Workspace like the bundle does) to the
stand-in, which runs it: full and incremental loads for an existing cluster (CLI-args bootstrap)
and a new cluster (spark_env_vars bootstrap); serverless (Unity Catalog volume, its environment)
runs the retry analysis (a JDBC row is refused there before submitting:
test_databricks_compute_details.py). Also pinned: a
failing script leaves its own error on the row, termination cancels the Databricks run, the
Databricks run carries the Dagster run id, and HTTP 429/503 while polling does not fail a load.
"""

import os
import signal
import threading

import dagster as dg
import psycopg
import pytest
from databricks_fixtures import (  # noqa: F401
    BACKENDS,
    NEW_CLUSTER,
    claim_and_materialize,
    databricks_backend,
    destination_rows,
)
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
from helpers import add_control_row, control_row, evaluate, history, lakebase_for
from test_load_asset import materializations

from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.runners.databricks import SERVERLESS_ENVIRONMENT_VERSION, pinned
from dagsters.settings import load_settings


# Serverless has no plain JDBC reads: a PostgreSQL row is refused there before anything runs.
@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"serverless"}))
def test_full_then_incremental_load_on_databricks(
    backend, standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, claimed = claim_and_materialize(control_db, instance, "pg.orders", backend)

    assert result.success, event_text(instance, result.run_id)
    run = standin.only_run()
    assert run.result_state == "SUCCESS"
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Succeeded"
    assert row["last_databricks_run"] == standin.run_page_url(run)
    assert row["incremental_value"].startswith("2024-01-02")
    [attempt] = history(db, "pg.orders")
    assert attempt["metadata_id"] == claimed.metadata_id
    assert attempt["status"] == "Succeeded"
    assert (attempt["rows_read"], attempt["rows_written"]) == (25, 25)
    assert attempt["databricks_run_url"] == standin.run_page_url(run)
    assert attempt["dagster_run_id"] == result.run_id
    assert destination_rows(lake_root) == 25
    [mat] = materializations(result)
    assert mat.metadata["rows_written"].value == 25
    assert mat.metadata["databricks_run"].value == standin.run_page_url(run)
    assert "dagster/column_schema" not in mat.metadata  # the table's asset holds its columns
    logs = event_text(instance, result.run_id)
    # Pipes log lines from the script itself reached the Dagster event log.
    assert "load read 25 and wrote 25 rows" in logs
    expected_bootstrap = {
        "existing_cluster": ("parameters", "--dagster-pipes-context"),
        "new_cluster": ("spark_env_vars", "DAGSTER_PIPES_CONTEXT"),
    }[backend]
    submitted = run.submit_body["tasks"][0]
    if expected_bootstrap[0] == "parameters":
        assert expected_bootstrap[1] in submitted["spark_python_task"]["parameters"]
    else:
        assert expected_bootstrap[1] in submitted["new_cluster"]["spark_env_vars"]

    source.execute("INSERT INTO public.orders VALUES (26, 1, '2024-03-01'), (27, 2, '2024-03-02')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    result, _ = claim_and_materialize(control_db, instance, "pg.orders", backend)

    assert result.success, event_text(instance, result.run_id)
    second = history(db, "pg.orders")[-1]
    assert (second["status"], second["rows_written"]) == ("Succeeded", 2)
    assert second["databricks_run_url"] != attempt["databricks_run_url"]  # a new Databricks run
    assert control_row(db, "pg.orders")["incremental_value"].startswith("2024-03-02")
    assert destination_rows(lake_root) == 27


def test_databricks_run_carries_the_dagster_run_id(
    standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, _ = claim_and_materialize(control_db, instance, "pg.orders")

    assert result.success, event_text(instance, result.run_id)
    run_name = standin.workspace_client().jobs.get_run(standin.only_run().run_id).run_name
    assert result.run_id in run_name and "pg.orders" in run_name
    # ...and the other way round: the control row links the Dagster run and the Databricks run.
    row = control_row(db, "pg.orders")
    assert result.run_id in row["last_dagster_run"]
    assert row["last_databricks_run"] == standin.run_page_url(standin.only_run())


def test_missing_source_table_fails_with_the_scripts_own_error(
    standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.missing", "no_such_table")

    result, _ = claim_and_materialize(control_db, instance, "pg.missing")

    assert not result.success
    run = standin.only_run()
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "FAILED")
    assert result.asset_materializations_for_node(LOAD_ASSET) == []
    row = control_row(db, "pg.missing")
    assert row["last_status"] == "Failed"
    assert "no_such_table" in row["last_message"]
    assert "Workload failed" not in row["last_message"]  # not the platform's generic text
    assert row["last_databricks_run"] == standin.run_page_url(run)
    assert row["incremental_value"] is None
    [attempt] = history(db, "pg.missing")
    assert (attempt["status"], attempt["message"]) == ("Failed", row["last_message"])
    assert attempt["ended_at"] is not None
    assert not (lake_root / "lake" / "raw" / "no_such_table").exists()


def test_terminating_the_dagster_run_cancels_the_databricks_run(
    standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    # Hold a lock so the script's read blocks: the load is running when the run is terminated.
    locker = psycopg.connect(source_db)
    locker.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")

    def terminate_when_running():
        standin.wait_for_run("RUNNING", timeout=60)
        # A run worker receives termination as SIGINT in its main thread.
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=terminate_when_running, daemon=True)
    killer.start()
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders")
    finally:
        killer.join(timeout=10)
        locker.rollback()
        locker.close()

    assert not result.success
    assert standin.requests_to("POST", r"/api/2\.[12]/jobs/runs/cancel")
    run = standin.only_run()
    assert run.done.wait(timeout=30)
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "CANCELED")
    assert run.returncode not in (None, 0)  # the script process was killed
    assert result.asset_materializations_for_node(LOAD_ASSET) == []
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    assert row["last_message"].startswith("Cancelled")
    assert row["incremental_value"] is None
    assert history(db, "pg.orders")[-1]["status"] == "Failed"


@pytest.mark.parametrize("status", [429, 503])
def test_transient_api_errors_while_polling_are_tolerated(
    status, standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    standin.inject_fault(status, count=3, retry_after=1)

    result, _ = claim_and_materialize(control_db, instance, "pg.orders")

    assert result.success, event_text(instance, result.run_id)
    assert standin.faults_pending() == 0
    polls = [r.status for r in standin.requests_to("GET", r"/api/2\.[12]/jobs/runs/get")]
    assert polls.count(status) == 3
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    assert destination_rows(lake_root) == 25


@pytest.mark.parametrize("backend", ["existing_cluster", "serverless"])
def test_retry_analysis_runs_through_the_same_databricks_path(
    backend, standin, control_db, source_db, source, lake_root, db, instance, no_ai_model
):
    # no_ai_model: the rules decide, no model is reachable here.
    from dagsters.assets.dataloader_pipes_asset import build_retry_asset
    from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
    from dagsters.settings import Settings

    add_control_row(db, source_db, "pg.missing", "no_such_table")
    failed, _ = claim_and_materialize(control_db, instance, "pg.missing")
    assert not failed.success

    resources = {"lakebase": lakebase_for(control_db)}
    [request] = evaluate(build_failed_monitor(Settings()), instance, resources).run_requests
    result = dg.materialize(
        [build_retry_asset(load_settings())],
        instance=instance,
        partition_key="pg.missing",
        run_config=request.run_config,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": databricks_backend(backend),
        },
    )

    assert result.success
    load_run, retry_run = sorted(standin.runs.values(), key=lambda r: r.run_id)
    assert load_run.result_state == "FAILED"
    assert retry_run.result_state == "SUCCESS"
    assert retry_run.task["spark_python_task"]["python_file"].endswith("dataloader_retry_pipe.py")
    if backend == "serverless":  # the Pipes context as a parameter, the files in the volume
        assert "--dagster-pipes-context" in retry_run.task["spark_python_task"]["parameters"]
        [environment] = retry_run.submit_body["environments"]
        assert environment["spec"] == {
            "environment_version": SERVERLESS_ENVIRONMENT_VERSION,
            "dependencies": [pinned("dagster-pipes"), pinned("openai")],
        }
    [mat] = result.asset_materializations_for_node("dataloader__retry_analysis")
    decision = mat.metadata["decision"].value
    assert decision in ("Retry Recommended", "Requires Review")
    assert mat.metadata["decider"].value == "rules"
    attempt = history(db, "pg.missing")[-1]
    assert attempt["retry_decision"] == decision
    assert control_row(db, "pg.missing")["last_message"].startswith(f"[AI Analysis - {decision}]")
