"""The runner's resources take every value from Settings and never hold a secret."""

from __future__ import annotations

import json

from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.runners.databricks import pinned as orchestrator_pin
from dagsters.settings import load_settings

DEPLOYMENT_ENV = {
    "DATALOADER_EXECUTION": "databricks",
    "DAGSTER_ENVIRONMENT": "prod",
    "DATALOADER_HOME": "/srv/dataloader",
    "DATALOADER_LAKE_ROOT": "/mnt/lake",
    "DATALOADER_SCRIPTS_PATH": "/Workspace/Shared/dataloader/databricks_scripts",
    "DATALOADER_LOAD_TIMEOUT_SECONDS": "600",
    "DATABRICKS_WORKSPACE_URL": "adb-1.2.azuredatabricks.net",
    "DATABRICKS_WAREHOUSE_ID": "wh-1",
    "DATABRICKS_CLUSTER_ID": "0101-000000-abc",
    "DATALOADER_DATABRICKS_POLL_SECONDS": "2.5",
    "DATALOADER_DATABRICKS_LIBRARIES": "dagster-pipes==1.9.0",
    "DATALOADER_DAGSTER_BASE_URL": "https://acme.dagster.cloud/prod",
    # Secrets the process holds: none may reach a resource's (UI-visible) configuration.
    "DATABRICKS_TOKEN": "dapi-secret-token-0001",
    "LAKEBASE_PASSWORD": "lakebase-secret-0002",
    "OPENAI_API_KEY": "sk-secret-0003",
    "DATALOADER_SECRET__SOURCE": "source-secret-0004",
}
SECRETS = [v for k, v in DEPLOYMENT_ENV.items() if "secret" in v]


def test_pipes_resource_from_settings():
    resource = PipesDatabricksResource.from_settings(load_settings(DEPLOYMENT_ENV))

    assert resource.execution == "databricks"
    assert resource.environment == "prod"
    assert (resource.home, resource.lake_root) == ("/srv/dataloader", "/mnt/lake")
    assert resource.timeout_seconds == 600
    assert resource.workspace.host == "https://adb-1.2.azuredatabricks.net"
    assert resource.libraries_for("dataloader_retry_pipe.py") == ["dagster-pipes==1.9.0"]
    runner = resource.databricks_runner()
    assert runner.poll_interval_seconds == 2.5
    assert runner.workspace is resource.workspace  # the runner uses the injected workspace
    assert runner.task("dataloader_pipe.py") == {
        "task_key": "dataloader_task",
        "spark_python_task": {
            "python_file": "/Workspace/Shared/dataloader/databricks_scripts/dataloader_pipe.py",
            "parameters": [],
        },
        "timeout_seconds": 600,
        "libraries": [{"pypi": {"package": "dagster-pipes==1.9.0"}}],
        "existing_cluster_id": "0101-000000-abc",
    }


def test_local_runner_environment_comes_from_settings():
    settings = load_settings({"DATALOADER_HOME": "/srv/dataloader"})
    runner = PipesDatabricksResource.from_settings(settings).local_runner()

    assert runner.child_overrides() == {
        "DATALOADER_HOME": "/srv/dataloader",
        "DATALOADER_LAKE_ROOT": "/srv/dataloader/lake",
        "PYTHONUNBUFFERED": "1",
    }
    assert runner.timeout_seconds == 10_800  # spec: 3 hours per load


def test_rest_resource_from_settings():
    resource = DatabricksRestResource.from_settings(load_settings(DEPLOYMENT_ENV))

    assert resource.warehouse_id == "wh-1"
    assert resource.workspace.host == "https://adb-1.2.azuredatabricks.net"


def test_no_secret_reaches_the_resources_configuration():
    settings = load_settings(DEPLOYMENT_ENV)
    for resource in (
        PipesDatabricksResource.from_settings(settings),
        DatabricksRestResource.from_settings(settings),
        DatabricksWorkspaceResource.from_settings(settings),
    ):
        config = json.dumps(resource.model_dump(), default=str)
        for secret in SECRETS:
            assert secret not in config, (type(resource).__name__, secret)


def test_databricks_libraries_per_script_and_env_override():
    resource = PipesDatabricksResource.from_settings(
        load_settings({"DATALOADER_EXECUTION": "databricks"})
    )
    pipes, openai = (
        orchestrator_pin("dagster-pipes"),
        orchestrator_pin("openai"),
    )  # the orchestrator's versions
    assert resource.libraries_for("dataloader_pipe.py") == [pipes]
    assert resource.libraries_for("dataloader_retry_pipe.py") == [pipes, openai]
    assert resource.libraries_for("other.py") == [pipes]
    on_cluster = PipesDatabricksResource(execution="databricks", cluster_id="c")
    assert on_cluster.databricks_runner().task("dataloader_retry_pipe.py")["libraries"] == [
        {"pypi": {"package": pipes}},
        {"pypi": {"package": openai}},
    ]
    assert on_cluster.databricks_runner().task("dataloader_pipe.py")["libraries"] == [
        {"pypi": {"package": pipes}}
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
