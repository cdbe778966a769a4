"""A retry budget that means what it says.

- A Failed row waits for its retry decision: its schedule does not re-claim it first.
- When the analysis run itself cannot run (the cluster is gone), the deterministic rules decide in
  the code location: a transient fault is retried, a permanent one reviewed, not everything
  reviewed.
- A person's termination uses no retry and is not analysed: the row stays Failed until someone
  loads it again.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from databricks_standin import VOLUME, DatabricksStandin, databricks_standin  # noqa: F401
from helpers import control_row, evaluate, failed_row, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_retry_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import RETRY_ASSET
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.sensors.dataloader_master_sensor import build_master_sensor
from dagsters.settings import Settings


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, control_db: str):
    return evaluate(sensor, instance, {"lakebase": lakebase_for(control_db)})


def claimed_keys(result) -> list[str]:
    return [r.partition_key for r in getattr(result, "run_requests", None) or []]


def test_a_failed_row_is_not_reclaimed_by_its_schedule_before_the_analysis_decides(
    control_db, db, instance
):
    failed_row(db, "pg.flaky", "connection reset by peer")
    # Its next slot has come (the failure advanced it; the slot is now).
    db.execute("UPDATE table_control SET next_load_date_time = now() - interval '1 minute'")
    master = build_master_sensor(Settings())

    assert claimed_keys(tick(master, instance, control_db)) == []
    analysis = tick(build_failed_monitor(Settings()), instance, control_db)
    assert [r.partition_key for r in analysis.run_requests] == ["pg.flaky"]
    # Still waiting for the decision: the schedule does not take it, the stamp stays.
    assert claimed_keys(tick(master, instance, control_db)) == []
    assert control_row(db, "pg.flaky")["retry_analysis_requested_at"] is not None
    assert control_row(db, "pg.flaky")["last_status"] == "Failed"


def analyse_with(
    control_db: str, instance: dg.DagsterInstance, pipes: PipesDatabricksResource
) -> list[dg.ExecuteInProcessResult]:
    lakebase = lakebase_for(control_db)
    result = tick(build_failed_monitor(Settings()), instance, control_db)
    instance.add_dynamic_partitions(PARTITIONS_NAME, [r.partition_key for r in result.run_requests])
    return [
        dg.materialize(
            [build_retry_asset(Settings())],
            partition_key=request.partition_key,
            run_config=request.run_config,
            resources={"lakebase": lakebase, "pipes_databricks": pipes},
            instance=instance,
        )
        for request in result.run_requests
    ]


@pytest.fixture
def cluster_gone(
    databricks_standin: DatabricksStandin,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> PipesDatabricksResource:
    """The Databricks backend pointed at a cluster the workspace no longer has."""
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("DATABRICKS_HOST", databricks_standin.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_standin.token)
    return PipesDatabricksResource(
        execution="databricks", cluster_id="0000-000000-deleted", volume_path=VOLUME
    )


def test_when_the_analysis_cannot_run_the_rules_decide_in_the_code_location(
    control_db, db, instance, cluster_gone
):
    flaky = failed_row(db, "pg.flaky", "load failed: connection reset by peer")
    failed_row(db, "pg.dup", 'duplicate key value violates unique constraint "orders_pkey"')

    outcomes = analyse_with(control_db, instance, cluster_gone)

    assert len(outcomes) == 2 and all(o.success for o in outcomes)
    retried = control_row(db, "pg.flaky")
    assert retried["last_status"] is None  # retried, within the budget
    assert retried["retry_count"] == 1
    assert retried["last_message"].startswith("[AI Analysis - Retry Recommended]")
    assert "decided in the code location" in retried["last_message"]
    assert "Cluster 0000-000000-deleted does not exist" in retried["last_message"]
    reviewed = control_row(db, "pg.dup")
    assert reviewed["needs_review"] is True  # a permanent fault still goes to a person
    decision = db.execute(
        "SELECT retry_decision, retry_decider FROM historical_metadata WHERE metadata_id = %s",
        (flaky,),
    ).fetchone()
    assert decision == {"retry_decision": "Retry Recommended", "retry_decider": "rules"}
    [materialization] = outcomes[0].asset_materializations_for_node(RETRY_ASSET)
    assert materialization.metadata["decider"].value == "rules"


def test_a_persons_termination_uses_no_retry_and_stays_failed_until_someone_loads_it(
    control_db, db, instance
):
    failed_row(
        db, "pg.stopped", "Cancelled - Dagster run 1234-abcd was terminated", kind="cancelled"
    )
    db.execute(
        "UPDATE table_control SET schedule_interval = interval '1 hour',"
        " next_load_date_time = now() - interval '1 second'"
    )
    # Three terminations in a row would have been three retries used and then review.
    result = tick(build_failed_monitor(Settings()), instance, control_db)

    assert isinstance(result, dg.SkipReason)
    row = control_row(db, "pg.stopped")
    assert row["last_status"] == "Failed"
    assert row["retry_count"] == 0
    assert row["needs_review"] is False
    assert row["retry_analysis_requested_at"] is None
    assert row["last_message"] == "Cancelled - Dagster run 1234-abcd was terminated"
    # Its schedule slot has passed, but a Failed row waits for a person, not for its schedule.
    assert claimed_keys(tick(build_master_sensor(Settings()), instance, control_db)) == []
    # A person loads it again (the README's SQL): the next tick claims it.
    db.execute(
        "UPDATE table_control SET last_status = NULL, next_load_date_time = now()"
        " WHERE control_key = 'pg.stopped'"
    )
    assert claimed_keys(tick(build_master_sensor(Settings()), instance, control_db)) == [
        "pg.stopped"
    ]


def test_the_monitors_own_cancellations_are_decided_by_rule_and_count_as_retries(
    control_db, db, instance
):
    failed_row(db, "pg.queued", "Cancelled - stuck in queue for >60 minutes", kind="stuck_queued")
    failed_row(db, "pg.slow", "Cancelled - exceeded 180 minute timeout", kind="run_timeout")
    result = tick(build_failed_monitor(Settings()), instance, control_db)
    assert isinstance(result, dg.SkipReason)
    assert "Decided 2 by rule." in result.skip_message
    queued, slow = control_row(db, "pg.queued"), control_row(db, "pg.slow")
    assert (queued["last_status"], queued["retry_count"], queued["needs_review"]) == (
        None,
        1,
        False,
    )
    assert (slow["last_status"], slow["needs_review"]) == ("Failed", True)
