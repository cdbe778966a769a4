"""The stand-in runs a task the way Databricks does, so the scripts are tested as they will run
(issue 12, "the stand-in must stop being lenient"): the file through ``exec(compile())`` without
``__file__`` from another directory, with only the environment a cluster gives it (its
``spark_env_vars`` and runtime version), none of the orchestrator's, and through the life cycle
PENDING -> QUEUED or BLOCKED -> RUNNING -> TERMINATING -> TERMINATED."""

import threading
import time
from collections.abc import Iterator

import pytest
from databricks_fixtures import BACKENDS, claim_and_materialize, destination_rows
from databricks_fixtures import standin as loading_standin  # noqa: F401
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

LEAKS = {
    "DATALOADER_SECRET__SOURCES__ORDERS": "orchestrator-only-secret-1",
    "LAKEBASE_PASSWORD": "orchestrator-only-secret-2",
}


@pytest.fixture
def strict_standin(
    tmp_path_factory: pytest.TempPathFactory, lake_root, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabricksStandin]:
    standin = DatabricksStandin(tmp_path_factory.mktemp("strict"))
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
    loading_standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    result, _ = claim_and_materialize(control_db, instance, "pg.orders", "existing_cluster")

    assert result.success, event_text(instance, result.run_id)
    run = loading_standin.only_run()
    assert run.argv[1:3][0] == "-c" and "exec(compile(source, path" in run.argv[2]
    assert run.argv[3].endswith("dataloader_pipe.py")
    assert not str(run.argv[3]).startswith(str(loading_standin.runs_dir))  # cwd is elsewhere
    assert BACKENDS["serverless"]["volume_path"] == VOLUME


@pytest.mark.parametrize("held_in", ["QUEUED", "BLOCKED"])
def test_a_queued_or_blocked_run_is_waited_for_and_succeeds(
    held_in,
    loading_standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    """BLOCKED (held by an upstream run or a concurrency limit) is a waiting state like QUEUED:
    not failed, not terminal; the load goes on once the run starts."""
    loading_standin.hold_in = held_in

    def release_once_a_poll_saw_it():
        run = loading_standin.wait_for_run(held_in, timeout=60)
        deadline = time.monotonic() + 60
        while held_in not in list(run.served_states) and time.monotonic() < deadline:
            time.sleep(0.05)
        loading_standin.release.set()

    releaser = threading.Thread(target=release_once_a_poll_saw_it, daemon=True)
    releaser.start()
    add_control_row(db, source_db, "pg.orders", "orders")
    try:
        result, _ = claim_and_materialize(control_db, instance, "pg.orders", "existing_cluster")
    finally:
        loading_standin.release.set()
        releaser.join(timeout=10)

    assert result.success, event_text(instance, result.run_id)
    run = loading_standin.only_run()
    served = list(dict.fromkeys(run.served_states))  # the states polls saw, in order
    assert served[0] in ("PENDING", held_in) and held_in in served
    assert served.index(held_in) < served.index("TERMINATED")
    assert "INTERNAL_ERROR" not in served
    logs = event_text(instance, result.run_id)
    assert f"state transition to RunLifeCycleState.{held_in}" in logs
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    assert destination_rows(lake_root) == 25
