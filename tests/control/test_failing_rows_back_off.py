"""A failing row on a frequent schedule waits for its retry decision and backs off (issue 16).

Real control database. Two rows on one source, every minute: a failed row is not reclaimed by its
own schedule (it would take a per-source run slot every minute); the healthy row keeps loading.
The failed row comes back only through failed_monitor's decision: after the back-off when
retried, never while under review or after a person's terminate.
"""

from __future__ import annotations

import psycopg
import pytest
from helpers import SOME_SOURCE, claim_due
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.control.rows import ClaimedRow
from dagsters.policy.retry_analysis import apply_decision
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import Decision, LoadReport


@pytest.fixture
def db(control_db):
    with psycopg.connect(control_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _minute_passes(db) -> None:
    db.execute(
        "UPDATE table_control SET next_load_date_time = now() - interval '1 second'"
        " WHERE next_load_date_time IS NOT NULL AND next_load_date_time <= now() + interval '2 minutes'"
    )


def _run(client: LakebaseClient, rows: list[ClaimedRow], failing: str) -> None:
    for row in rows:
        cid, mid = row.config_id, row.metadata_id
        assert client.start_load(cid, mid, dagster_run_id="r", dagster_run_url="u")
        if row.control_key == failing:
            assert client.record_failure(cid, mid, "could not connect to server: timeout")
        else:
            assert client.record_success(
                cid, mid, LoadReport(rows_read=1, rows_written=1, watermark_after=None)
            )


def test_a_failing_row_waits_for_its_decision_and_the_healthy_row_keeps_its_slot(control_db, db):
    for key in ("src.healthy", "src.failing"):
        db.execute(
            "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
            " destination_catalog, destination_schema_name, destination_table_name, db_type,"
            " db_config_value, schedule_cron) VALUES (%s, 's', %s, 'l', 'r', %s, 'postgresql',"
            " %s, '* * * * *')",
            (key, key, key, Jsonb(SOME_SOURCE)),
        )
    with LakebaseClient(control_db, max_size=2) as client:
        _run(client, claim_due(client, 10), failing="src.failing")
        for _ in range(3):  # three frequent slots pass before the analysis decides
            _minute_passes(db)
            claimed = claim_due(client, 10)
            assert [r.control_key for r in claimed] == ["src.healthy"]
            _run(client, claimed, failing="src.failing")

        [failed] = client.claim_failed_for_analysis(10, 3)
        decision = Decision("Retry Recommended", 0.9, "Transient network fault.", "rules")
        assert apply_decision(client, failed, decision) == "retried"
        _minute_passes(db)  # inside the 5-minute back-off
        assert [r.control_key for r in claim_due(client, 10)] == ["src.healthy"]

        db.execute(
            "UPDATE table_control SET next_load_date_time = now() - interval '1 second'"
            " WHERE control_key = 'src.failing'"
        )  # the back-off is over
        again = {r.control_key: r for r in claim_due(client, 10)}
        assert set(again) == {"src.failing"}
        retry_history = db.execute(
            "SELECT triggered_by FROM historical_metadata WHERE metadata_id = %s",
            (again["src.failing"].metadata_id,),
        ).fetchone()
        assert retry_history["triggered_by"] == "retry"
