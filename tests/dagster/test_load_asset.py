"""dataloader__table_load with the local backend: real source table, real Delta, real control rows.

Pins down: a claimed row ends Succeeded with rows, watermark and next slot in both the control row
and its history row; a failing load ends Failed with the script's own message and writes nothing;
a launch of a partition (its config naming the key, or no config) makes a new 'ui' attempt;
re-executing a failed run makes a new history row; terminating a running load kills the script
and leaves the row Failed/Cancelled with no materialization; the launchpad YAML in
docs/operations.md forces a full reload of the partition and is refused without one; a config
field the asset does not know is refused at launch.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from deltalake import DeltaTable
from helpers import (
    add_control_row,
    claim_due,
    control_row,
    fresh_code_location_job,
    history,
    lakebase_for,
    load_scripts,
    typed_control_row,
)
from psycopg.conninfo import conninfo_to_dict

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config, source_system
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient


def resources(control_db: str, lake_root: Path) -> dict:
    return {
        "lakebase": lakebase_for(control_db),
        "pipes_databricks": PipesDatabricksResource.from_settings(
            load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)}), termination_grace_seconds=3
        ),
    }


def lakebase_env(monkeypatch: pytest.MonkeyPatch, conninfo: str) -> None:
    """Point the LAKEBASE_* variables at ``conninfo``, as a deployment's code location sees them."""
    parts = conninfo_to_dict(conninfo)
    for name, value in {
        "LAKEBASE_HOST": parts["host"],
        "LAKEBASE_PORT": parts["port"],
        "LAKEBASE_DATABASE": parts["dbname"],
        "LAKEBASE_USER": parts["user"],
        "LAKEBASE_SSLMODE": "disable",
    }.items():
        monkeypatch.setenv(name, str(value))


def claim_and_materialize(control_db, lake_root, instance, key):
    """What master_sensor + a run worker do: claim the due row, run its partition."""
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    return dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources=resources(control_db, lake_root),
        instance=instance,
        raise_on_error=False,
    ), claimed


def materializations(result: dg.ExecuteInProcessResult) -> list:
    """The load asset's own materializations (not its destination table's, logged alongside)."""
    return [
        m
        for m in result.asset_materializations_for_node(LOAD_ASSET)
        if m.asset_key == dg.AssetKey(LOAD_ASSET)
    ]


def test_claimed_incremental_load_succeeds_then_picks_up_only_new_rows(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, claimed = claim_and_materialize(control_db, lake_root, instance, "pg.orders")

    assert result.success
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Succeeded"
    assert row["incremental_value"] is not None and row["incremental_value"].startswith(
        "2024-01-02"
    )
    assert row["last_dagster_run"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    assert row["next_load_date_time"] > row["last_load_date_time"]
    [attempt] = history(db, "pg.orders")
    assert attempt["metadata_id"] == claimed.metadata_id
    assert attempt["status"] == "Succeeded"
    assert (attempt["rows_read"], attempt["rows_written"]) == (25, 25)
    assert attempt["dagster_run_id"] == result.run_id
    assert DeltaTable(str(lake_root / "lake" / "raw" / "orders")).to_pyarrow_table().num_rows == 25
    [materialization] = materializations(result)
    assert materialization.partition == "pg.orders"
    assert materialization.metadata["rows_written"].value == 25
    assert materialization.metadata["metadata_id"].value == str(claimed.metadata_id)
    # The table's columns, row count and name are its own asset's, never the load asset's
    # (the partitioned load asset's Overview would show the last table's as its own).
    own = set(materialization.metadata)
    assert not own & {"dagster/column_schema", "dagster/row_count", "dagster/table_name"}
    [table] = [
        m
        for m in result.asset_materializations_for_node(LOAD_ASSET)
        if m.asset_key == dg.AssetKey(["lake", "raw", "orders"])
    ]
    assert table.metadata["dagster/row_count"].value == 25
    assert "dagster/column_schema" in table.metadata
    assert table.metadata["dagster/table_name"].value == "lake.raw.orders"

    source.execute("INSERT INTO public.orders VALUES (26, 1, '2024-03-01'), (27, 2, '2024-03-02')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.orders")

    assert result.success
    second = history(db, "pg.orders")[-1]
    assert second["rows_written"] == 2
    assert control_row(db, "pg.orders")["incremental_value"].startswith("2024-03-02")
    assert DeltaTable(str(lake_root / "lake" / "raw" / "orders")).to_pyarrow_table().num_rows == 27


def test_new_source_column_reopens_the_staging_model_only_when_the_schema_changes(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    db.execute("UPDATE table_control SET staging_model_processed = true")

    source.execute("INSERT INTO public.orders VALUES (26, 1, '2024-03-01')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    assert control_row(db, "pg.orders")["staging_model_processed"] is True  # same columns

    source.execute("ALTER TABLE public.orders ADD COLUMN channel text")
    source.execute("INSERT INTO public.orders VALUES (27, 2, '2024-03-02', 'web')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Succeeded"
    assert row["staging_model_processed"] is False  # landing_table_monitor regenerates it


def test_missing_source_table_fails_with_the_scripts_own_message(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.missing", "no_such_table")

    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.missing")

    assert not result.success
    assert materializations(result) == []
    row = control_row(db, "pg.missing")
    assert row["last_status"] == "Failed"
    assert "no_such_table" in row["last_message"]
    assert "exited with code" not in row["last_message"]
    [attempt] = history(db, "pg.missing")
    assert attempt["status"] == "Failed"
    assert attempt["message"] == row["last_message"]
    assert attempt["ended_at"] is not None
    assert row["incremental_value"] is None
    assert not (lake_root / "lake" / "raw" / "no_such_table").exists()


def test_launch_with_only_control_key_queues_a_ui_attempt(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(
        db, source_db, "pg.orders", "orders", load_strategy="full", incremental_column=None
    )
    db.execute("UPDATE table_control SET next_load_date_time = now() + interval '1 day'")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])

    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key="pg.orders",
        run_config={"ops": {LOAD_ASSET: {"config": {"control_key": "pg.orders"}}}},
        resources=resources(control_db, lake_root),
        instance=instance,
    )

    assert result.success
    [attempt] = history(db, "pg.orders")
    assert attempt["triggered_by"] == "ui"
    assert attempt["status"] == "Succeeded"
    assert control_row(db, "pg.orders")["last_metadata_id"] == attempt["metadata_id"]

    # The partition alone (no config at all) is enough too.
    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key="pg.orders",
        resources=resources(control_db, lake_root),
        instance=instance,
    )
    assert result.success
    assert [h["triggered_by"] for h in history(db, "pg.orders")] == ["ui", "ui"]


def test_launch_while_the_table_is_already_loading_is_refused(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    with LakebaseClient(control_db) as client:
        claim_due(client, 10)  # Queued by the sensor, its run not started yet
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])

    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key="pg.orders",
        resources=resources(control_db, lake_root),
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    failure = result.failure_data_for_node(LOAD_ASSET)
    assert "already Queued" in failure.error.message
    assert control_row(db, "pg.orders")["last_status"] == "Queued"  # the sensor's attempt stands
    assert len(history(db, "pg.orders")) == 1


def test_stale_attempt_is_not_loaded(control_db, source_db, source, lake_root, db, instance):
    add_control_row(db, source_db, "pg.orders", "orders")
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
        client.record_failure(claimed.config_id, claimed.metadata_id, "Cancelled - stuck in queue")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])

    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key="pg.orders",
        run_config=load_run_config(claimed),
        resources=resources(control_db, lake_root),
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    assert "no longer queued" in result.failure_data_for_node(LOAD_ASSET).error.message
    assert control_row(db, "pg.orders")["last_message"] == "Cancelled - stuck in queue"
    assert not (lake_root / "lake" / "raw" / "orders").exists()


def _source_query_running(source: psycopg.Connection, relation: str) -> bool:
    """Whether another session of the source database is inside a query on ``relation``, waiting
    in the pg_sleep that the slow view ``relation`` makes."""
    return (
        source.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'active' AND wait_event = 'PgSleep'"
            " AND query LIKE %s",
            (f"%{relation}%",),
        ).fetchone()[0]
        > 0
    )


def test_terminating_a_running_load_kills_it_and_records_the_cancellation(
    control_db, source_db, source, lake_root, db, instance
):
    # A view that takes a while to read keeps the script busy inside the source query.
    source.execute(
        "CREATE VIEW public.slow_orders AS SELECT o.* FROM public.orders o"
        " WHERE (SELECT count(*) FROM pg_sleep(60)) > 0"
    )
    add_control_row(
        db, source_db, "pg.slow", "slow_orders", load_strategy="full", incremental_column=None
    )

    terminated = threading.Event()

    def terminate_inside_the_source_query() -> None:
        # Terminate only once the script is inside its source query (seen in pg_stat_activity of
        # the source database), whatever the machine's speed; poll with a deadline.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                control_row(db, "pg.slow")["last_status"] == "In Progress"
                and load_scripts()
                and _source_query_running(source, "slow_orders")
            ):
                os.kill(os.getpid(), signal.SIGINT)  # what a run worker gets on termination
                terminated.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=terminate_inside_the_source_query, daemon=True)
    killer.start()
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.slow")
    killer.join(timeout=5)

    assert terminated.is_set(), "the load never reached its source query"
    assert not result.success
    assert materializations(result) == []
    row = control_row(db, "pg.slow")
    assert row["last_status"] == "Failed"
    assert row["last_message"].startswith("Cancelled")
    assert history(db, "pg.slow")[0]["status"] == "Failed"
    assert load_scripts() == []
    assert not (lake_root / "lake" / "raw" / "slow_orders").exists()


def test_reexecuting_a_failed_run_makes_a_new_history_row(
    control_db, source_db, source, lake_root, db, instance, monkeypatch
):
    lakebase_env(monkeypatch, control_db)
    add_control_row(
        db, source_db, "pg.late", "late_orders", load_strategy="full", incremental_column=None
    )
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.late"])
    job = _load_job()

    with dg.execute_job(
        job,
        instance=instance,
        run_config=load_run_config(claimed),
        tags={"dagster/partition": "pg.late"},
    ) as first:
        assert not first.success
    assert control_row(db, "pg.late")["last_status"] == "Failed"

    source.execute("CREATE TABLE public.late_orders AS SELECT * FROM public.orders")
    with dg.execute_job(
        job,
        instance=instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
        # The UI's re-execution copies the parent's tags (partition included); in process they
        # are given (tests/e2e/test_ui_launches.py re-executes through the UI's GraphQL API).
        tags={"dagster/partition": "pg.late"},
    ) as second:
        assert second.success

    old, new = history(db, "pg.late")
    assert (old["metadata_id"], old["status"]) == (claimed.metadata_id, "Failed")
    assert old["dagster_run_id"] == first.run_id
    assert (new["status"], new["triggered_by"], new["dagster_run_id"]) == (
        "Succeeded",
        "ui",
        second.run_id,
    )
    assert control_row(db, "pg.late")["last_status"] == "Succeeded"


def _launchpad_yaml() -> dict:
    """The copy-paste launchpad YAML exactly as docs/operations.md shows it."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if LOAD_ASSET in b]
    assert len(blocks) == 1, "docs/operations.md should show one launchpad YAML for the load"
    return yaml.safe_load(blocks[0])


def _load_job():
    """The load job as a run worker gets it: the code location imported in this environment."""
    return fresh_code_location_job("dataloader__table_load_job")


def test_the_documented_launchpad_yaml_forces_a_full_reload_of_the_partition(
    control_db, source_db, source, lake_root, db, instance, monkeypatch
):
    """The docs' YAML on the table's partition: a full overwrite, said as such, the row's own
    flag untouched; the same YAML without a partition is refused before anything is claimed."""
    lakebase_env(monkeypatch, control_db)
    run_config = _launchpad_yaml()
    assert run_config["ops"][LOAD_ASSET]["config"] == {"force_full_reload": True}
    add_control_row(db, source_db, "pg.orders", "orders")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    db.execute("UPDATE table_control SET next_load_date_time = now() + interval '1 day'")

    with dg.execute_job(_load_job(), instance=instance, run_config=run_config) as refused:
        assert not refused.success
    [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "select the table's partition and launch again" in str(failure.event_specific_data)
    assert len(history(db, "pg.orders")) == 1  # nothing claimed
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"

    # Without new source rows an incremental load writes 0 rows; forced, it rewrites all 25.
    with dg.execute_job(
        _load_job(),
        instance=instance,
        run_config=run_config,
        tags={"dagster/partition": "pg.orders"},
    ) as result:
        assert result.success
    first, forced = history(db, "pg.orders")
    assert (forced["status"], forced["triggered_by"]) == ("Succeeded", "ui")
    assert forced["dagster_run_id"] == result.run_id
    assert forced["rows_written"] == 25
    row = control_row(db, "pg.orders")
    assert (row["last_status"], row["force_full_reload"]) == ("Succeeded", False)
    assert row["incremental_value"] == first["watermark_after"]
    orders = DeltaTable(str(lake_root / "lake" / "raw" / "orders"))
    assert orders.to_pyarrow_table().num_rows == 25
    assert orders.history(1)[0]["operation"] in ("WRITE", "CREATE OR REPLACE TABLE")
    assert orders.history(1)[0].get("operationParameters", {}).get("mode") == "Overwrite"
    # The person's run carries the tags of a sensor run for the attempt it made.
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["dataloader/metadata_id"] == str(forced["metadata_id"])
    assert tags["dataloader/triggered_by"] == "ui"
    # What a sensor run carries.
    assert tags["dataloader/source_system"] == source_system(typed_control_row(db, "pg.orders"))


def test_a_config_field_the_asset_does_not_know_is_refused_at_launch(instance):
    with pytest.raises(dg.DagsterInvalidConfigError, match="load_strategy"):
        dg.execute_job(
            _load_job(),
            instance=instance,
            run_config={"ops": {LOAD_ASSET: {"config": {"load_strategy": "full"}}}},
            tags={"dagster/partition": "pg.orders"},
        )
