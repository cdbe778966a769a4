"""failed_monitor -> dataloader__retry_analysis (real script, local Pipes) -> the row's next state."""

import dagster as dg
import psycopg
import pytest
from helpers import failed_row, lakebase_for
from openai_standin import OpenAIStandIn, good_answer, openai_standin

from dagsters.assets.dataloader_pipes_asset import build_retry_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.settings import Settings, load_settings

__all__ = ["openai_standin"]  # the fixture, imported so pytest finds it in this module


@pytest.fixture(autouse=True)
def _no_ai_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATALOADER_AI_MODEL",
        "DATALOADER_AI_BASE_URL",
        "DATALOADER_AI_API_KEY",
        "DATALOADER_AI_PROVIDER",
        "DATALOADER_AI_MIN_CONFIDENCE",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


def _tick(instance: dg.DagsterInstance, control_db: str):
    context = dg.build_sensor_context(
        instance=instance, resources={"lakebase": lakebase_for(control_db)}
    )
    return build_failed_monitor(Settings())(context)


def _analyse(instance: dg.DagsterInstance, control_db: str, key: str, run_config: dict) -> dict:
    """Run the retry asset for ``key`` as the sensor's run would; its materialization metadata."""
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
    [materialization] = result.asset_materializations_for_node("dataloader__retry_analysis")
    return {k: v.value for k, v in materialization.metadata.items()}


def _row(db: psycopg.Connection, key: str) -> dict:
    return db.execute(
        "SELECT *, next_load_date_time - now() AS wait FROM table_control WHERE control_key = %s",
        (key,),
    ).fetchone()


def _decision_on(db: psycopg.Connection, metadata_id: int) -> dict:
    return db.execute(
        "SELECT retry_decision, retry_decider, retry_reason, retry_confidence"
        " FROM historical_metadata"
        " WHERE metadata_id = %s",
        (metadata_id,),
    ).fetchone()


def test_transient_failure_is_retried_by_rules_and_not_analysed_twice(control_db, db, instance):
    metadata_id = failed_row(db, "orders", "server closed the connection unexpectedly")

    [request] = _tick(instance, control_db).run_requests
    metadata = _analyse(instance, control_db, "orders", request.run_config)

    assert (metadata["decision"], metadata["decider"], metadata["applied"]) == (
        "Retry Recommended",
        "rules",
        "retried",
    )
    row = _row(db, "orders")
    assert (row["last_status"], row["retry_count"], row["needs_review"]) == (None, 1, False)
    assert row["last_message"].startswith("[AI Analysis - Retry Recommended]")
    assert row["wait"].total_seconds() > 4 * 60  # first back-off step is 5 minutes
    assert _decision_on(db, metadata_id)["retry_decision"] == "Retry Recommended"
    assert isinstance(_tick(instance, control_db), dg.SkipReason)


def test_model_review_keeps_the_row_failed_and_out_of_the_loop(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    openai_standin.queue(good_answer("Requires Review", 0.9, "The table was dropped at source."))
    metadata_id = failed_row(db, "refunds", 'relation "public.refunds" does not exist')

    [request] = _tick(instance, control_db).run_requests
    metadata = _analyse(instance, control_db, "refunds", request.run_config)

    assert (metadata["decision"], metadata["decider"]) == ("Requires Review", "gpt-standin")
    assert metadata["confidence"] == pytest.approx(0.9)
    assert metadata["reason"] == "The table was dropped at source."
    row = _row(db, "refunds")
    assert (row["last_status"], row["needs_review"], row["retry_count"]) == ("Failed", True, 0)
    assert row["last_message"] == (
        "[AI Analysis - Requires Review] The table was dropped at source. (decided by"
        ' gpt-standin) | Cause: relation "public.refunds" does not exist'
    )
    stored = _decision_on(db, metadata_id)
    assert (stored["retry_decision"], stored["retry_decider"]) == ("Requires Review", "gpt-standin")
    assert stored["retry_confidence"] == pytest.approx(0.9)
    assert stored["retry_reason"] == "The table was dropped at source."
    assert isinstance(_tick(instance, control_db), dg.SkipReason)  # under review: never again
    assert len(openai_standin.requests) == 1


def test_low_confidence_retry_is_reviewed(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    monkeypatch.setenv("DATALOADER_AI_MIN_CONFIDENCE", "0.8")
    openai_standin.queue(good_answer("Retry Recommended", 0.6, "Could be a blip."))
    failed_row(db, "items", "Connection reset by peer")

    [request] = _tick(instance, control_db).run_requests
    metadata = _analyse(instance, control_db, "items", request.run_config)

    assert metadata["decision"] == "Requires Review"
    assert _row(db, "items")["needs_review"] is True


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

    skipped = _tick(instance, control_db)

    # Nothing to analyse: "busy" is already being analysed, and "flaky" has used its retries, so
    # the monitor sends it to review by rule, without asking the model.
    assert isinstance(skipped, dg.SkipReason)
    flaky = _row(db, "flaky")
    assert (flaky["last_status"], flaky["needs_review"], flaky["retry_count"]) == (
        "Failed",
        True,
        3,
    )
    assert flaky["last_message"].startswith("[AI Analysis - Requires Review]")
    assert _decision_on(db, flaky["last_metadata_id"])["retry_decider"] == "rules"
    assert _row(db, "busy")["needs_review"] is False
    assert isinstance(_tick(instance, control_db), dg.SkipReason)
    assert openai_standin.requests == []
