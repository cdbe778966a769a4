"""Retry decisions on the real control database, without Dagster: which failures are decided by rule
(decide_without_asking), what the analysis request carries (build_analysis_request), and how a
decision moves the control row to its next state, once (apply_decision), including the retry limit
from DATALOADER_MAX_RETRIES.

The classifier's rules have test_retry_classifier.py, the model client test_retry_advisor.py, the
script under Pipes test_retry_script.py, the sensor-to-asset flow test_retry_end_to_end.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from helpers import claim_due, read_failed_row
from psycopg.rows import dict_row

from dagsters.policy.retry_analysis import (
    LOST,
    RETRIED,
    REVIEW,
    apply_decision,
    build_analysis_request,
    decide_without_asking,
)
from dagsters.settings import RetryPolicy, load_settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import Decision
from databricks_scripts.retry.advisor import AdvisorConfig, decide_retry

SPEC = RetryPolicy()  # the spec's 3 retries


def _advise(request: dict) -> Decision:
    """The retry script's rules (no model), as the Decision the asset applies."""
    answer = decide_retry(request, AdvisorConfig())
    return answer if isinstance(answer, Decision) else Decision.from_mapping(answer)


def _decision(kind: str, reason: str = "r", confidence: float = 0.9) -> Decision:
    return Decision(kind, confidence, reason, "m")


def _add_row(control_db: str, key: str, *, retry_count: int = 0) -> int:
    with psycopg.connect(control_db, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
            " destination_catalog, destination_schema_name, destination_table_name, db_type,"
            " db_config_value, db_kv_scope, retry_count, next_load_date_time)"
            " VALUES (%s, 'public', %s, 'main', 'bronze', %s, 'postgresql',"
            ' \'{"host": "pg-prod", "user": "loader", "password_secret": "pg_pw"}\','
            " 'jdbc', %s, now() - interval '1 minute') RETURNING config_id",
            (key, key, key, retry_count),
        ).fetchone()[0]


def _fail_attempt(client: LakebaseClient, control_db: str, key: str, message: str) -> dict:
    """Claim, start and fail one load of ``key`` the way the sensor and asset do."""
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE table_control SET next_load_date_time = now() - interval '1 minute'"
            " WHERE control_key = %s",
            (key,),
        )
    [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    config_id, metadata_id = claimed.config_id, claimed.metadata_id
    assert client.start_load(
        config_id, metadata_id, dagster_run_id="run-1", dagster_run_url="http://dagster/runs/1"
    )
    assert client.record_failure(config_id, metadata_id, message)
    row = client.get_table_details(key)
    assert row is not None and row.last_status == "Failed"
    return row


def _state(control_db: str, config_id: int) -> dict[str, Any]:
    with psycopg.connect(control_db, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT last_status, retry_count, needs_review, last_message,"
            " next_load_date_time - now() AS wait, retry_analysis_requested_at"
            " FROM table_control WHERE config_id = %s",
            (config_id,),
        ).fetchone()


def _history(control_db: str, metadata_id: int) -> dict[str, Any]:
    with psycopg.connect(control_db, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT retry_decision, retry_confidence, retry_reason, retry_decider,"
            " retry_analysed_at FROM historical_metadata WHERE metadata_id = %s",
            (metadata_id,),
        ).fetchone()


def test_transient_failure_is_retried_after_a_backoff(client: LakebaseClient, control_db: str):
    config_id = _add_row(control_db, "sales.orders")
    row = _fail_attempt(client, control_db, "sales.orders", "ERROR:  deadlock detected")
    history = client.get_recent_history(config_id)

    assert decide_without_asking(row, SPEC) is None
    request = build_analysis_request(row, history)
    assert request["error_message"] == "ERROR:  deadlock detected"
    assert request["recent_attempts"][0]["message"] == "ERROR:  deadlock detected"
    assert request["metadata_id"] == row.last_metadata_id
    decision = _advise(request)  # no model: the rules decide
    outcome = apply_decision(client, row, decision)

    assert outcome == RETRIED
    state = _state(control_db, config_id)
    assert state["last_status"] is None and state["retry_count"] == 1
    assert state["last_message"].startswith("[AI Analysis - Retry Recommended] Transient lock")
    assert state["wait"].total_seconds() > 4 * 60  # backoff: not due on the next sensor tick
    stored = _history(control_db, row.last_metadata_id)
    assert stored["retry_decision"] == "Retry Recommended"
    assert stored["retry_decider"] == "rules"
    assert stored["retry_confidence"] == pytest.approx(decision.confidence)
    assert stored["retry_analysed_at"] is not None


def test_flapping_source_backs_off_5_15_45_minutes_then_goes_to_review(
    client: LakebaseClient, control_db: str
):
    # The row itself, not just retry_backoff(): each retry moves next_load_date_time further out,
    # so a source that keeps dropping connections is not hammered, and the fourth failure stops.
    config_id = _add_row(control_db, "sales.flapping")
    waits = []
    for _ in range(3):
        row = _fail_attempt(client, control_db, "sales.flapping", "Connection reset by peer")
        assert decide_without_asking(row, SPEC) is None
        request = build_analysis_request(row, client.get_recent_history(config_id))
        assert apply_decision(client, row, _advise(request)) == RETRIED
        waits.append(_state(control_db, config_id)["wait"])

    for wait, minutes in zip(waits, (5, 15, 45), strict=True):
        assert timedelta(minutes=minutes - 1) < wait <= timedelta(minutes=minutes)
    row = _fail_attempt(client, control_db, "sales.flapping", "Connection reset by peer")
    assert row.retry_count == 3
    decision = decide_without_asking(row, SPEC)
    assert decision is not None and apply_decision(client, row, decision) == REVIEW
    assert client.claim_failed_for_analysis(10) == []


def test_permanent_failure_goes_to_review_and_stays_out_of_the_loop(
    client: LakebaseClient, control_db: str
):
    config_id = _add_row(control_db, "sales.customers")
    row = _fail_attempt(
        client, control_db, "sales.customers", 'ERROR:  relation "customers" does not exist'
    )
    decision = _advise(build_analysis_request(row, []))

    assert apply_decision(client, row, decision) == REVIEW

    state = _state(control_db, config_id)
    assert (state["last_status"], state["needs_review"], state["retry_count"]) == (
        "Failed",
        True,
        0,
    )
    assert state["last_message"].startswith("[AI Analysis - Requires Review] Permanent missing")
    assert client.claim_failed_for_analysis(10) == []  # failed_monitor will not pick it up again
    assert claim_due(client, 10) == []  # nor will master_sensor


def test_exhausted_retries_go_to_review_without_asking(client: LakebaseClient, control_db: str):
    config_id = _add_row(control_db, "sales.flaky", retry_count=3)
    row = _fail_attempt(client, control_db, "sales.flaky", "Connection reset by peer")

    decision = decide_without_asking(row, SPEC)

    assert decision is not None and decision.decision == "Requires Review"
    assert apply_decision(client, row, decision) == REVIEW
    assert _state(control_db, config_id)["needs_review"] is True
    assert "3 automatic retries" in _history(control_db, row.last_metadata_id)["retry_reason"]


def test_a_second_decision_for_the_same_attempt_loses(client: LakebaseClient, control_db: str):
    config_id = _add_row(control_db, "sales.items")
    row = _fail_attempt(client, control_db, "sales.items", "Connection refused")
    retry = _decision("Retry Recommended")
    review = _decision("Requires Review")

    assert apply_decision(client, row, retry) == RETRIED
    assert apply_decision(client, row, review) == LOST
    assert apply_decision(client, row, retry) == LOST
    assert _state(control_db, config_id)["retry_count"] == 1


def test_decision_for_an_older_attempt_loses(client: LakebaseClient, control_db: str):
    _add_row(control_db, "sales.refunds")
    stale = _fail_attempt(client, control_db, "sales.refunds", "Connection refused")
    client.queue_manual_load("sales.refunds")  # a person reran it meanwhile
    latest = client.get_table_details("sales.refunds")
    client.start_load(
        latest.config_id,
        latest.last_metadata_id,
        dagster_run_id="run-2",
        dagster_run_url="http://dagster/runs/2",
    )
    client.record_failure(latest.config_id, latest.last_metadata_id, "Connection refused")
    retry = _decision("Retry Recommended")

    assert apply_decision(client, stale, retry) == LOST  # guarded by last_metadata_id
    assert _history(control_db, stale.last_metadata_id)["retry_decision"] is None


def test_unknown_decision_and_secret_in_reason_are_made_safe(
    client: LakebaseClient, control_db: str
):
    config_id = _add_row(control_db, "sales.notes")
    row = _fail_attempt(client, control_db, "sales.notes", "weird")
    decision = Decision.from_mapping(
        {
            "decision": "Retry maybe",
            "confidence": 7,
            "reason": "dsn postgresql://loader:Hunter2Pw@pg-prod/db failed",
            "decider": "m",
        }
    )

    assert apply_decision(client, row, decision) == REVIEW

    stored = _history(control_db, row.last_metadata_id)
    assert stored["retry_decision"] == "Requires Review"
    assert stored["retry_confidence"] == 1.0
    assert "Hunter2Pw" not in stored["retry_reason"]
    assert "Hunter2Pw" not in _state(control_db, config_id)["last_message"]


def test_request_carries_recent_attempts_but_no_connection_details(
    client: LakebaseClient, control_db: str
):
    config_id = _add_row(control_db, "sales.stock")
    first = _fail_attempt(client, control_db, "sales.stock", "Connection refused")
    apply_decision(
        client,
        first,
        _decision("Retry Recommended", "blip"),
    )
    row = _fail_attempt(client, control_db, "sales.stock", "password=Sw0rdfish connection reset")

    request = build_analysis_request(row, client.get_recent_history(config_id))

    assert [a["message"] for a in request["recent_attempts"]] == [
        "password=*** connection reset",
        "Connection refused",
    ]
    assert request["recent_attempts"][1]["retry_decision"] == "Retry Recommended"
    assert request["retry_count"] == 1
    text = repr(request)
    assert "Sw0rdfish" not in text and "pg-prod" not in text and "pg_pw" not in text


def test_max_retries_5_gives_five_retries_and_the_sixth_failure_goes_to_review(
    client: LakebaseClient, control_db: str
):
    # The bug: DATALOADER_MAX_RETRIES=5 was capped at 3 by a constant of this module.
    settings = load_settings({"DATALOADER_MAX_RETRIES": "5"})
    config_id = _add_row(control_db, "sales.flaky")
    for attempt in range(1, 6):
        row = _fail_attempt(client, control_db, "sales.flaky", "connection reset by peer")
        assert decide_without_asking(row, settings.retry) is None, f"failure {attempt}"
        request = build_analysis_request(row, client.get_recent_history(config_id), settings)
        assert request["max_retries"] == 5
        assert apply_decision(client, row, _advise(request)) == RETRIED
        assert _state(control_db, config_id)["retry_count"] == attempt

    row = _fail_attempt(client, control_db, "sales.flaky", "connection reset by peer")
    decision = decide_without_asking(row, settings.retry)
    assert decision is not None and decision.decider == "rules"
    assert "5 of 5" in decision.reason
    assert apply_decision(client, row, decision) == REVIEW
    state = _state(control_db, config_id)
    assert state["needs_review"] is True and state["retry_count"] == 5


def test_request_is_json_and_holds_no_connection_details() -> None:
    request = build_analysis_request(read_failed_row("boom"), [])
    text = json.dumps(request)  # Pipes extras must serialise
    assert "pg-prod" not in text and "loader" not in text and "jdbc" not in text
