"""The Databricks stand-in serves the real databricks-sdk and dagster-databricks Pipes clients."""

import base64
import io
import os
import signal
import threading
from pathlib import Path

import pytest
from dagster import (
    AssetExecutionContext,
    DagsterInstance,
    asset,
    materialize,
)
from dagster_databricks import PipesDatabricksClient
from dagster_databricks.pipes import (
    PipesDatabricksServerlessClient,
    PipesDbfsMessageReader,
    PipesUnityCatalogVolumesMessageReader,
)
from databricks.sdk.errors import NotFound, PermissionDenied, ResourceAlreadyExists
from databricks.sdk.service import compute, jobs
from databricks_standin import DatabricksStandin, databricks_standin, event_text  # noqa: F401

SCRIPT = Path(__file__).parents[1] / "standin_pipes_script.py"
WORKSPACE_SCRIPT = "/Workspace/Shared/dataloader-tests/standin_pipes_script.py"
CLUSTER = "0101-000000-standin"
VOLUME = "/Volumes/main/dataloader/pipes"


@pytest.fixture
def standin(databricks_standin: DatabricksStandin) -> DatabricksStandin:  # noqa: F811
    databricks_standin.deploy(SCRIPT, WORKSPACE_SCRIPT)
    return databricks_standin


def _python_task(**compute_spec) -> jobs.SubmitTask:
    return jobs.SubmitTask(
        task_key="standin_pipes",
        spark_python_task=jobs.SparkPythonTask(
            python_file=WORKSPACE_SCRIPT, parameters=["--table", "orders"]
        ),
        libraries=[compute.Library(pypi=compute.PythonPyPiLibrary(package="dagster-pipes"))],
        **compute_spec,
    )


def _new_cluster(**extra) -> compute.ClusterSpec:
    return compute.ClusterSpec(
        spark_version="15.4.x-scala2.12", node_type_id="i3.xlarge", num_workers=0, **extra
    )


def _dbfs_client(standin: DatabricksStandin, **kw) -> PipesDatabricksClient:
    client = standin.workspace_client()
    return PipesDatabricksClient(
        client,
        poll_interval_seconds=0.2,
        message_reader=PipesDbfsMessageReader(client=client, interval=0.2),
        **kw,
    )


def _materialize(pipes_client, task, extras, submit_args=None, instance=None):
    @asset
    def standin_asset(context: AssetExecutionContext):
        invocation = pipes_client.run(
            context=context, task=task, extras=extras, submit_args=submit_args
        )
        return invocation.get_materialize_result()

    instance = instance or DagsterInstance.ephemeral()
    result = materialize([standin_asset], instance=instance, raise_on_error=False)
    return result, instance


def _materialization_metadata(result) -> dict:
    [mat] = result.asset_materializations_for_node("standin_asset")
    return {k: v.value for k, v in mat.metadata.items()}


def _log_text(instance: DagsterInstance, result) -> str:
    """Log messages plus the error text of engine events (how Pipes reports a closed-with-
    exception external process)."""
    return event_text(instance, result.run_id)


def _leftovers(root: Path) -> list[str]:
    tmp = root / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def test_existing_cluster_passes_bootstrap_as_cli_parameters(standin: DatabricksStandin):
    # Default message reader, so PipesDatabricksClient asks clusters/get about log delivery.
    client = PipesDatabricksClient(standin.workspace_client(), poll_interval_seconds=0.2)
    result, instance = _materialize(
        client, _python_task(existing_cluster_id=CLUSTER), {"mode": "ok", "rows": 7}
    )
    assert result.success, _log_text(instance, result)
    meta = _materialization_metadata(result)
    assert meta["rows_written"] == 7
    assert meta["bootstrap"] == "cli" and meta["io"] == "dbfs"
    assert meta["task_parameters"] == "--table orders"  # task parameters kept, Pipes appended
    assert meta["Databricks Job Run URL"] == standin.run_page_url(standin.only_run())
    logs = _log_text(instance, result)
    assert "standin script started: bootstrap=cli io=dbfs" in logs
    assert "state transition to RunLifeCycleState.TERMINATED" in logs
    assert standin.requests_to("GET", r"/api/2\.1/clusters/get")
    assert standin.only_run().result_state == "SUCCESS"
    assert _leftovers(standin.dbfs_root) == []  # context and message dirs deleted afterwards


def test_new_cluster_passes_bootstrap_as_spark_env_vars(standin: DatabricksStandin):
    spec = _new_cluster(
        spark_env_vars={"STANDIN_MARKER": "from-cluster-spec"},
        cluster_log_conf=compute.ClusterLogConf(
            dbfs=compute.DbfsStorageInfo(destination="dbfs:/cluster-logs")
        ),
    )
    result, instance = _materialize(
        _dbfs_client(standin), _python_task(new_cluster=spec), {"mode": "ok", "rows": 3}
    )
    assert result.success, _log_text(instance, result)
    meta = _materialization_metadata(result)
    assert meta["bootstrap"] == "env" and meta["io"] == "dbfs"
    assert meta["marker"] == "from-cluster-spec"
    [submit] = standin.requests_to("POST", r"/api/2\.2/jobs/runs/submit")
    env = submit.body["tasks"][0]["new_cluster"]["spark_env_vars"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    run = standin.only_run()
    # Log delivery like Databricks: <destination>/<cluster id>/driver/stdout
    delivered = standin.local_path(f"dbfs:/cluster-logs/{run.cluster_id}/driver/stdout")
    assert "standin script stdout line" in delivered.read_text()


def test_serverless_uses_unity_catalog_volume(standin: DatabricksStandin):
    client = standin.workspace_client()
    pipes_client = PipesDatabricksServerlessClient(
        client,
        volume_path=VOLUME,
        poll_interval_seconds=0.2,
        message_reader=PipesUnityCatalogVolumesMessageReader(
            client=client, volume_path=VOLUME, interval=0.2
        ),
    )
    environments = [
        jobs.JobEnvironment(
            environment_key="default",
            spec=compute.Environment(client="1", dependencies=["dagster-pipes"]),
        )
    ]
    task = jobs.SubmitTask(
        task_key="standin_pipes",
        environment_key="default",
        spark_python_task=jobs.SparkPythonTask(python_file=WORKSPACE_SCRIPT),
    )
    result, instance = _materialize(
        pipes_client, task, {"mode": "ok", "rows": 5}, {"environments": environments}
    )
    assert result.success, _log_text(instance, result)
    meta = _materialization_metadata(result)
    assert meta["bootstrap"] == "cli" and meta["io"] == "volume"
    assert "standin script started: bootstrap=cli io=volume" in _log_text(instance, result)
    assert standin.requests_to("PUT", r"/api/2\.0/fs/files/Volumes/main/dataloader/pipes/.*")
    assert list((standin.volumes_root / "main/dataloader/pipes/tmp").iterdir()) == []


def test_failing_script_fails_the_dagster_run_and_keeps_its_error(standin: DatabricksStandin):
    result, instance = _materialize(
        _dbfs_client(standin),
        _python_task(existing_cluster_id=CLUSTER),
        {"mode": "fail", "reason": "no such table public.missing"},
    )
    assert not result.success
    run = standin.only_run()
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "FAILED")
    failure = "\n".join(
        str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure
    )
    assert "Error running Databricks job" in failure
    # The script's own text travels over Pipes (closed message) and through runs/get-output.
    assert "no such table public.missing" in _log_text(instance, result)
    client = standin.workspace_client()
    task_run_id = client.jobs.get_run(run.run_id).tasks[0].run_id
    output = client.jobs.get_run_output(task_run_id)
    # As the service gives it: the exception that ended the task, and its traceback.
    assert output.error == (
        "RuntimeError: standin script failed on purpose: no such table public.missing"
    )
    assert output.error_trace.startswith("Traceback (most recent call last):")
    assert "raise RuntimeError(message)" in output.error_trace


def test_missing_python_file_is_an_internal_error(standin: DatabricksStandin):
    task = _python_task(existing_cluster_id=CLUSTER)
    task.spark_python_task.python_file = "/Workspace/Shared/nowhere.py"
    result, _ = _materialize(_dbfs_client(standin), task, {"mode": "ok", "rows": 1})
    assert not result.success
    run = standin.only_run()
    assert run.life_cycle_state == "INTERNAL_ERROR"
    assert "Cannot read the python file /Workspace/Shared/nowhere.py" in run.state_message


def test_termination_cancels_the_databricks_run(standin: DatabricksStandin):
    def interrupt_when_running():
        standin.wait_for_run("RUNNING", timeout=60)
        # SIGINT is how Dagster delivers termination to a run worker's main thread.
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt_when_running, daemon=True)
    killer.start()
    result, instance = _materialize(
        _dbfs_client(standin),
        _python_task(existing_cluster_id=CLUSTER),
        {"mode": "sleep", "seconds": 120, "rows": 1},
    )
    killer.join(timeout=5)
    assert standin.requests_to("POST", r"/api/2\.2/jobs/runs/cancel")
    run = standin.only_run()
    run.done.wait(timeout=30)
    assert (run.life_cycle_state, run.result_state) == ("TERMINATED", "CANCELED")
    assert run.returncode not in (None, 0)  # the script was killed, not left running
    assert "canceling Databricks job" in _log_text(instance, result)


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_while_polling_do_not_fail(standin: DatabricksStandin, status: int):
    standin.inject_fault(status, count=2, retry_after=1)
    result, instance = _materialize(
        _dbfs_client(standin),
        _python_task(existing_cluster_id=CLUSTER),
        {"mode": "ok", "rows": 2},
    )
    assert result.success, _log_text(instance, result)
    assert standin.faults_pending() == 0
    statuses = [r.status for r in standin.requests_to("GET", r"/api/2\.2/jobs/runs/get")]
    assert statuses.count(status) == 2 and statuses[-1] == 200


def test_dagster_run_id_reaches_databricks_only_through_the_run_name(standin: DatabricksStandin):
    captured = {}

    @asset
    def standin_asset(context: AssetExecutionContext):
        captured["run_id"] = context.run.run_id
        invocation = _dbfs_client(standin).run(
            context=context,
            task=_python_task(existing_cluster_id=CLUSTER),
            extras={"mode": "ok", "rows": 1},
            submit_args={"run_name": f"dataloader orders dagster:{context.run.run_id}"},
        )
        return invocation.get_materialize_result()

    assert materialize([standin_asset], instance=DagsterInstance.ephemeral()).success
    [submit] = standin.requests_to("POST", r"/api/2\.2/jobs/runs/submit")
    # dagster-databricks sets task["tags"] to the Dagster run info, but SubmitTask.from_dict
    # drops that field before the request is sent: only run_name carries the link.
    assert "tags" not in submit.body["tasks"][0]
    got = standin.workspace_client().jobs.get_run(standin.only_run().run_id)
    assert got.run_name == f"dataloader orders dagster:{captured['run_id']}"


def test_wrong_or_missing_token_is_refused(standin: DatabricksStandin):
    with pytest.raises(PermissionDenied, match="Invalid access token"):
        standin.workspace_client(token="dapi-wrong").dbfs.get_status("/")
    import requests

    response = requests.get(f"{standin.host}/api/2.0/dbfs/get-status?path=/", timeout=10)
    assert response.status_code == 401


def test_dbfs_behaves_like_the_real_api(standin: DatabricksStandin):
    dbfs = standin.workspace_client().dbfs
    with pytest.raises(NotFound) as info:
        dbfs.get_status("/tmp/nothing")
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    dbfs.mkdirs("/tmp/a/b")
    payload = bytes(range(256)) * 4
    dbfs.put("/tmp/a/b/f.bin", contents=base64.b64encode(payload).decode(), overwrite=True)
    with pytest.raises(ResourceAlreadyExists):
        dbfs.put("/tmp/a/b/f.bin", contents=base64.b64encode(b"x").decode(), overwrite=False)
    part = dbfs.read("/tmp/a/b/f.bin", offset=10, length=20)
    assert base64.b64decode(part.data) == payload[10:30] and part.bytes_read == 20
    status = dbfs.get_status("dbfs:/tmp/a/b/f.bin")
    assert (status.is_dir, status.file_size) == (False, len(payload))
    assert [f.path for f in dbfs.list("/tmp/a")] == ["/tmp/a/b"]
    with dbfs.open("/tmp/a/big.bin", write=True, overwrite=True) as f:  # create/add-block/close
        f.write(b"y" * (1024 * 1024 + 5))
    assert dbfs.get_status("/tmp/a/big.bin").file_size == 1024 * 1024 + 5
    from databricks.sdk.errors import DatabricksError
    from databricks.sdk.service import files

    # The raw API (the SDK's DbfsExt refuses this one client-side before sending it).
    with pytest.raises(DatabricksError, match="not empty") as info:
        files.DbfsAPI(standin.workspace_client().api_client).delete("/tmp/a", recursive=False)
    assert info.value.error_code == "IO_ERROR"
    dbfs.delete("/tmp/a", recursive=True)
    assert not standin.local_path("/tmp/a").exists()


def test_unity_catalog_files_api(standin: DatabricksStandin):
    from databricks.sdk.service import files

    fs = files.FilesAPI(standin.workspace_client().api_client)
    fs.create_directory(f"{VOLUME}/x/y")
    fs.upload(f"{VOLUME}/x/y/data.json", io.BytesIO(b'{"a": 1}'), overwrite=True)
    assert fs.download(f"{VOLUME}/x/y/data.json").contents.read() == b'{"a": 1}'
    assert fs.get_metadata(f"{VOLUME}/x/y/data.json").content_length == 8
    assert [e.name for e in fs.list_directory_contents(f"{VOLUME}/x")] == ["y"]
    with pytest.raises(NotFound):
        fs.download(f"{VOLUME}/x/y/missing.json")
    with pytest.raises(NotFound):
        fs.create_directory("/Volumes/main/dataloader/no_such_volume/tmp")
    fs.delete(f"{VOLUME}/x/y/data.json")
    fs.delete_directory(f"{VOLUME}/x/y")
    assert list(fs.list_directory_contents(f"{VOLUME}/x")) == []


def test_routes_can_be_added_by_other_tests(standin: DatabricksStandin):
    def statement(request):
        return {"statement_id": "s-1", "echo": request.json()["statement"]}

    standin.add_route("POST", r"/api/2\.0/sql/statements/?", statement)
    got = standin.workspace_client().api_client.do(
        "POST", "/api/2.0/sql/statements", body={"statement": "SELECT 1"}
    )
    assert got == {"statement_id": "s-1", "echo": "SELECT 1"}
