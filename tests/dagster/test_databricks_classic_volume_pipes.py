"""Classic clusters keep the Pipes context and messages in a Unity Catalog volume by default
(issue 12, item 6; issue 25, item 3): the DBFS root is deprecated and new accounts have no access to
it. DBFS is used only when asked for (``DATALOADER_DATABRICKS_PIPES_DBFS=true``); a classic
deployment with neither is refused at load and, if a load is attempted, before anything is
submitted."""

import pytest
from databricks_fixtures import (
    BACKENDS,
    NEW_CLUSTER,
    claim_and_materialize,
    destination_rows,
    standin,  # noqa: F401
)
from databricks_standin import CLUSTER, VOLUME, databricks_standin, event_text  # noqa: F401
from deployment_env import deployment_env
from helpers import add_control_row, control_row

from dagsters.deployment import deployment_problems
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings

CLASSIC_BACKENDS = {
    "existing_cluster_volume": {"cluster_id": CLUSTER, "volume_path": VOLUME},
    "new_cluster_volume": {"new_cluster_json": NEW_CLUSTER, "volume_path": VOLUME},
    "existing_cluster_dbfs": {"cluster_id": CLUSTER, "pipes_dbfs": True},
    "new_cluster_dbfs": {"new_cluster_json": NEW_CLUSTER, "pipes_dbfs": True},
}


@pytest.mark.parametrize("backend", sorted(CLASSIC_BACKENDS))
def test_a_classic_load_uses_the_volume_and_dbfs_only_when_asked(
    backend,
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, backend, CLASSIC_BACKENDS[backend])
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", backend)

    assert result.success, event_text(instance, result.run_id)
    volume = standin.requests_to("PUT", r"/api/2\.0/fs/files/Volumes/main/dataloader/pipes/.+")
    dbfs = standin.requests_to("POST", r"/api/2\.0/dbfs/.+")
    if backend.endswith("_volume"):
        assert volume and not dbfs  # DBFS may be disabled
    else:
        assert dbfs and not volume
    task = standin.only_run().submit_body["tasks"][0]
    assert ("new_cluster" in task) == backend.startswith("new_cluster")
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    assert destination_rows(lake_root) == 25
    assert "load read 25 and wrote 25 rows" in event_text(instance, result.run_id)


def test_the_pipes_files_never_go_to_dbfs_by_default():
    """A classic resource configured as before this change (a cluster, no volume, no DBFS flag)
    does not fall back to DBFS."""
    runner = PipesDatabricksResource(execution="databricks", cluster_id=CLUSTER).databricks_runner()
    assert (runner.volume_path, runner.pipes_dbfs) == (None, False)
    settings = load_settings({"DATALOADER_DATABRICKS_PIPES_DBFS": "true"})
    assert PipesDatabricksResource.from_settings(settings).pipes_dbfs is True
    assert load_settings({}).databricks.pipes_dbfs is False


def test_classic_compute_without_a_volume_fails_the_row_before_submitting(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, "bare_cluster", {"cluster_id": CLUSTER})
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", "bare_cluster")

    assert not result.success
    assert standin.runs == {}
    assert not standin.requests_to("POST", r"/api/2\.0/dbfs/.+")
    message = control_row(db, "pg.orders")["last_message"]
    assert "DATALOADER_DATABRICKS_VOLUME_PATH=/Volumes/<catalog>/<schema>/pipes" in message
    assert "DATALOADER_DATABRICKS_PIPES_DBFS=true" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        (
            {"DATALOADER_DATABRICKS_VOLUME_PATH": None, "DATALOADER_DATABRICKS_PIPES_DBFS": "1"},
            None,
        ),
        (
            {"DATALOADER_DATABRICKS_VOLUME_PATH": None},
            "classic compute keeps the Dagster Pipes files in a Unity Catalog volume",
        ),
        (
            {"DATALOADER_DATABRICKS_PIPES_DBFS": "true"},
            "DATALOADER_DATABRICKS_PIPES_DBFS=true contradicts DATALOADER_DATABRICKS_VOLUME_PATH",
        ),
        (
            {
                "DATABRICKS_CLUSTER_ID": None,
                "DATALOADER_DATABRICKS_SERVERLESS": "true",
                "DATALOADER_DATABRICKS_PIPES_DBFS": "true",
            },
            "DATALOADER_DATABRICKS_PIPES_DBFS=true contradicts DATALOADER_DATABRICKS_SERVERLESS",
        ),
    ],
)
def test_the_deployment_check_asks_for_a_volume_or_an_explicit_dbfs(overrides, expected):
    problems = deployment_problems(load_settings(deployment_env("npd", **overrides)))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
