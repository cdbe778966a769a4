"""The spec's DATABRICKS_WORKSPACE_URL names the workspace for every Databricks client we build."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from databricks_standin import DatabricksStandin, databricks_standin  # noqa: F401
from test_databricks_e2e import (  # noqa: F401 - db, source, instance are fixtures
    REPO_SCRIPTS,
    WORKSPACE_SCRIPTS,
    add_control_row,
    claim_and_materialize,
    control_row,
    db,
    event_text,
    instance,
    source,
)

from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.utils.databricks_workspace import workspace_client, workspace_host

DAGSTERS = Path(__file__).resolve().parents[1] / "dagsters"


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
    """No module under dagsters/ calls WorkspaceClient(...) except the shared helper."""
    callers = []
    for path in DAGSTERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "WorkspaceClient"
            ):
                callers.append(path.relative_to(DAGSTERS).as_posix())
    assert callers == ["utils/databricks_workspace.py"]


@pytest.fixture
def url_only(databricks_standin: DatabricksStandin, monkeypatch, tmp_path):  # noqa: F811
    """Point the SDK at the stand-in through DATABRICKS_WORKSPACE_URL alone."""
    databricks_standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
    for name in ("DATABRICKS_HOST", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("DATABRICKS_WORKSPACE_URL", databricks_standin.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_standin.token)
    return databricks_standin


def test_sql_resource_and_helper_reach_the_workspace_url(url_only):
    assert workspace_client().config.host == url_only.host
    client = DatabricksRestResource().get_workspace_client()
    assert client.config.host == url_only.host
    assert client.current_user.me() is not None
    assert url_only.requests_to("GET", r".*/preview/scim/v2/Me")


def test_load_on_databricks_with_only_the_workspace_url(
    url_only,
    control_db,
    source_db,
    source,  # noqa: F811
    lake_root,
    db,  # noqa: F811
    instance,  # noqa: F811
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, _ = claim_and_materialize(control_db, instance, "pg.orders")

    assert result.success, event_text(instance, result.run_id)
    assert url_only.only_run().result_state == "SUCCESS"
    assert control_row(db, "pg.orders")["last_databricks_run"] == url_only.run_page_url(
        url_only.only_run()
    )
