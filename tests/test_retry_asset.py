"""failed_monitor -> dataloader__retry_analysis (real retry script via local Pipes) -> row's next state."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest
from helpers import control_row, failed_row, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_retry_asset
from dagsters.control.run_requests import RETRY_ASSET
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.settings import Settings, load_settings
from dagsters.utils.lakebase_client import LakebaseClient


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # No chat model configured: the script's deterministic classifier decides.
    for name in ("DATALOADER_AI_MODEL", "DATALOADER_AI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def run_monitor_then_analysis(
    control_db: str, instance: dg.DagsterInstance, settings: Settings | None = None
) -> list:
    settings = settings or Settings()
    lakebase = lakebase_for(control_db)
    result = build_failed_monitor(settings)(
        dg.build_sensor_context(instance=instance, resources={"lakebase": lakebase})
    )
    if isinstance(result, dg.SkipReason):
        return []
    instance.add_dynamic_partitions(PARTITIONS_NAME, [r.partition_key for r in result.run_requests])
    outcomes = []
    for request in result.run_requests:
        outcome = dg.materialize(
            [build_retry_asset(settings)],
            partition_key=request.partition_key,
            run_config=request.run_config,
            resources={
                "lakebase": lakebase,
                "pipes_databricks": PipesDatabricksResource(execution="local"),
            },
            instance=instance,
        )
        outcomes.append(outcome)
    return outcomes


def test_transient_failure_is_retried_with_backoff(control_db, db, instance):
    metadata_id = failed_row(
        db, "pg.flaky", "load of public.flaky failed at step 'load': connection reset by peer"
    )

    [outcome] = run_monitor_then_analysis(control_db, instance)

    row = control_row(db, "pg.flaky")
    assert row["last_status"] is None
    assert row["retry_count"] == 1
    assert row["last_message"].startswith("[AI Analysis - Retry Recommended]")
    wait = row["next_load_date_time"] - db.execute("SELECT now() AS t").fetchone()["t"]
    assert timedelta(minutes=4) < wait <= timedelta(minutes=5)
    decision = db.execute(
        "SELECT retry_decision, retry_decider FROM historical_metadata WHERE metadata_id = %s",
        (metadata_id,),
    ).fetchone()
    assert decision == {"retry_decision": "Retry Recommended", "retry_decider": "rules"}
    [materialization] = outcome.asset_materializations_for_node(RETRY_ASSET)
    assert materialization.metadata["decision"].value == "Retry Recommended"
    assert materialization.metadata["applied"].value == "retried"


def test_permanent_failure_goes_to_review_and_is_not_analysed_again(control_db, db, instance):
    failed_row(
        db,
        "pg.gone",
        "load of public.gone failed at step 'load': relation \"public.gone\" does not exist",
    )

    run_monitor_then_analysis(control_db, instance)

    row = control_row(db, "pg.gone")
    assert row["last_status"] == "Failed"
    assert row["needs_review"] is True
    assert row["last_message"].startswith("[AI Analysis - Requires Review]")
    assert run_monitor_then_analysis(control_db, instance) == []


def test_analysis_of_a_row_rerun_meanwhile_changes_nothing(control_db, db, instance):
    metadata_id = failed_row(db, "pg.rerun", "connection refused")
    db.execute("UPDATE table_control SET last_status = 'Queued'")  # a person reran it
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.rerun"])

    outcome = dg.materialize(
        [build_retry_asset(load_settings())],
        partition_key="pg.rerun",
        run_config={"ops": {RETRY_ASSET: {"config": {"metadata_id": metadata_id}}}},
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource(execution="local"),
        },
        instance=instance,
    )

    assert outcome.asset_materializations_for_node(RETRY_ASSET) == []
    row = control_row(db, "pg.rerun")
    assert (row["last_status"], row["retry_count"]) == ("Queued", 0)


def fail_again(db, control_db: str, key: str, message: str) -> None:
    """The row's next load (its retry) claimed, started and failed, as sensor and asset do."""
    db.execute(
        "UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,)
    )
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in client.claim_due_tables(10) if r["control_key"] == key]
        config_id, metadata_id = claimed["config_id"], claimed["metadata_id"]
        assert client.start_load(config_id, metadata_id, dagster_run_id="r", dagster_run_url="u")
        assert client.record_failure(config_id, metadata_id, message)


def test_max_retries_5_means_five_retries_then_review(control_db, db, instance):
    # The bug: DATALOADER_MAX_RETRIES=5 was capped at 3 by the retry analysis' own constant.
    settings = load_settings({"DATALOADER_MAX_RETRIES": "5"})
    transient = "load of public.flaky failed at step 'load': connection reset by peer"
    failed_row(db, "pg.flaky", transient)
    for retry in range(1, 6):
        [outcome] = run_monitor_then_analysis(control_db, instance, settings)
        [materialization] = outcome.asset_materializations_for_node(RETRY_ASSET)
        assert materialization.metadata["applied"].value == "retried", f"retry {retry}"
        assert control_row(db, "pg.flaky")["retry_count"] == retry
        fail_again(db, control_db, "pg.flaky", transient)

    # The sixth failure: failed_monitor sends it to review by rule, without an analysis run.
    assert run_monitor_then_analysis(control_db, instance, settings) == []
    row = control_row(db, "pg.flaky")
    assert (row["needs_review"], row["retry_count"]) == (True, 5)
    assert "5 of 5 automatic retries" in row["last_message"]
