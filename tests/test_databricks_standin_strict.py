"""The stand-in runs a task the way Databricks does, so the scripts are tested as they will run
(issue 12, "the stand-in must stop being lenient"): the file through ``exec(compile())`` without
``__file__`` from another directory, and, in ``cluster_env_only`` mode, with only the environment
a cluster gives it (its ``spark_env_vars`` and runtime version), none of the orchestrator's."""

import threading
import time
from collections.abc import Iterator

import pytest
from databricks_standin import (
    CLUSTER,
    REPO_SCRIPTS,
    VOLUME,
    WORKSPACE_SCRIPTS,
    DatabricksStandin,
    databricks_standin,  # noqa: F401
    event_text,
)
from helpers import add_control_row, control_row
from test_databricks_e2e import BACKENDS, claim_and_materialize, destination_rows
from test_databricks_e2e import standin as lenient_standin  # noqa: F401

LEAKS = {
    "DATALOADER_SECRET__SOURCES__ORDERS": "orchestrator-only-secret-1",
    "LAKEBASE_PASSWORD": "orchestrator-only-secret-2",
}


@pytest.fixture
def strict_standin(
    tmp_path_factory: pytest.TempPathFactory, lake_root, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabricksStandin]:
    standin = DatabricksStandin(tmp_path_factory.mktemp("strict"), cluster_env_only=True)
    # The cluster's own configuration: where the (stand-in's Arrow) engine writes.
    standin.add_cluster(
        CLUSTER,
        spark_env_vars={"DATALOADER_ENGINE": "arrow", "DATALOADER_LAKE_ROOT": str(lake_root)},
    )
    standin.add_volume("main.dataloader.pipes")
    with standin:
        standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
        for name, value in {**standin.env(), **LEAKS}.items():
            monkeypatch.setenv(name, value)
        yield standin


def test_a_load_runs_with_only_the_clusters_environment(
    strict_standin, control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, _ = claim_and_materialize(control_db, instance, "pg.orders", "existing_cluster")

    assert result.success, event_text(instance, result.run_id)
    run = strict_standin.only_run()
    assert run.argv[1] == "-c"  # exec(compile()), not `python <file>`
    assert run.env["DATABRICKS_RUNTIME_VERSION"] == "15.4.x-scala2.12"  # the cluster's runtime
    for name, value in LEAKS.items():
        assert name not in run.env
        assert value not in run.stdout + run.stderr
    assert "DAGSTER_HOME" not in run.env and "VIRTUAL_ENV" not in run.env
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    assert destination_rows(lake_root) == 25


def test_scripts_run_through_exec_compile_without_file_from_another_directory(
    lenient_standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    result, _ = claim_and_materialize(control_db, instance, "pg.orders", "serverless")

    assert result.success, event_text(instance, result.run_id)
    run = lenient_standin.only_run()
    assert run.argv[1:3][0] == "-c" and "exec(compile(source, path" in run.argv[2]
    assert run.argv[3].endswith("dataloader_pipe.py")
    assert not str(run.argv[3]).startswith(str(lenient_standin.runs_dir))  # cwd is elsewhere
    assert BACKENDS["serverless"]["volume_path"] == VOLUME


def test_a_queued_run_is_waited_for_like_any_other_state(
    lenient_standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    lenient_standin.hold_queued = True

    def release_once_a_poll_saw_queued():
        run = lenient_standin.wait_for_run("QUEUED", timeout=60)
        deadline = time.monotonic() + 60
        while "QUEUED" not in list(run.served_states) and time.monotonic() < deadline:
            time.sleep(0.05)
        lenient_standin.release_queue.set()

    releaser = threading.Thread(target=release_once_a_poll_saw_queued, daemon=True)
    releaser.start()
    add_control_row(db, source_db, "pg.orders", "orders")
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", "existing_cluster")
    finally:
        lenient_standin.release_queue.set()
        releaser.join(timeout=10)

    assert result.success, event_text(instance, result.run_id)
    logs = event_text(instance, result.run_id)
    assert "state transition to RunLifeCycleState.QUEUED" in logs
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
