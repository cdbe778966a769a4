"""A failure's way through Dagster: failed_monitor picks it (or sends it to review by rule, or leaves
it while an analysis is in flight, or takes back an analysis that died), the retry asset runs the
real retry script through local Pipes, and the control row ends in its next state.

The decisions themselves, without Dagster, are test_retry_decisions.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import dagster as dg
import psycopg
import pytest
from helpers import (
    claim_due,
    control_row,
    evaluate,
    failed_row,
    failed_under_analysis,
    lakebase_for,
    make_row,
    tick,
)
from openai_standin import OpenAIStandIn, good_answer, openai_standin

from dagsters.assets.dataloader_pipes_asset import build_retry_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import RETRY_ASSET, retry_run_key
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import RETRY_JOB, build_failed_monitor
from dagsters.settings import RetryPolicy, Settings, SettingsError, load_settings
from dagsters.utils.lakebase_client import LakebaseClient

__all__ = ["openai_standin"]  # the fixture, imported so pytest finds it in this module

# No chat model configured unless a test sets one: the script's deterministic classifier decides.
pytestmark = pytest.mark.usefixtures("no_ai_model")


def monitor_tick(instance: dg.DagsterInstance, control_db: str):
    """One failed_monitor tick with the spec's settings."""
    return tick(build_failed_monitor(Settings()), instance, control_db)


def run_monitor_then_analysis(
    control_db: str, instance: dg.DagsterInstance, settings: Settings | None = None
) -> list:
    """A failed_monitor tick, then every analysis run it requested; the runs' results."""
    settings = settings or Settings()
    lakebase = lakebase_for(control_db)
    result = evaluate(build_failed_monitor(settings), instance, {"lakebase": lakebase})
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


def analyse(instance: dg.DagsterInstance, control_db: str, key: str, run_config: dict) -> dict:
    """Run the retry asset for ``key`` as the sensor's run would; its materialization metadata.

    Settings come from the environment, as in a code location: a test's AI variables reach it.
    """
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = dg.materialize(
        [build_retry_asset(load_settings())],
        instance=instance,
        partition_key=key,
        run_config=run_config,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource(execution="local"),
        },
    )
    [materialization] = result.asset_materializations_for_node(RETRY_ASSET)
    return {k: v.value for k, v in materialization.metadata.items()}


def row_with_wait(db: psycopg.Connection, key: str) -> dict:
    """The control row, with ``wait``: how long until its next load is due."""
    return db.execute(
        "SELECT *, next_load_date_time - now() AS wait FROM table_control WHERE control_key = %s",
        (key,),
    ).fetchone()


def decision_on(db: psycopg.Connection, metadata_id: int) -> dict:
    return db.execute(
        "SELECT retry_decision, retry_decider, retry_reason, retry_confidence"
        " FROM historical_metadata"
        " WHERE metadata_id = %s",
        (metadata_id,),
    ).fetchone()


# -- what the analysis does to the row ----------------------------------------------------------


def test_transient_failure_is_retried_by_rules_with_backoff_and_not_analysed_twice(
    control_db, db, instance
):
    metadata_id = failed_row(
        db, "pg.flaky", "load of public.flaky failed at step 'load': connection reset by peer"
    )

    [outcome] = run_monitor_then_analysis(control_db, instance)

    row = row_with_wait(db, "pg.flaky")
    assert (row["last_status"], row["retry_count"], row["needs_review"]) == (None, 1, False)
    assert row["last_message"].startswith("[AI Analysis - Retry Recommended]")
    assert timedelta(minutes=4) < row["wait"] <= timedelta(minutes=5)  # first back-off step
    stored = decision_on(db, metadata_id)
    assert (stored["retry_decision"], stored["retry_decider"]) == ("Retry Recommended", "rules")
    [materialization] = outcome.asset_materializations_for_node(RETRY_ASSET)
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["decision"], metadata["decider"], metadata["applied"]) == (
        "Retry Recommended",
        "rules",
        "retried",
    )
    assert isinstance(monitor_tick(instance, control_db), dg.SkipReason)


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


def test_model_review_keeps_the_row_failed_and_out_of_the_loop(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    openai_standin.queue(good_answer("Requires Review", 0.9, "The table was dropped at source."))
    metadata_id = failed_row(db, "refunds", 'relation "public.refunds" does not exist')

    [request] = monitor_tick(instance, control_db).run_requests
    metadata = analyse(instance, control_db, "refunds", request.run_config)

    assert (metadata["decision"], metadata["decider"]) == ("Requires Review", "gpt-standin")
    assert metadata["confidence"] == pytest.approx(0.9)
    assert metadata["reason"] == "The table was dropped at source."
    row = row_with_wait(db, "refunds")
    assert (row["last_status"], row["needs_review"], row["retry_count"]) == ("Failed", True, 0)
    assert row["last_message"] == (
        "[AI Analysis - Requires Review] The table was dropped at source. (decided by"
        ' gpt-standin) | Cause: relation "public.refunds" does not exist'
    )
    stored = decision_on(db, metadata_id)
    assert (stored["retry_decision"], stored["retry_decider"]) == ("Requires Review", "gpt-standin")
    assert stored["retry_confidence"] == pytest.approx(0.9)
    assert stored["retry_reason"] == "The table was dropped at source."
    assert isinstance(
        monitor_tick(instance, control_db), dg.SkipReason
    )  # under review: never again
    assert len(openai_standin.requests) == 1


def test_low_confidence_retry_is_reviewed(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    monkeypatch.setenv("DATALOADER_AI_MIN_CONFIDENCE", "0.8")
    openai_standin.queue(good_answer("Retry Recommended", 0.6, "Could be a blip."))
    failed_row(db, "items", "Connection reset by peer")

    [request] = monitor_tick(instance, control_db).run_requests
    metadata = analyse(instance, control_db, "items", request.run_config)

    assert metadata["decision"] == "Requires Review"
    assert row_with_wait(db, "items")["needs_review"] is True


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


# -- what failed_monitor analyses, and what it leaves alone -----------------------------------


def test_exhausted_rows_go_to_review_by_rule_and_in_flight_rows_are_left_alone(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    failed_row(db, "flaky", "Connection refused", retry_count=3)
    failed_row(db, "busy", "Connection refused")
    db.execute(
        "UPDATE table_control SET retry_analysis_requested_at = now() WHERE control_key = 'busy'"
    )

    skipped = monitor_tick(instance, control_db)

    # Nothing to analyse: "busy" is already being analysed, and "flaky" has used its retries, so
    # the monitor sends it to review by rule, without asking the model.
    assert isinstance(skipped, dg.SkipReason)
    flaky = row_with_wait(db, "flaky")
    assert (flaky["last_status"], flaky["needs_review"], flaky["retry_count"]) == (
        "Failed",
        True,
        3,
    )
    assert flaky["last_message"].startswith("[AI Analysis - Requires Review]")
    assert decision_on(db, flaky["last_metadata_id"])["retry_decider"] == "rules"
    assert row_with_wait(db, "busy")["needs_review"] is False
    assert isinstance(monitor_tick(instance, control_db), dg.SkipReason)
    assert openai_standin.requests == []


def fail_again(db, control_db: str, key: str, message: str) -> None:
    """The row's next load (its retry) claimed, started and failed, as sensor and asset do."""
    db.execute(
        "UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,)
    )
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
        config_id, metadata_id = claimed.config_id, claimed.metadata_id
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


# -- a retry analysis that died is taken back -----------------------------------------------------


def test_failed_monitor_reanalyses_a_dead_analysis_with_a_new_run_key(control_db, db, instance):
    config_id, metadata_id = failed_under_analysis(db, "orders", 90)
    failed_under_analysis(db, "busy", 30)
    result = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=60))),
        instance,
        control_db,
    )
    [request] = result.run_requests
    first_key = retry_run_key(make_row(control_key="orders", last_metadata_id=metadata_id))
    assert request.partition_key == "orders"
    assert request.run_key.startswith(first_key + ":again-") and request.run_key != first_key
    assert request.run_config["ops"]["dataloader__retry_analysis"]["config"]["metadata_id"] == (
        metadata_id
    )
    # Only the stale one: "busy" asked 30 min ago and may still be deciding.
    busy_stamp = control_row(db, "busy")["retry_analysis_requested_at"]
    assert busy_stamp < db.execute("SELECT now() - interval '29 minutes' AS t").fetchone()["t"]

    # The same after another timeout, but now the analysis run is still running in Dagster.
    db.execute(
        "UPDATE table_control SET retry_analysis_requested_at = now() - interval '2 hours'"
        " WHERE config_id = %s",
        (config_id,),
    )
    instance.add_run(
        dg.DagsterRun(
            job_name=RETRY_JOB,
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dataloader/metadata_id": str(metadata_id)},
        )
    )
    again = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=60))),
        instance,
        control_db,
    )
    assert isinstance(again, dg.SkipReason)
    restamped = control_row(db, "orders")["retry_analysis_requested_at"]
    assert restamped > db.execute("SELECT now() - interval '1 minute' AS t").fetchone()["t"]


def test_failed_monitor_uses_the_configured_analysis_timeout(control_db, db, instance):
    failed_under_analysis(db, "orders", 25)
    assert isinstance(tick(build_failed_monitor(Settings()), instance, control_db), dg.SkipReason)
    shorter = tick(
        build_failed_monitor(Settings(retry=RetryPolicy(analysis_timeout_minutes=20))),
        instance,
        control_db,
    )
    assert [r.partition_key for r in shorter.run_requests] == ["orders"]


def test_analysis_timeout_setting():
    var = "DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES"
    assert load_settings({}).retry.analysis_timeout_minutes == 60
    assert load_settings({var: " 5 "}).retry.analysis_timeout_minutes == 5
    for bad in ("0", "soon"):
        with pytest.raises(SettingsError, match=var):
            load_settings({var: bad})
