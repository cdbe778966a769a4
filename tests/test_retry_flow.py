"""failed_monitor -> dataloader__retry_analysis (real script, local Pipes) -> the row's next state."""

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from openai_standin import OpenAIStandIn, good_answer, openai_standin
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.assets.dataloader_pipes_asset import dataloader_retry_analysis
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.utils.run_config import PARTITIONS_NAME
from dagsters.utils.settings import Settings

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


@pytest.fixture
def db(control_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _lakebase(control_db: str) -> LakebaseResource:
    parts = conninfo_to_dict(control_db)
    return LakebaseResource(
        host=parts["host"],
        port=int(parts["port"]),
        database=parts["dbname"],
        user=parts["user"],
        sslmode="disable",
    )


def _failed_row(db: psycopg.Connection, key: str, message: str, *, retry_count: int = 0) -> int:
    """A control row whose latest attempt failed with ``message`` (as record_failure leaves it)."""
    config_id = db.execute(
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " db_config_value, retry_count, last_status, last_message)"
        " VALUES (%s, 'public', %s, 'lake', 'raw', %s, 'postgresql', %s, %s, 'Failed', %s)"
        " RETURNING config_id",
        (key, key, key, Jsonb({"host": "db1.internal", "user": "loader"}), retry_count, message),
    ).fetchone()["config_id"]
    metadata_id = db.execute(
        "INSERT INTO historical_metadata (config_id, control_key, status, message, ended_at)"
        " VALUES (%s, %s, 'Failed', %s, now()) RETURNING metadata_id",
        (config_id, key, message),
    ).fetchone()["metadata_id"]
    db.execute(
        "UPDATE table_control SET last_metadata_id = %s WHERE config_id = %s",
        (metadata_id, config_id),
    )
    return metadata_id


def _tick(instance: dg.DagsterInstance, control_db: str):
    context = dg.build_sensor_context(
        instance=instance, resources={"lakebase": _lakebase(control_db)}
    )
    return build_failed_monitor(Settings())(context)


def _analyse(instance: dg.DagsterInstance, control_db: str, key: str, run_config: dict) -> dict:
    """Run the retry asset for ``key`` as the sensor's run would; its materialization metadata."""
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = dg.materialize(
        [dataloader_retry_analysis],
        instance=instance,
        partition_key=key,
        run_config=run_config,
        resources={
            "lakebase": _lakebase(control_db),
            "pipes_databricks": PipesDatabricksResource(execution="local"),
        },
    )
    [materialization] = result.asset_materializations_for_node(dataloader_retry_analysis.op.name)
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
    metadata_id = _failed_row(db, "orders", "server closed the connection unexpectedly")

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
    metadata_id = _failed_row(db, "refunds", 'relation "public.refunds" does not exist')

    [request] = _tick(instance, control_db).run_requests
    metadata = _analyse(instance, control_db, "refunds", request.run_config)

    assert (metadata["decision"], metadata["decider"]) == ("Requires Review", "gpt-standin")
    assert metadata["confidence"] == pytest.approx(0.9)
    assert metadata["reason"] == "The table was dropped at source."
    row = _row(db, "refunds")
    assert (row["last_status"], row["needs_review"], row["retry_count"]) == ("Failed", True, 0)
    assert row["last_message"] == (
        "[AI Analysis - Requires Review] The table was dropped at source."
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
    _failed_row(db, "items", "Connection reset by peer")

    [request] = _tick(instance, control_db).run_requests
    metadata = _analyse(instance, control_db, "items", request.run_config)

    assert metadata["decision"] == "Requires Review"
    assert _row(db, "items")["needs_review"] is True


def test_exhausted_rows_go_to_review_by_rule_and_in_flight_rows_are_left_alone(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    _failed_row(db, "flaky", "Connection refused", retry_count=3)
    _failed_row(db, "busy", "Connection refused")
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
