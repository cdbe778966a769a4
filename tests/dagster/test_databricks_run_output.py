"""runs/get-output reports a failed Python task as the service does, and the row gets the cause.

On Databricks a failed ``spark_python_task``'s ``runs/get-output`` gives ``error`` = the exception
that ended it (``ZeroDivisionError: division by zero``; ``Type: message``) and ``error_trace`` =
its traceback, not the last line the process wrote on stderr. When the script reported no error
over Dagster Pipes (it failed before its session opened), that is where the Databricks runner
finds the cause: the row and history carry the exception line with secret-shaped text masked,
the event log the traceback; a bare ``SystemExit: <code>`` says where the cause is instead.
Real databricks-sdk / dagster-databricks clients against ``tests/databricks_standin.py``.
"""

from pathlib import Path

import dagster as dg
import pytest
from databricks.sdk.service import jobs
from databricks_fixtures import claim_and_materialize, standin  # noqa: F401
from databricks_standin import (  # noqa: F401
    CLUSTER,
    VOLUME,
    DatabricksStandin,
    databricks_standin,
    event_text,
)
from helpers import add_control_row, control_row, history

from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.runners.databricks import _task_error as task_error

# Written to stderr after the exception, as a logging shutdown or atexit hook would: the last
# stderr line, which is not what the service reports.
AFTER_EXIT = "import atexit, sys\natexit.register(lambda: sys.stderr.write('flushing logs\\n'))\n"
PASSWORD = "Hunter2-pw-71c9"
SCRIPTS = "/Workspace/Shared/dataloader-faulty"


def _submit_and_wait(stand_in: DatabricksStandin, tmp_path: Path, source: str) -> jobs.RunOutput:
    script = tmp_path / "task.py"
    script.write_text(source)
    stand_in.deploy(script, "/Workspace/Shared/run-output/task.py")
    client = stand_in.workspace_client()
    run_id = client.jobs.submit(
        run_name="run output",
        tasks=[
            jobs.SubmitTask(
                task_key="task",
                existing_cluster_id=CLUSTER,
                spark_python_task=jobs.SparkPythonTask(
                    python_file="/Workspace/Shared/run-output/task.py"
                ),
            )
        ],
    ).run_id
    run = stand_in.wait_for_state(run_id, "TERMINATED", "INTERNAL_ERROR", timeout=60)
    assert run.result_state == "FAILED"
    return client.jobs.get_run_output(client.jobs.get_run(run_id).tasks[0].run_id)


@pytest.mark.parametrize(
    ("body", "error", "in_trace"),
    [
        ("1 / 0\n", "ZeroDivisionError: division by zero", "1 / 0"),
        ("raise Exception('boom')\n", "Exception: boom", "raise Exception('boom')"),
        ("raise KeyError('orders')\n", "KeyError: 'orders'", "raise KeyError"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3", "sys.exit(3)"),
    ],
    ids=["zero-division", "exception", "key-error", "sys-exit"],
)
def test_get_output_reports_the_exception_not_the_last_stderr_line(
    databricks_standin: DatabricksStandin,  # noqa: F811
    tmp_path: Path,
    body: str,
    error: str,
    in_trace: str,
):
    output = _submit_and_wait(databricks_standin, tmp_path, AFTER_EXIT + body)

    assert output.error == error
    assert output.error_trace.startswith("Traceback (most recent call last):")
    assert in_trace in output.error_trace
    assert "flushing logs" in databricks_standin.only_run().stderr  # the last stderr line...
    assert "flushing logs" not in output.error + output.error_trace  # ...is not the error


def _faulty_backend(stand_in: DatabricksStandin, tmp_path: Path, source: str):
    """The Databricks backend running ``source`` as the load script."""
    scripts = tmp_path / "faulty"
    scripts.mkdir()
    (scripts / "dataloader_pipe.py").write_text(source)
    stand_in.deploy(scripts, SCRIPTS)
    return PipesDatabricksResource(
        execution="databricks",
        scripts_path=SCRIPTS,
        cluster_id=CLUSTER,
        volume_path=VOLUME,
        poll_interval_seconds=0.2,
    )


def test_a_failure_before_pipes_puts_the_exception_on_the_row_masked(
    standin,  # noqa: F811
    tmp_path,
    control_db,
    source_db,
    db,
    instance,
):
    pipes = _faulty_backend(
        standin,
        tmp_path,
        AFTER_EXIT + "raise ConnectionError('could not connect to "
        f"postgresql://loader:{PASSWORD}@db.internal:5432/erp')\n",
    )
    add_control_row(db, source_db, "pg.orders", "orders")

    result, _ = claim_and_materialize(control_db, instance, "pg.orders", pipes=pipes)

    assert not result.success
    run = standin.only_run()
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "FAILED")
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    expected = "ConnectionError: could not connect to postgresql://loader:***@db.internal:5432/erp"
    assert expected in row["last_message"], row["last_message"]
    for wrong in (PASSWORD, "flushing logs", "Workload failed"):
        assert wrong not in row["last_message"]
    assert history(db, "pg.orders")[-1]["message"] == row["last_message"]
    logs = event_text(instance, result.run_id)
    assert "runs/get-output trace" in logs and "raise ConnectionError(" in logs
    assert PASSWORD not in logs


def test_a_bare_exit_status_says_where_the_cause_is(
    databricks_standin: DatabricksStandin,  # noqa: F811
    tmp_path: Path,
):
    """``SystemExit: 1`` names no cause; the runner's text says where it is (the Jobs API read
    through the real SDK client; the whole path is pinned by the test above)."""
    body = "import sys\nsys.stderr.write('could not read the Pipes context\\n')\nsys.exit(1)\n"
    output = _submit_and_wait(databricks_standin, tmp_path, body)
    assert output.error == "SystemExit: 1"
    workspace = databricks_standin.workspace_client()
    run = workspace.jobs.get_run(databricks_standin.only_run().run_id)

    with dg.build_asset_context() as context:
        text = task_error(context, workspace, run)

    assert text == (
        "the script exited with status 1 (SystemExit: 1) without reporting its error over "
        "Dagster Pipes; its driver log (stderr) says why: "
        + databricks_standin.run_page_url(databricks_standin.only_run())
    )
