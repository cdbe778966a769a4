"""One injected ``databricks_workspace`` resource: every Databricks call goes through it.

Each test runs two stand-in workspaces: the one the injected resource names, and a decoy that the
SDK's own environment (``DATABRICKS_HOST``) points at. The calls reach the injected one and the
decoy hears nothing: the sensor, the runner and the models repository use the resource they were
given (the batch runner as the one-table one), not a client of their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from databricks.sdk.service.jobs import SubmitTask
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
from helpers import (
    SensorLoop,
    add_control_row,
    add_history,
    claim_due,
    control_row,
    lakebase_for,
    tick,
)
from test_run_batches import batch_settings, master_sensor

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.assets.load_batch import build_load_batch_job
from dagsters.definitions import build_resources
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_longqueued_monitor import build_longqueued_monitor
from dagsters.settings import Settings, load_settings
from dagsters.utils.lakebase_client import LakebaseClient


@pytest.fixture
def decoy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabricksStandin]:
    """A second workspace, the one databricks-sdk would pick by itself (DATABRICKS_HOST)."""
    with DatabricksStandin(tmp_path / "decoy") as standin:
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
        for name, value in standin.env().items():  # the token is the same for both stand-ins
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("DATABRICKS_WORKSPACE_URL", raising=False)
        yield standin


@pytest.fixture
def injected(databricks_standin: DatabricksStandin) -> DatabricksWorkspaceResource:  # noqa: F811
    """The resource the code location would inject, naming the other stand-in."""
    return DatabricksWorkspaceResource(host=databricks_standin.host)


def test_the_code_location_injects_one_workspace_into_every_databricks_resource():
    settings = load_settings(
        {"DATALOADER_EXECUTION": "databricks", "DATABRICKS_WORKSPACE_URL": "adb-1.2.net"}
    )
    resources = build_resources(settings)
    workspace = resources["databricks_workspace"]
    assert isinstance(workspace, DatabricksWorkspaceResource)
    assert workspace.host == "https://adb-1.2.net"
    for key in ("lakebase", "pipes_databricks", "databricks_rest", "models_repo"):
        assert resources[key].workspace is workspace, key
    assert resources["pipes_databricks"].databricks_runner().workspace is workspace


def test_a_workspace_builds_its_client_once(decoy: DatabricksStandin):
    workspace = DatabricksWorkspaceResource(host=decoy.host)
    client = workspace.get_client()
    assert workspace.get_client() is client
    assert client.config.host == decoy.host


def test_longqueued_monitor_cancels_through_the_injected_workspace(
    control_db,
    db,
    source_db,
    instance,
    databricks_standin: DatabricksStandin,  # noqa: F811
    decoy: DatabricksStandin,
    injected: DatabricksWorkspaceResource,
    tmp_path: Path,
):
    script = tmp_path / "wait_for_cancel.py"
    script.write_text("import time\nwhile True:\n    time.sleep(0.05)\n")
    databricks_standin.deploy(script, "/Workspace/Shared/wait_for_cancel.py")
    workspace = databricks_standin.workspace_client()  # the test's own client
    task = {
        "task_key": "t",
        "existing_cluster_id": CLUSTER,
        "spark_python_task": {"python_file": "/Workspace/Shared/wait_for_cancel.py"},
    }
    submitted = workspace.jobs.submit(run_name="held", tasks=[SubmitTask.from_dict(task)])
    run_id = submitted.response.run_id
    config_id = add_control_row(db, source_db, "held", "orders")
    metadata_id = add_history(db, config_id, "held", "Queued")
    db.execute(
        "UPDATE table_control SET last_status = 'Queued', last_metadata_id = %s,"
        " last_status_date_time = now() - interval '61 minutes', last_databricks_run = %s"
        " WHERE config_id = %s",
        (metadata_id, workspace.jobs.get_run(run_id).run_page_url, config_id),
    )

    tick(build_longqueued_monitor(Settings()), instance, control_db, workspace=injected)

    assert control_row(db, "held")["last_status"] == "Failed"
    assert databricks_standin.requests_to("POST", r".*/jobs/runs/cancel")
    assert decoy.requests == []
    deadline = time.monotonic() + 60
    while workspace.jobs.get_run(run_id).state.result_state is None:
        assert time.monotonic() < deadline, "the Databricks run was not cancelled"
        time.sleep(0.1)
    assert workspace.jobs.get_run(run_id).state.result_state.value == "CANCELED"


def _pipes(standin: DatabricksStandin, lake_root: Path, workspace: DatabricksWorkspaceResource):
    """The Databricks backend on the stand-in's cluster, talking through ``workspace`` only."""
    standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
    standin.runtime_env.update(arrow_runtime(lake_root))  # no Spark in the stand-in
    return PipesDatabricksResource(
        execution="databricks",
        cluster_id=CLUSTER,
        volume_path=VOLUME,
        scripts_path=WORKSPACE_SCRIPTS,
        poll_interval_seconds=0.2,
        workspace=workspace,
    )


def test_the_runner_submits_through_the_injected_workspace(
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
    databricks_standin: DatabricksStandin,  # noqa: F811
    decoy: DatabricksStandin,
    injected: DatabricksWorkspaceResource,
):
    pipes = _pipes(databricks_standin, lake_root, injected)
    add_control_row(db, source_db, "pg.orders", "orders")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])

    result = dg.materialize(
        [build_load_asset(load_settings(os.environ))],
        partition_key="pg.orders",
        run_config=load_run_config(claimed),
        resources={"lakebase": lakebase_for(control_db), "pipes_databricks": pipes},
        instance=instance,
        raise_on_error=False,
    )

    assert result.success, event_text(instance, result.run_id)
    run = databricks_standin.only_run()
    assert run.result_state == "SUCCESS"
    assert control_row(db, "pg.orders")["last_databricks_run"] == databricks_standin.run_page_url(
        run
    )
    assert decoy.requests == []


def test_a_batch_runs_through_the_injected_workspace(
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
    databricks_standin: DatabricksStandin,  # noqa: F811
    decoy: DatabricksStandin,
    injected: DatabricksWorkspaceResource,
):
    pipes = _pipes(databricks_standin, lake_root, injected)
    for key in ("b.one", "b.two"):
        add_control_row(db, source_db, key, "orders", destination_table_name=key.replace(".", "_"))
    settings = batch_settings(lake_root, size=2)
    [request] = SensorLoop(master_sensor(settings), instance, control_db).tick().run_requests

    result = build_load_batch_job(settings).execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources={"lakebase": lakebase_for(control_db), "pipes_databricks": pipes},
        raise_on_error=False,
    )

    assert result.success, event_text(instance, result.run_id)
    run = databricks_standin.only_job_run()
    assert [t.result_state for t in run.task_runs] == ["SUCCESS", "SUCCESS"]
    assert decoy.requests == []


def test_the_models_repo_reads_its_push_token_through_the_injected_workspace(
    databricks_standin: DatabricksStandin,  # noqa: F811
    decoy: DatabricksStandin,
    injected: DatabricksWorkspaceResource,
    tmp_path: Path,
):
    databricks_standin.add_secret("git", "models-token", "ghp-from-the-injected-workspace")
    repo = ModelsRepoResource(
        path=str(tmp_path / "models"),
        lock_dir=str(tmp_path / "locks"),
        lake_root=str(tmp_path / "lake"),
        token_secret="git/models-token",
        workspace=injected,
    )

    assert repo.push_token() == "ghp-from-the-injected-workspace"
    assert databricks_standin.requests_to("GET", r".*/secrets/get")
    assert decoy.requests == []
