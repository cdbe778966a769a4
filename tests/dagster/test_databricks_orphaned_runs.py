"""A Databricks run never outlives the load that started it (issue 12, item 3).

Once the run id is known, any exception while polling it (HTTP 500, an expired token, the SDK's
retry budget) cancels the run, or uses its final state when it already has one, and the control
row says what happened; an interrupt during the "submitted" bookkeeping still cancels the run and
ends as ``Cancelled - ...``; every ``runs/submit`` carries an idempotency token, which the
stand-in honours as the service does. Real databricks-sdk / dagster-databricks clients against
``tests/databricks_standin.py``, the real load script, the embedded control database.
"""

import threading

import dagster as dg
import psycopg
import pytest
from databricks_fixtures import claim_and_materialize, databricks_backend, standin  # noqa: F401
from databricks_standin import DatabricksStandin, databricks_standin, event_text  # noqa: F401
from helpers import add_control_row, control_row, history

from dagsters.runners.databricks import idempotency_token

RUNS_GET = r"/api/2\.[12]/jobs/runs/get"
RUNS_CANCEL = r"/api/2\.[12]/jobs/runs/cancel"


def _blocked_source(source_db: str) -> psycopg.Connection:
    """Hold a lock so the script's read blocks: the run is RUNNING until it is cancelled."""
    locker = psycopg.connect(source_db)
    locker.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
    return locker


def _fault_when_running(stand_in: DatabricksStandin, **fault) -> threading.Thread:
    def inject():
        stand_in.wait_for_run("RUNNING", timeout=60)
        for spec in fault.pop("extra", []):
            stand_in.inject_fault(**spec)
        stand_in.inject_fault(**fault)

    thread = threading.Thread(target=inject, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "status", [500, 403], ids=["http-500-while-polling", "auth-expired-while-polling"]
)
def test_a_poll_failure_cancels_the_run_and_fails_the_row_saying_so(
    status,
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    locker = _blocked_source(source_db)
    injector = _fault_when_running(standin, status=status, count=1, retry_after=None)
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders")
    finally:
        injector.join(timeout=10)
        locker.rollback()
        locker.close()

    assert not result.success
    assert standin.faults_pending() == 0
    assert [r.status for r in standin.requests_to("GET", RUNS_GET)].count(status) == 1
    assert standin.requests_to("POST", RUNS_CANCEL)
    run = standin.only_run()
    assert run.done.wait(timeout=30)
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "CANCELED")
    assert run.returncode not in (None, 0)  # the script was stopped: it cannot commit later
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    message = row["last_message"]
    assert f"Lost track of Databricks run {run.run_id}" in message
    assert "the run was cancelled" in message
    assert standin.run_page_url(run) in message
    assert row["incremental_value"] is None
    assert history(db, "pg.orders")[-1]["status"] == "Failed"
    assert not (lake_root / "lake" / "raw" / "orders").exists()


def test_a_poll_failure_while_the_run_is_blocked_cancels_it(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    """BLOCKED is a run still going, not a finished one: losing track of it cancels it."""
    standin.hold_in = "BLOCKED"

    def fail_a_poll_once_blocked():
        standin.wait_for_run("BLOCKED", timeout=60)
        standin.inject_fault(status=500, count=1, retry_after=None)

    injector = threading.Thread(target=fail_a_poll_once_blocked, daemon=True)
    injector.start()
    add_control_row(db, source_db, "pg.orders", "orders")
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders")
    finally:
        injector.join(timeout=10)
        standin.release.set()

    assert not result.success
    assert standin.requests_to("POST", RUNS_CANCEL)
    run = standin.only_run()
    assert run.done.wait(timeout=30)
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "CANCELED")
    assert run.pid is None  # cancelled while blocked: the script never started
    message = control_row(db, "pg.orders")["last_message"]
    assert f"Lost track of Databricks run {run.run_id}" in message
    assert "the run was cancelled (TERMINATED)" in message


def test_a_run_that_cannot_be_cancelled_is_named_as_possibly_still_running(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    locker = _blocked_source(source_db)
    # runs/get fails once, then runs/cancel fails for good (the workspace is unreachable).
    cancel_down = {"status": 500, "count": 100, "method": "POST", "path": RUNS_CANCEL}
    injector = _fault_when_running(
        standin, status=500, count=1, retry_after=None, extra=[cancel_down]
    )
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders")
        run = standin.only_run()
        assert run.life_cycle_state == "RUNNING"  # nobody stopped it: the message must say so
    finally:
        injector.join(timeout=10)
        for fault in standin._faults:  # stop the cancel fault, then clean up the run ourselves
            fault.remaining = 0
        if standin.runs:
            standin.only_run().cancel_requested.set()
        locker.rollback()
        locker.close()

    assert not result.success
    message = control_row(db, "pg.orders")["last_message"]
    assert f"Lost track of Databricks run {run.run_id}" in message
    assert "could not confirm its cancellation" in message
    assert "may still be running" in message
    assert standin.run_page_url(run) in message


def test_an_interrupt_while_recording_the_submitted_run_still_cancels_it(standin):  # noqa: F811
    resource = databricks_backend("existing_cluster")

    def link_then_get_terminated(url, run_id):
        raise dg.DagsterExecutionInterruptedError("terminated while linking the run")

    @dg.asset
    def load(context: dg.AssetExecutionContext):
        resource.run_script(
            context,
            script="dataloader_pipe.py",
            params={},
            label="interrupted",
            on_external_run=link_then_get_terminated,
        )

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([load], instance=instance, raise_on_error=False)

    assert not result.success
    assert standin.requests_to("POST", RUNS_CANCEL), event_text(instance, result.run_id)
    run = standin.only_run()
    assert run.done.wait(timeout=30)
    assert run.result_state == "CANCELED"


def test_every_submit_carries_a_fresh_idempotency_token(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    first, _ = claim_and_materialize(control_db, instance, "pg.orders")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    second, _ = claim_and_materialize(control_db, instance, "pg.orders")

    assert first.success and second.success
    tokens = [run.submit_body.get("idempotency_token") for run in standin.runs.values()]
    assert len(tokens) == 2 and len(set(tokens)) == 2
    assert all(token and len(token) <= 64 for token in tokens)
    assert tokens[0].startswith(first.run_id)


def test_the_standin_starts_one_run_per_idempotency_token(standin):  # noqa: F811
    from databricks.sdk.service import jobs

    client = standin.workspace_client()
    task = jobs.SubmitTask(
        task_key="t",
        existing_cluster_id="0101-000000-standin",
        spark_python_task=jobs.SparkPythonTask(
            python_file="/Workspace/Shared/dataloader/databricks_scripts/dataloader_pipe.py"
        ),
    )
    token = idempotency_token("0" * 36)
    first = client.jobs.submit(tasks=[task], idempotency_token=token).run_id
    again = client.jobs.submit(tasks=[task], idempotency_token=token).run_id
    other = client.jobs.submit(tasks=[task], idempotency_token=idempotency_token("0" * 36)).run_id

    assert first == again != other
    assert len(standin.runs) == 2
