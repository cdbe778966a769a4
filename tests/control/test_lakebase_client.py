"""LakebaseClient state machine on a real PostgreSQL: every transition, every refusal, atomic claims."""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import claim_due, control_row, fail_stuck_queued, failed_under_analysis
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.control.rows import (
    ALLOWED_FROM,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    STATUSES,
    SUCCEEDED,
)
from dagsters.policy.schedule import next_load_time
from dagsters.utils.lakebase_client import (
    LakebaseClient,
    LakebaseError,
    LoadAlreadyActive,
    UnknownControlKey,
)
from databricks_scripts.contract import Decision, LoadReport

PAST = "now() - interval '1 minute'"


@pytest.fixture
def client(control_db):
    with LakebaseClient(control_db, max_size=4) as c:
        yield c


def add_row(conninfo: str, key: str, **cols: Any) -> int:
    values: dict[str, Any] = {
        "control_key": key,
        "source_schema_name": "public",
        "source_table_name": key.replace(".", "_"),
        "destination_catalog": "lake",
        "destination_schema_name": "bronze",
        "destination_table_name": key.replace(".", "_"),
        "db_type": "postgresql",
        "db_config_value": Jsonb({"host": "h", "port": 5432, "database": "d", "user": "u"}),
        **cols,
    }
    past = values.pop("next_in_past", True)
    stmt = sql.SQL("INSERT INTO table_control ({}) VALUES ({}) RETURNING config_id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    with psycopg.connect(conninfo) as conn:
        config_id = conn.execute(stmt, list(values.values())).fetchone()[0]
        if past and "next_load_date_time" not in cols:
            conn.execute(
                f"UPDATE table_control SET next_load_date_time = {PAST} WHERE config_id = %s",
                (config_id,),
            )
    return config_id


def set_cols(conninfo: str, config_id: int, **cols: Any) -> None:
    stmt = sql.SQL("UPDATE table_control SET {} WHERE config_id = {}").format(
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder()) for k in cols
        ),
        sql.Placeholder(),
    )
    with psycopg.connect(conninfo) as conn:
        conn.execute(stmt, [*cols.values(), config_id])


def row(conninfo: str, config_id: int) -> dict:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT *, now() AS db_now FROM table_control WHERE config_id = %s", (config_id,)
        ).fetchone()


def history(conninfo: str, metadata_id: int) -> dict:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM historical_metadata WHERE metadata_id = %s", (metadata_id,)
        ).fetchone()


def claim_one(client: LakebaseClient, config_id: int) -> int:
    claimed = [r for r in claim_due(client, 100) if r.config_id == config_id]
    assert len(claimed) == 1
    return claimed[0].metadata_id


def run_one(client: LakebaseClient, config_id: int) -> int:
    metadata_id = claim_one(client, config_id)
    assert client.start_load(config_id, metadata_id, dagster_run_id="r1", dagster_run_url="u/r1")
    return metadata_id


# -- claiming ---------------------------------------------------------------------------------------


def test_claim_takes_only_due_rows_and_writes_history(client, control_db):
    due = add_row(control_db, "a.due", incremental_value="41", load_strategy="full")
    retry = add_row(control_db, "a.retry", retry_count=2)
    after_success = add_row(control_db, "a.succeeded", last_status=SUCCEEDED)
    add_row(control_db, "a.future", next_in_past=False, next_load_date_time=None)
    add_row(control_db, "a.tomorrow", next_load_date_time="2999-01-01T00:00:00Z")
    add_row(control_db, "a.inactive", is_active=False)
    add_row(control_db, "a.queued", last_status=QUEUED)
    add_row(control_db, "a.running", last_status=IN_PROGRESS)
    add_row(control_db, "a.review", last_status=FAILED, needs_review=True)

    assert {r.config_id for r in client.get_control_tables()} == {due, retry, after_success}
    claimed = claim_due(client, 10)
    assert {r.config_id for r in claimed} == {due, retry, after_success}
    for r in claimed:
        assert r.last_status == QUEUED and r.last_metadata_id == r.metadata_id
        assert r.last_dagster_run is None and r.retry_analysis_requested_at is None
        h = history(control_db, r.metadata_id)
        assert h["status"] == QUEUED and h["config_id"] == r.config_id
        assert h["triggered_by"] == ("retry" if r.config_id == retry else "sensor")
    assert history(control_db, row(control_db, due)["last_metadata_id"])["watermark_before"] == "41"
    assert claim_due(client, 10) == []
    assert client.get_control_tables() == []


def test_claim_respects_batch_size_and_due_order(client, control_db):
    ids = [
        add_row(control_db, f"b.{i}", next_load_date_time=f"2020-01-0{i + 1}T00:00:00Z")
        for i in range(5)
    ]
    first = claim_due(client, 2)
    assert [r.config_id for r in first] == ids[:2]
    assert claim_due(client, 0) == []
    assert [r.config_id for r in claim_due(client, 10)] == ids[2:]


def test_eight_threads_claim_each_of_1000_rows_exactly_once(control_db):
    with psycopg.connect(control_db) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, next_load_date_time)"
            " SELECT 'c.' || i, 't', 'lake', 'bronze', 't' || i, 'postgresql', now() - interval '1s'"
            " FROM generate_series(1, 1000) AS i"
        )
    with LakebaseClient(control_db, min_size=8, max_size=8) as shared:

        def worker(_: int) -> list[int]:
            got: list[int] = []
            while batch := claim_due(shared, 7):
                got.extend(r.config_id for r in batch)
            return got

        with ThreadPoolExecutor(max_workers=8) as pool:
            per_thread = list(pool.map(worker, range(8)))
    claimed = [cid for got in per_thread for cid in got]
    assert len(claimed) == 1000 and len(set(claimed)) == 1000
    with psycopg.connect(control_db) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT config_id) FROM historical_metadata"
        ).fetchone() == (1000, 1000)
        assert conn.execute(
            "SELECT count(*) FROM table_control WHERE last_status = 'Queued'"
            " AND last_metadata_id IS NOT NULL"
        ).fetchone() == (1000,)


def test_manual_load_queues_with_ui_history_and_refuses_active_or_unknown(client, control_db):
    cid = add_row(
        control_db,
        "m.one",
        is_active=False,
        last_status=FAILED,
        needs_review=True,
        next_in_past=False,
        next_load_date_time=None,
    )
    queued = client.queue_manual_load("m.one")
    assert queued.config_id == cid and queued.last_status == QUEUED
    assert queued.needs_review is False and row(control_db, cid)["needs_review"] is False
    assert history(control_db, queued.metadata_id)["triggered_by"] == "ui"
    with pytest.raises(LoadAlreadyActive, match="m.one is already Queued"):
        client.queue_manual_load("m.one")
    client.start_load(cid, queued.metadata_id, dagster_run_id="r", dagster_run_url="u")
    with pytest.raises(LoadAlreadyActive, match="In Progress"):
        client.queue_manual_load("m.one")
    with pytest.raises(UnknownControlKey, match="no.such"):
        client.queue_manual_load("no.such")


# -- the generic guarded transition: every pair of states ---------------------------------------

ALL_PAIRS = [(a, b) for a in STATUSES for b in STATUSES]


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_update_control_status_allows_exactly_the_lifecycle(client, control_db, current, target):
    cid = add_row(control_db, "s.row", last_status=current)
    won = client.update_control_status(cid, target, "why")
    allowed = current in ALLOWED_FROM[target]
    assert won is allowed
    after = row(control_db, cid)
    assert after["last_status"] == (target if allowed else current)
    assert after["last_message"] == ("why" if allowed else None)


def test_update_control_status_side_effects(client, control_db):
    cid = add_row(control_db, "s.fx", last_status=QUEUED, schedule_interval=timedelta(hours=1))
    assert client.update_control_status(cid, IN_PROGRESS)
    r = row(control_db, cid)
    assert r["last_load_date_time"] == r["last_status_date_time"]
    assert client.update_control_status(cid, SUCCEEDED)
    r = row(control_db, cid)
    assert r["next_load_date_time"] - r["last_status_date_time"] == timedelta(hours=1)


def test_update_control_status_expected_status_narrows_the_guard(client, control_db):
    cid = add_row(control_db, "s.narrow", last_status=SUCCEEDED)
    assert client.update_control_status(cid, QUEUED, expected_status=FAILED) is False
    assert client.update_control_status(cid, QUEUED, expected_status=(None, SUCCEEDED)) is True
    with pytest.raises(ValueError, match="not allowed"):
        client.update_control_status(cid, SUCCEEDED, expected_status=QUEUED)
    with pytest.raises(ValueError, match="unknown status"):
        client.update_control_status(cid, "Done")


# -- the load lifecycle -------------------------------------------------------------------------------


def test_start_load_is_guarded_by_state_and_attempt(client, control_db):
    cid = add_row(control_db, "l.start")
    assert client.start_load(cid, 1, dagster_run_id="r", dagster_run_url="u") is False  # NULL
    metadata_id = claim_one(client, cid)
    assert not client.start_load(cid, metadata_id + 99, dagster_run_id="r", dagster_run_url="u")
    assert client.start_load(cid, metadata_id, dagster_run_id="run-1", dagster_run_url="http://d/1")
    assert not client.start_load(cid, metadata_id, dagster_run_id="r", dagster_run_url="u")
    r, h = row(control_db, cid), history(control_db, metadata_id)
    assert r["last_status"] == IN_PROGRESS and r["last_dagster_run"] == "http://d/1"
    assert r["last_load_date_time"] is not None
    assert h["status"] == IN_PROGRESS and h["started_at"] is not None
    assert (h["dagster_run_id"], h["dagster_run_url"]) == ("run-1", "http://d/1")


def test_success_advances_watermark_and_interval_schedule_atomically(client, control_db):
    cid = add_row(
        control_db,
        "l.ok",
        load_strategy="incremental",
        incremental_column="updated_at",
        incremental_value="2024-01-01 00:00:00+00",
        schedule_interval=timedelta(minutes=7),
        retry_count=2,
        force_full_reload=True,
    )
    metadata_id = run_one(client, cid)
    assert client.record_success(
        cid,
        metadata_id,
        LoadReport(rows_read=10, rows_written=9, watermark_after="2024-02-01 00:00:00.123456+00"),
        databricks_run_url="http://dbx/run/5",
    )
    r, h = row(control_db, cid), history(control_db, metadata_id)
    assert r["last_status"] == SUCCEEDED
    assert r["incremental_value"] == "2024-02-01 00:00:00.123456+00"
    assert r["next_load_date_time"] - r["last_status_date_time"] == timedelta(minutes=7)
    assert (r["retry_count"], r["force_full_reload"]) == (0, False)
    assert r["last_databricks_run"] == "http://dbx/run/5" and r["last_message"] == "Loaded 9 rows"
    assert (h["status"], h["rows_read"], h["rows_written"]) == (SUCCEEDED, 10, 9)
    assert h["watermark_before"] == "2024-01-01 00:00:00+00"
    assert h["watermark_after"] == "2024-02-01 00:00:00.123456+00"
    assert h["ended_at"] is not None and h["databricks_run_url"] == "http://dbx/run/5"
    # Not In Progress any more: a second write-back loses.
    assert not client.record_success(
        cid, metadata_id, LoadReport(rows_read=1, rows_written=1, watermark_after="x")
    )
    assert row(control_db, cid)["incremental_value"] == "2024-02-01 00:00:00.123456+00"


def test_success_uses_the_rows_cron_and_time_zone(client, control_db):
    cid = add_row(
        control_db, "l.cron", schedule_cron="30 2 * * *", schedule_timezone="America/New_York"
    )
    metadata_id = run_one(client, cid)
    assert client.record_success(
        cid, metadata_id, LoadReport(rows_read=0, rows_written=0, watermark_after=None)
    )
    r = row(control_db, cid)
    expected = next_load_time(
        r["last_status_date_time"], cron="30 2 * * *", timezone="America/New_York"
    )
    assert r["next_load_date_time"] == expected > r["last_status_date_time"]


def test_success_with_a_schema_change_asks_for_the_staging_model_again(db, client, control_db):
    for key in ("same", "changed"):
        add_row(control_db, key, staging_model_processed=True)
    for claimed in claim_due(client, 10):
        config_id, metadata_id = claimed.config_id, claimed.metadata_id
        assert client.start_load(config_id, metadata_id, dagster_run_id="r", dagster_run_url="u")
        assert client.record_success(
            config_id,
            metadata_id,
            LoadReport(rows_read=1, rows_written=1, watermark_after=None),
            schema_changed=claimed.control_key == "changed",
        )
    assert control_row(db, "same")["staging_model_processed"] is True
    assert control_row(db, "changed")["staging_model_processed"] is False
    assert [r.control_key for r in client.get_unprocessed_landing_tables()] == ["changed"]


def test_success_without_schedule_loads_once_and_keeps_watermark(client, control_db):
    cid = add_row(control_db, "l.once", incremental_value="7")
    metadata_id = run_one(client, cid)
    assert client.record_success(
        cid, metadata_id, LoadReport(rows_read=0, rows_written=0, watermark_after=None)
    )
    r = row(control_db, cid)
    assert r["next_load_date_time"] is None and r["incremental_value"] == "7"
    assert claim_due(client, 10) == []


def test_success_write_back_is_all_or_nothing(client, control_db):
    cid = add_row(
        control_db, "l.atomic", incremental_value="1", schedule_interval=timedelta(hours=1)
    )
    metadata_id = run_one(client, cid)
    before = row(control_db, cid)
    with psycopg.connect(control_db) as conn:  # the history write will fail half-way
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'history is read-only today'; END $$;"
            "CREATE TRIGGER refuse BEFORE UPDATE ON historical_metadata"
            " FOR EACH ROW EXECUTE FUNCTION refuse();"
        )
    with pytest.raises(LakebaseError, match="history is read-only today"):
        client.record_success(
            cid, metadata_id, LoadReport(rows_read=1, rows_written=1, watermark_after="2")
        )
    after = row(control_db, cid)
    for column in ("last_status", "incremental_value", "next_load_date_time", "updated_at"):
        assert after[column] == before[column]


@pytest.mark.parametrize("started", [False, True])
def test_failure_from_queued_or_running_is_redacted_and_advances_schedule(
    client, control_db, started
):
    cid = add_row(control_db, "l.fail", schedule_interval=timedelta(minutes=30))
    metadata_id = run_one(client, cid) if started else claim_one(client, cid)
    message = "connect failed: password=hunter2 token: dapi0123456789abcdef0123"
    assert not client.record_failure(cid, metadata_id + 1, message)  # another attempt
    assert client.record_failure(cid, metadata_id, message, databricks_run_url="http://dbx/9")
    r, h = row(control_db, cid), history(control_db, metadata_id)
    assert r["last_status"] == FAILED and h["status"] == FAILED and h["ended_at"] is not None
    for text in (r["last_message"], h["message"]):
        assert "hunter2" not in text and "dapi0123" not in text and "connect failed" in text
    assert r["next_load_date_time"] - r["last_status_date_time"] == timedelta(minutes=30)
    assert not client.record_failure(cid, metadata_id, "again")  # already Failed


def test_failure_refused_after_success(client, control_db):
    cid = add_row(control_db, "l.late")
    metadata_id = run_one(client, cid)
    client.record_success(
        cid, metadata_id, LoadReport(rows_read=1, rows_written=1, watermark_after=None)
    )
    assert client.record_failure(cid, metadata_id, "late failure") is False
    assert row(control_db, cid)["last_status"] == SUCCEEDED


# -- retry analysis ---------------------------------------------------------------------------------


def failed_row(client: LakebaseClient, control_db: str, key: str, **cols: Any) -> tuple[int, int]:
    cid = add_row(control_db, key, **cols)
    metadata_id = run_one(client, cid)
    assert client.record_failure(cid, metadata_id, "network blip")
    return cid, metadata_id


def test_failed_rows_are_claimed_for_analysis_once(client, control_db):
    cid, _ = failed_row(client, control_db, "r.claim")
    exhausted, _ = failed_row(client, control_db, "r.exhausted")
    set_cols(control_db, exhausted, retry_count=3)
    claimed = client.claim_failed_for_analysis(10)
    assert [r.config_id for r in claimed] == [cid]
    assert claimed[0].retry_analysis_requested_at is not None
    assert client.claim_failed_for_analysis(10) == []


def test_claim_takes_back_analyses_older_than_the_timeout_only(db, client):
    failed_under_analysis(db, "new", None)
    failed_under_analysis(db, "stale", 61)
    failed_under_analysis(db, "running", 10)
    failed_under_analysis(db, "reviewed", 600, needs_review=True)
    stale_succeeded, _ = failed_under_analysis(db, "loaded", 600)
    db.execute(
        "UPDATE table_control SET last_status = 'Succeeded' WHERE config_id = %s",
        (stale_succeeded,),
    )
    assert [r.control_key for r in client.claim_failed_for_analysis(10, 3, stale_after_minutes=None)] == ["new"]  # fmt: skip
    claimed = {r.control_key: r for r in client.claim_failed_for_analysis(10, 3)}
    assert set(claimed) == {"stale"}
    stale = claimed["stale"]
    assert stale.previous_analysis_requested_at < stale.retry_analysis_requested_at
    assert (
        control_row(db, "stale")["retry_analysis_requested_at"] == stale.retry_analysis_requested_at
    )
    # Restamped: not taken again until the timeout passes once more.
    assert client.claim_failed_for_analysis(10, 3) == []


def test_reset_for_retry_backs_off_and_records_the_decision(client, control_db):
    cid, metadata_id = failed_row(client, control_db, "r.retry")
    client.claim_failed_for_analysis(10)
    decision = {
        "decision": "Retry Recommended",
        "confidence": 0.8,
        "reason": "transient",
        "decider": "rules",
    }
    assert not client.reset_for_retry(cid, "transient", metadata_id=metadata_id + 5)
    assert client.reset_for_retry(cid, "transient", metadata_id=metadata_id, decision=decision)
    r, h = row(control_db, cid), history(control_db, metadata_id)
    assert r["last_status"] is None and r["retry_count"] == 1
    assert r["last_message"] == (
        "[AI Analysis - Retry Recommended] transient (decided by rules) | Cause: network blip"
    )
    assert r["next_load_date_time"] - r["last_status_date_time"] == timedelta(minutes=5)
    assert r["retry_analysis_requested_at"] is None and r["needs_review"] is False
    assert (h["retry_decision"], h["retry_confidence"], h["retry_decider"]) == (
        "Retry Recommended",
        0.8,
        "rules",
    )
    assert h["retry_analysed_at"] is not None
    assert not client.reset_for_retry(cid, "again")  # no longer Failed

    # Second failure waits 15 minutes, and the retry's history says who triggered it.
    set_cols(control_db, cid, next_load_date_time=r["db_now"] - timedelta(seconds=1))
    metadata_id = run_one(client, cid)
    assert history(control_db, metadata_id)["triggered_by"] == "retry"
    client.record_failure(cid, metadata_id, "blip again")
    assert client.reset_for_retry(cid, "transient", metadata_id=metadata_id)
    r = row(control_db, cid)
    assert r["retry_count"] == 2
    assert r["next_load_date_time"] - r["last_status_date_time"] == timedelta(minutes=15)


def test_mark_for_review_keeps_failed_and_blocks_every_sensor(client, control_db):
    cid, metadata_id = failed_row(client, control_db, "r.review")
    # The contract's Decision is accepted as well as a mapping of its fields.
    decision = Decision.review("bad column", decider="openai", confidence=0.9)
    assert client.mark_for_review(cid, "bad column", metadata_id=metadata_id, decision=decision)
    r = row(control_db, cid)
    assert r["last_status"] == FAILED and r["needs_review"] is True
    assert r["last_message"] == (
        "[AI Analysis - Requires Review] bad column (decided by openai) | Cause: network blip"
    )
    h = history(control_db, metadata_id)
    assert (h["retry_decision"], h["retry_confidence"], h["retry_decider"]) == (
        "Requires Review",
        0.9,
        "openai",
    )
    set_cols(control_db, cid, next_load_date_time=r["db_now"] - timedelta(hours=1))
    assert claim_due(client, 10) == []
    assert client.claim_failed_for_analysis(10) == []


@pytest.mark.parametrize("status", [None, QUEUED, IN_PROGRESS, SUCCEEDED])
def test_retry_decisions_refused_unless_failed(client, control_db, status):
    cid = add_row(control_db, "r.refused", last_status=status)
    assert client.reset_for_retry(cid, "x") is False
    assert client.mark_for_review(cid, "x") is False
    r = row(control_db, cid)
    assert (r["last_status"], r["retry_count"], r["needs_review"]) == (status, 0, False)


# -- stuck rows -------------------------------------------------------------------------------------


def test_stuck_queued_rows_fail_with_the_spec_message(client, control_db):
    old = add_row(control_db, "q.old")
    fresh = add_row(control_db, "q.fresh")
    claimed = {r.config_id: r.metadata_id for r in claim_due(client, 10)}
    assert set(claimed) == {old, fresh}
    old_meta = claimed[old]
    with psycopg.connect(control_db) as conn:
        conn.execute(
            "UPDATE table_control SET last_status_date_time = now() - interval '61 minutes'"
            " WHERE config_id = %s",
            (old,),
        )
    failed = fail_stuck_queued(client, 60)
    assert [r.config_id for r in failed] == [old]
    assert failed[0].last_message == "Cancelled - stuck in queue for >60 minutes"
    assert history(control_db, old_meta)["status"] == FAILED
    assert row(control_db, fresh)["last_status"] == QUEUED
    assert fail_stuck_queued(client, 60) == []


def test_stuck_running_rows_are_found_and_failed_for_that_attempt_only(client, control_db):
    cid = add_row(control_db, "q.run")
    metadata_id = run_one(client, cid)
    assert client.find_stuck_running(180) == []
    assert not client.fail_stuck_running(cid, metadata_id, 180)  # not old enough
    set_cols(
        control_db, cid, last_load_date_time=row(control_db, cid)["db_now"] - timedelta(hours=4)
    )
    stuck = client.find_stuck_running(180)
    assert [(r.config_id, r.last_metadata_id, r.last_dagster_run) for r in stuck] == [
        (cid, metadata_id, "u/r1")
    ]
    assert not client.fail_stuck_running(cid, metadata_id + 1, 180)
    assert client.fail_stuck_running(cid, metadata_id, 180)
    r = row(control_db, cid)
    assert r["last_status"] == FAILED
    assert r["last_message"] == "Cancelled - exceeded 180 minute timeout"
    assert history(control_db, metadata_id)["message"] == r["last_message"]
    assert not client.fail_stuck_running(cid, metadata_id, 180)


# -- tracking and history -------------------------------------------------------------------------


def test_run_tracking_and_metadata_updates(client, control_db):
    cid = add_row(control_db, "t.track")
    metadata_id = claim_one(client, cid)
    assert client.update_run_tracking(cid, "http://dagster/r", None, metadata_id=metadata_id)
    assert client.update_run_tracking(cid, None, "http://dbx/7", metadata_id=metadata_id)
    r, h = row(control_db, cid), history(control_db, metadata_id)
    assert (r["last_dagster_run"], r["last_databricks_run"]) == ("http://dagster/r", "http://dbx/7")
    assert (h["dagster_run_url"], h["databricks_run_url"]) == ("http://dagster/r", "http://dbx/7")
    # A stale attempt cannot overwrite the current attempt's links.
    assert not client.update_run_tracking(cid, "http://old", metadata_id=metadata_id - 1)
    assert row(control_db, cid)["last_dagster_run"] == "http://dagster/r"

    extra = client.insert_initial_metadata(cid, triggered_by="ui")
    assert history(control_db, extra)["status"] == QUEUED
    assert client.update_metadata(extra, rows_read=5, message="pwd=abc12345 failed")
    assert history(control_db, extra)["message"] == "pwd=*** failed"
    with pytest.raises(ValueError, match="not updatable"):
        client.update_metadata(extra, config_id=1)
    assert not client.update_metadata(10**9, rows_read=1)
    assert [h["metadata_id"] for h in client.get_recent_history(cid, limit=5)] == [
        extra,
        metadata_id,
    ]
    with pytest.raises(LakebaseError, match="no table_control row"):
        client.insert_initial_metadata(10**9)


def test_landing_tables_are_listed_until_marked_processed(client, control_db):
    ok = add_row(control_db, "g.ok", last_status=SUCCEEDED)
    add_row(control_db, "g.failed", last_status=FAILED)
    assert [r.config_id for r in client.get_unprocessed_landing_tables()] == [ok]
    assert client.mark_staging_processed([ok]) == 1
    assert client.mark_staging_processed([ok]) == 0
    assert client.get_unprocessed_landing_tables() == []
    assert client.get_table_details("g.ok").staging_model_processed is True
    assert client.get_table_details("nope") is None


def test_landing_note_is_guarded_replaces_itself_and_is_cleared(db, client, control_db):
    ok = add_row(control_db, "ok", last_status="Succeeded", last_message="Loaded 5 rows")
    bare = add_row(control_db, "bare", last_status="Succeeded")
    busy = add_row(control_db, "busy", last_status="In Progress", last_message="running")
    done = add_row(
        control_db,
        "done",
        last_status="Succeeded",
        last_message="Loaded 1 rows",
        staging_model_processed=True,
    )
    assert client.note_landing_problem(ok, "no Delta table at /lake/x")
    assert client.note_landing_problem(ok, "password=hunter22 refused")  # replaces, redacted
    assert control_row(db, "ok")["last_message"].startswith("Loaded 5 rows | [Landing] ")
    assert control_row(db, "ok")["last_message"].count("[Landing]") == 1
    assert "hunter22" not in control_row(db, "ok")["last_message"]
    assert control_row(db, "ok")["last_status"] == "Succeeded"
    assert client.note_landing_problem(bare, "first")
    assert client.note_landing_problem(bare, "second")
    assert control_row(db, "bare")["last_message"] == "[Landing] second"
    # Not waiting for a staging model: left alone.
    assert not client.note_landing_problem(busy, "x")
    assert not client.note_landing_problem(done, "x")
    assert control_row(db, "busy")["last_message"] == "running"
    assert control_row(db, "done")["last_message"] == "Loaded 1 rows"
    # Generated later: the note goes, the load's own message stays.
    assert client.mark_staging_processed([ok, bare]) == 2
    assert control_row(db, "ok")["last_message"] == "Loaded 5 rows"
    assert control_row(db, "bare")["last_message"] is None


def test_connection_errors_are_lakebase_errors_without_the_password(tmp_path):
    conninfo = f"host={tmp_path} port=1 dbname=x user=u password=Sup3rSecretPw"
    with (
        LakebaseClient(conninfo, min_size=0, timeout=2) as broken,
        pytest.raises(LakebaseError) as err,
    ):
        broken.get_control_tables()
    assert "Sup3rSecretPw" not in str(err.value) and "Sup3rSecretPw" not in repr(broken)
    assert err.value.__cause__ is None


def test_every_status_assignment_in_the_product_is_the_guarded_helper():
    """No SQL text anywhere sets last_status except guarded_transition's one assignment."""
    root = Path(__file__).resolve().parents[2]
    assignment = re.compile(r"\blast_status\s*=\s*(%|'|\"|NULL|CASE|\$|\{)", re.IGNORECASE)
    set_clause = re.compile(
        r"\bSET\b(?:(?!\bWHERE\b).)*\blast_status\s*=", re.IGNORECASE | re.DOTALL
    )
    found = []
    for path in [*root.joinpath("dagsters").rglob("*.py"), *root.joinpath("sql").glob("*.sql")]:
        if path.suffix == ".sql":
            texts = [path.read_text()]
        else:
            tree = ast.parse(path.read_text())
            texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        for text in texts:
            if not isinstance(text, str):
                continue
            # Comparisons in WHERE/CASE/CHECK are fine; assignments are what is counted.
            if set_clause.search(text) or (assignment.match(text.strip()) and "SET" not in text):
                found.append((path.relative_to(root).as_posix(), text.strip()[:60]))
    assert found == [
        ("dagsters/control/transitions.py", "last_status = %(_t_to)s"),
    ]
