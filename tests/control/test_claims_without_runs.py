"""Claims whose run never appeared are settled in minutes, not after the 60-minute monitor.

Issue 16, item 7, with the real master_sensor, a real Dagster instance and the control database:
- a tick that fails after its claim (a fault injected: the partition counter's table is gone)
  gives the claimed rows back at once: ready, due again, the attempt's history row says why;
- a claim left by a daemon that died before creating its run (claimed, no run) is released by a
  later tick once it is ORPHAN_AFTER_MINUTES old, and that tick claims the row afresh;
- a claim whose run exists but ended without starting the attempt ends Failed, naming the run;
- a claim whose run is still in flight (started, not yet at the asset) is left alone.
"""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
from dagster._core.test_utils import create_run_for_test
from helpers import SOME_SOURCE, claim_due, evaluate, lakebase_for
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.policy.run_requests import TAG_METADATA_ID
from dagsters.sensors.dataloader_master_sensor import LOAD_JOB, build_master_sensor
from dagsters.settings import Settings
from dagsters.utils.lakebase_client import LakebaseClient


@pytest.fixture
def db(control_db):
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _rows(db, *keys: str) -> None:
    for key in keys:
        db.execute(
            "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
            " destination_catalog, destination_schema_name, destination_table_name, db_type,"
            " db_config_value, schedule_interval) VALUES (%s, 's', %s, 'l', 'r', %s,"
            " 'postgresql', %s, interval '1 hour')",
            (key, key, key, Jsonb(SOME_SOURCE)),
        )


def _tick(instance, control_db):
    return evaluate(
        build_master_sensor(Settings()), instance, {"lakebase": lakebase_for(control_db)}
    )


def _status(db, key: str) -> dict:
    return db.execute(
        "SELECT t.last_status, t.last_message, t.last_metadata_id, h.status AS history_status,"
        " h.message AS history_message FROM table_control t"
        " JOIN historical_metadata h ON h.metadata_id = t.last_metadata_id"
        " WHERE t.control_key = %s",
        (key,),
    ).fetchone()


def _age_claims(db, minutes: int) -> None:
    db.execute(
        "UPDATE table_control SET last_status_date_time = now() - make_interval(mins => %s)"
        " WHERE last_status = 'Queued'",
        (minutes,),
    )


def test_a_tick_failing_after_its_claim_gives_the_rows_back(control_db, db, instance):
    _rows(db, "c.one", "c.two")
    db.execute("DROP TABLE control_keys_state CASCADE")  # the fault: read after the claim

    with pytest.raises(Exception, match="control_keys_state"):
        _tick(instance, control_db)

    for key in ("c.one", "c.two"):
        state = _status(db, key)
        assert state["last_status"] is None, state
        assert state["history_status"] == "Failed"
        for text in (state["last_message"], state["history_message"]):
            assert text.startswith("Released: master_sensor's tick failed after claiming")
            assert "control_keys_state" in text
    with LakebaseClient(control_db) as client:  # due again at once
        assert {r.control_key for r in client.get_control_tables()} == {"c.one", "c.two"}


def test_a_claim_without_a_run_is_released_and_claimed_afresh(control_db, db, instance):
    _rows(db, "c.orphan")
    with LakebaseClient(control_db) as client:
        [lost] = claim_due(client, 10)  # the daemon died before creating the run

    _age_claims(db, 1)
    assert not _tick(instance, control_db).run_requests  # too young to judge: left alone
    assert _status(db, "c.orphan")["last_status"] == "Queued"

    _age_claims(db, 6)
    result = _tick(instance, control_db)

    [request] = result.run_requests
    assert request.partition_key == "c.orphan"
    assert request.tags[TAG_METADATA_ID] != str(lost.metadata_id)
    old = db.execute(
        "SELECT status, message FROM historical_metadata WHERE metadata_id = %s",
        (lost.metadata_id,),
    ).fetchone()
    assert old["status"] == "Failed" and "no Dagster run was created" in old["message"]
    assert _status(db, "c.orphan")["last_status"] == "Queued"  # the fresh claim


def test_a_run_that_ended_before_starting_fails_the_attempt_and_a_live_run_is_left(
    control_db, db, instance
):
    _rows(db, "c.crashed", "c.waiting")
    with LakebaseClient(control_db) as client:
        claimed = {r.control_key: r for r in claim_due(client, 10)}
    crashed = create_run_for_test(
        instance,
        job_name=LOAD_JOB,
        status=dg.DagsterRunStatus.FAILURE,
        tags={TAG_METADATA_ID: str(claimed["c.crashed"].metadata_id)},
    )
    create_run_for_test(
        instance,
        job_name=LOAD_JOB,
        status=dg.DagsterRunStatus.STARTED,
        tags={TAG_METADATA_ID: str(claimed["c.waiting"].metadata_id)},
    )
    _age_claims(db, 10)

    _tick(instance, control_db)

    state = _status(db, "c.crashed")
    assert (state["last_status"], state["history_status"]) == ("Failed", "Failed")
    assert f"Run {crashed.run_id} ended FAILURE before the load started" in state["last_message"]
    assert _status(db, "c.waiting")["last_status"] == "Queued"


def test_the_orphan_query_uses_the_queued_index(control_db, db):
    # The same statement queued_longer_than sends, explained with sequential scans discouraged:
    # its WHERE clause implies the partial index's predicate (sql/002), so no tick scans the table.
    db.execute("SET enable_seqscan = off")
    plan = db.execute(
        "EXPLAIN SELECT *, last_metadata_id AS metadata_id FROM table_control"
        " WHERE last_status = 'Queued'"
        " AND last_status_date_time < now() - make_interval(secs => 300.0)"
        " ORDER BY last_status_date_time LIMIT 100"
    ).fetchall()
    assert "table_control_queued_idx" in " ".join(r["QUERY PLAN"] for r in plan)
