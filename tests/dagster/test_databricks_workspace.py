"""DATABRICKS_WORKSPACE_URL names the workspace for every Databricks client; DAGSTER_ENVIRONMENT tags."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import dagster as dg
import pytest
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
from helpers import add_control_row, claim_due, control_row, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings, workspace_host
from dagsters.utils.lakebase_client import LakebaseClient

DAGSTERS = Path(__file__).resolve().parents[2] / "dagsters"


def test_databricks_host_wins_and_the_workspace_url_is_normalised():
    assert workspace_host({}) is None
    assert workspace_host({"DATABRICKS_HOST": "https://a", "DATABRICKS_WORKSPACE_URL": "b"}) is None
    assert workspace_host({"DATABRICKS_WORKSPACE_URL": " https://adb-1.2.net/ "}) == (
        "https://adb-1.2.net"
    )
    assert workspace_host({"DATABRICKS_WORKSPACE_URL": "adb-1.2.net"}) == "https://adb-1.2.net"
    assert workspace_host({"DATABRICKS_HOST": " ", "DATABRICKS_WORKSPACE_URL": "x.net"}) == (
        "https://x.net"
    )


def test_the_code_location_builds_workspace_clients_in_one_place():
    """No module under dagsters/ calls WorkspaceClient(...) except the databricks_workspace
    resource."""
    callers = []
    for path in DAGSTERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "WorkspaceClient"
            ):
                callers.append(path.relative_to(DAGSTERS).as_posix())
    assert callers == ["resources/databricks_workspace.py"]


@pytest.fixture
def url_only(databricks_standin: DatabricksStandin, lake_root, monkeypatch, tmp_path):  # noqa: F811
    """Point the SDK at the stand-in through DATABRICKS_WORKSPACE_URL alone."""
    databricks_standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
    databricks_standin.runtime_env.update(arrow_runtime(lake_root))  # no Spark in the stand-in
    for name in ("DATABRICKS_HOST", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("DATABRICKS_WORKSPACE_URL", databricks_standin.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_standin.token)
    return databricks_standin


def test_sql_resource_and_helper_reach_the_workspace_url(url_only):
    settings = load_settings(os.environ)  # as the code location's edge reads it
    assert settings.databricks.workspace_host == url_only.host
    workspace = DatabricksWorkspaceResource.from_settings(settings)
    assert workspace.get_client().config.host == url_only.host
    client = DatabricksRestResource.from_settings(settings).get_workspace_client()
    assert client.config.host == url_only.host
    assert client.current_user.me() is not None
    assert url_only.requests_to("GET", r".*/preview/scim/v2/Me")


def test_load_on_databricks_with_only_the_workspace_url_tagged_with_the_environment(
    url_only,
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
    monkeypatch,
):
    # Configured the way a deployment is: the resource from settings read from the environment.
    for name, value in {
        "DATALOADER_EXECUTION": "databricks",
        "DATABRICKS_CLUSTER_ID": CLUSTER,
        "DATALOADER_DATABRICKS_VOLUME_PATH": VOLUME,
        "DATALOADER_SCRIPTS_PATH": WORKSPACE_SCRIPTS,
        "DATALOADER_DATABRICKS_POLL_SECONDS": "0.2",
        "DAGSTER_ENVIRONMENT": "npd",
    }.items():
        monkeypatch.setenv(name, value)
    add_control_row(db, source_db, "pg.orders", "orders")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])

    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key="pg.orders",
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(load_settings(os.environ)),
        },
        instance=instance,
        raise_on_error=False,
    )

    assert result.success, event_text(instance, result.run_id)
    run = url_only.only_run()
    assert run.result_state == "SUCCESS"
    assert control_row(db, "pg.orders")["last_databricks_run"] == url_only.run_page_url(run)
    # Both directions: the Databricks run names the environment and links the Dagster run...
    assert run.run_name.startswith("dataloader [npd] pg.orders (dagster run http")
    assert run.run_name.endswith(f"/runs/{result.run_id})")
    # ...and the Dagster run (launched without sensor tags here) carries the environment.
    assert instance.get_run_by_id(result.run_id).tags["dataloader/environment"] == "npd"
