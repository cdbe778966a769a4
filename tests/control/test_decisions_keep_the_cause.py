"""Retry decisions keep the cause, and our own ``Cancelled - ...`` messages are decided by rule.

Issue 16, items 9 and 10, on the real control database:
- after a decision the control row still says what broke: the spec's marker, the reason, who
  decided, then the original error (bounded); a second decision never nests the first;
- a person's terminate is not analysed at all: failed_monitor's claim leaves it Failed with its
  message, no review, no retry;
- the long-queued monitor's timeout is retried by rule, the long-running monitor's timeout goes to
  review by rule; neither asks a model.
"""

from __future__ import annotations

import psycopg
import pytest
from helpers import SOME_SOURCE, claim_due, fail_stuck_queued, make_row
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.control.retry_state import CAUSE_CHARS
from dagsters.control.rows import ControlRow, fetch_one
from dagsters.policy.retry_analysis import apply_decision, decide_without_asking
from dagsters.settings import RetryPolicy
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import KIND_CANCELLED, Decision
from databricks_scripts.retry.classifier import classify_error

MISSING = 'relation "erp.invoices_2019" does not exist'


@pytest.fixture
def client(control_db):
    with LakebaseClient(control_db, max_size=2) as c:
        yield c


def _row(db: psycopg.Connection, config_id: int) -> ControlRow:
    row = fetch_one(
        db, ControlRow, "SELECT * FROM table_control WHERE config_id = %s", (config_id,)
    )
    assert row is not None
    return row


def _failed(
    client: LakebaseClient,
    db: psycopg.Connection,
    key: str,
    message: str,
    kind: str | None = None,
) -> ControlRow:
    """A row claimed, started and failed with ``message`` (and the failure's ``kind``, None for a
    foreign error) through the client, as a load does."""
    db.execute(
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " db_config_value, next_load_date_time) VALUES (%s, 'erp', %s, 'lake', 'raw', %s,"
        " 'postgresql', %s, now() - interval '1 minute')",
        (key, key, key, Jsonb(SOME_SOURCE)),
    )
    [claimed] = [r for r in claim_due(client, 50) if r.control_key == key]
    cid, mid = claimed.config_id, claimed.metadata_id
    assert client.start_load(cid, mid, dagster_run_id="run-1", dagster_run_url="u/run-1")
    assert client.record_failure(cid, mid, message, failure_kind=kind)
    return _row(db, cid)


@pytest.fixture
def db(control_db):
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_review_keeps_marker_decider_and_the_missing_tables_name(client, db):
    row = _failed(client, db, "erp.invoices", MISSING)
    rules = classify_error(row.last_message)
    decision = Decision(rules.decision, 0.95, rules.reason, "rules")

    assert apply_decision(client, row, decision) == "review"

    message = _row(db, row.config_id).last_message
    assert message.startswith("[AI Analysis - Requires Review] Permanent missing object fault")
    assert "(decided by rules)" in message
    assert message.endswith(f"| Cause: {MISSING}")


def test_retry_keeps_the_cause_and_a_later_decision_does_not_nest_it(client, db):
    row = _failed(client, db, "erp.orders", "could not connect to server: Connection refused")
    decision = Decision("Retry Recommended", 0.7, "Transient network fault.", "gpt-standin")
    assert apply_decision(client, row, decision) == "retried"
    after = _row(db, row.config_id)
    assert after.last_message == (
        "[AI Analysis - Retry Recommended] Transient network fault. (decided by gpt-standin)"
        " | Cause: could not connect to server: Connection refused"
    )
    # The same failed attempt analysed twice (a stale analysis): the cause is not repeated.
    db.execute(
        "UPDATE table_control SET last_status = 'Failed' WHERE config_id = %s",
        (row.config_id,),
    )
    again = _row(db, row.config_id)
    assert apply_decision(client, again, Decision.review("Still down.", decider="rules"))
    message = _row(db, row.config_id).last_message
    assert message.count("| Cause:") == 1
    assert message.endswith("| Cause: could not connect to server: Connection refused")


def test_a_long_cause_is_bounded(client, db):
    trace = "java.sql.SQLException: boom\n" + "\tat com.example.Frame.call(Frame.java:1)\n" * 400
    row = _failed(client, db, "erp.long", trace)
    assert apply_decision(client, row, Decision.review("Unrecognised error.", decider="rules"))
    message = _row(db, row.config_id).last_message
    cause = message.split("| Cause: ", 1)[1]
    assert cause.startswith("java.sql.SQLException: boom")
    assert len(cause) == CAUSE_CHARS and cause.endswith("…")


def test_a_persons_terminate_is_not_analysed_and_stays_failed(client, db):
    terminated = "Cancelled - Dagster run 6b1f0c2e-aaaa-bbbb-cccc-1234567890ab was terminated"
    row = _failed(client, db, "erp.stopped", terminated, KIND_CANCELLED)
    other = _failed(client, db, "erp.broken", MISSING)

    claimed = client.claim_failed_for_analysis(50, 2**31 - 1)

    assert [r.control_key for r in claimed] == ["erp.broken"]
    after = _row(db, row.config_id)
    assert (after.last_status, after.needs_review, after.retry_count) == (
        "Failed",
        False,
        0,
    )
    assert after.last_message == terminated
    assert after.retry_analysis_requested_at is None
    assert other.config_id != row.config_id
    # ... and the script's rules, asked anyway (a person launched the analysis), never retry it.
    assert classify_error(terminated).decision == "Requires Review"
    assert classify_error(terminated).rule == "cancelled_by_person"


def _stuck(db: psycopg.Connection, config_id: int, status: str) -> None:
    db.execute(
        "UPDATE table_control SET last_status_date_time = now() - interval '2 hours',"
        " last_load_date_time = now() - interval '4 hours' WHERE config_id = %s",
        (config_id,),
    )


@pytest.mark.parametrize(
    ("monitor", "decision", "retried"),
    [("queued", "Retry Recommended", True), ("running", "Requires Review", False)],
)
def test_the_monitors_timeouts_are_decided_by_rule(client, db, monitor, decision, retried):
    db.execute(
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " db_config_value) VALUES ('erp.slow', 'erp', 'slow', 'lake', 'raw', 'slow',"
        " 'postgresql', %s)",
        (Jsonb(SOME_SOURCE),),
    )
    [claimed] = claim_due(client, 5)
    cid, mid = claimed.config_id, claimed.metadata_id
    if monitor == "queued":
        _stuck(db, cid, "Queued")
        assert [r.config_id for r in fail_stuck_queued(client, 60)] == [cid]
    else:
        assert client.start_load(cid, mid, dagster_run_id="r", dagster_run_url="u/r")
        _stuck(db, cid, "In Progress")
        assert client.fail_stuck_running(cid, mid, 180)
    [failed] = client.claim_failed_for_analysis(5, 2**31 - 1)

    ruled = decide_without_asking(failed, RetryPolicy(max_retries=3))

    assert ruled is not None, "decided by the documented rule, no model asked"
    assert (ruled.decision, ruled.decider, ruled.confidence) == (decision, "rules", 1.0)
    assert apply_decision(client, failed, ruled) == ("retried" if retried else "review")
    after = _row(db, cid)
    assert after.last_message.endswith(f"| Cause: {failed.last_message}")
    assert after.needs_review is (not retried)
    hist = db.execute(
        "SELECT retry_decision, retry_decider FROM historical_metadata WHERE metadata_id = %s",
        (mid,),
    ).fetchone()
    assert (hist["retry_decision"], hist["retry_decider"]) == (decision, "rules")


def test_a_timeout_after_the_last_retry_still_goes_to_review():
    row = make_row(retry_count=3, last_message="Cancelled - stuck in queue for >60 minutes")
    ruled = decide_without_asking(row, RetryPolicy(max_retries=3))
    assert ruled is not None and ruled.decision == "Requires Review"


def test_the_kept_cause_never_keeps_a_secret(client, db):
    # A message written by something that did not redact (an older version, a person with psql).
    row = _failed(client, db, "erp.leaky", "x")
    db.execute(
        "UPDATE table_control SET last_message = 'login with Hunter2-Secret-Value rejected'"
        " WHERE config_id = %s",
        (row.config_id,),
    )
    row = _row(db, row.config_id)
    decision = Decision.review("Permanent authentication fault.", decider="rules")

    assert apply_decision(client, row, decision, secrets=["Hunter2-Secret-Value"]) == "review"

    message = _row(db, row.config_id).last_message
    assert "Hunter2-Secret-Value" not in message
    assert "| Cause: login with " in message and "rejected" in message
