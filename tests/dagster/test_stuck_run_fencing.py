"""The same table is never loaded twice at once (issue 16, item 2).

- longrunning_monitor fails a stuck row only once its run is known to have stopped: a run that
  is still going (cancel requested) or that this Dagster instance does not know (another
  deployment on the same control database) keeps its row In Progress;
- the loader checks, just before it commits, that no other attempt of the row committed while
  it was loading: a stale attempt still running after its row was failed and reloaded commits
  nothing and says so, and the destination holds exactly the source's rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from deltalake import DeltaTable
from helpers import (
    add_control_row,
    add_history,
    claim_due,
    control_row,
    evaluate,
    history,
    lakebase_for,
)
from test_load_asset import materializations

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.control.rows import ClaimedRow
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_longrunning_monitor import build_longrunning_monitor
from dagsters.settings import Settings, load_settings
from dagsters.utils.lakebase_client import LakebaseClient

DEADLINE_SECONDS = 120
GATE_LOCK = 4242


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stuck_row(db: psycopg.Connection, source_db: str, key: str, run_link: str | None) -> int:
    # One destination per row (sql/011): several stuck rows of public.orders in one test.
    config_id = add_control_row(
        db, source_db, key, "orders", destination_table_name=key.replace(".", "_")
    )
    metadata_id = add_history(db, config_id, key, "In Progress")
    db.execute(
        "UPDATE table_control SET last_status = 'In Progress', last_dagster_run = %s,"
        " last_load_date_time = now() - interval '181 minutes' WHERE config_id = %s",
        (run_link, config_id),
    )
    return metadata_id


def tick(instance, control_db: str) -> str:
    resources = {"lakebase": lakebase_for(control_db)}
    return evaluate(build_longrunning_monitor(Settings()), instance, resources).skip_message


def test_a_stuck_row_is_failed_only_after_its_run_has_stopped(control_db, source_db, db, instance):
    run = dg.DagsterRun(
        job_name="dataloader__table_load_job",
        run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.add_run(run)
    stuck_row(db, source_db, "running", f"http://127.0.0.1:3000/runs/{run.run_id}")
    stuck_row(db, source_db, "elsewhere", f"http://127.0.0.1:3000/runs/{uuid.uuid4()}")

    message = tick(instance, control_db)

    # Its cancel is not confirmed (the run is still STARTED): the row stays In Progress.
    assert "Waiting for 2 stuck load(s)" in message
    assert control_row(db, "running")["last_status"] == "In Progress"
    # A run this Dagster instance does not know may be running elsewhere: not failed either.
    assert control_row(db, "elsewhere")["last_status"] == "In Progress"

    instance.report_run_canceled(instance.get_run_by_id(run.run_id))
    message = tick(instance, control_db)

    row = control_row(db, "running")
    assert row["last_status"] == "Failed"
    assert row["last_message"] == "Cancelled - exceeded 180 minute timeout"
    assert "running" in message
    assert control_row(db, "elsewhere")["last_status"] == "In Progress"

    # Still not known to have stopped at twice the threshold: failed anyway (never stranded).
    hung = dg.DagsterRun(
        job_name="dataloader__table_load_job",
        run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.add_run(hung)
    stuck_row(db, source_db, "hung", f"http://127.0.0.1:3000/runs/{hung.run_id}")
    db.execute(
        "UPDATE table_control SET last_load_date_time = now() - interval '361 minutes'"
        " WHERE control_key IN ('elsewhere', 'hung')"
    )
    tick(instance, control_db)
    assert control_row(db, "elsewhere")["last_status"] == "Failed"
    assert control_row(db, "hung")["last_status"] == "Failed"


def materialize(control_db: str, lake_root: Path, instance, claimed: dict):
    settings = load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)})
    return dg.materialize(
        [build_load_asset(settings)],
        partition_key=claimed.control_key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(settings),
        },
        instance=instance,
        raise_on_error=False,
    )


def claim(control_db: str, key: str) -> ClaimedRow:
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    return claimed


def gated_source(source, where: str) -> None:
    """public.gated_orders: while public.gate says closed, the loader's schema probe ('probe') or
    its row read ('read') waits on an advisory lock the test holds."""
    # The PostgreSQL schema probe is ``SELECT * FROM <table> WHERE false`` (load.sql).
    probe = "~" if where == "probe" else "!~"
    source.execute("CREATE TABLE public.gate (closed boolean NOT NULL)")
    source.execute("INSERT INTO public.gate VALUES (false)")
    source.execute(
        "CREATE FUNCTION public.pass_gate() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN"
        " IF (SELECT closed FROM public.gate)"
        f" AND current_query() {probe} 'WHERE (false|1 = 0)' THEN"
        f" PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); END IF; RETURN true; END $$"
    )
    source.execute(
        "CREATE VIEW public.gated_orders AS SELECT o.* FROM public.orders o"
        " WHERE (SELECT public.pass_gate())"
    )


def waiting_at_gate(source_db: str) -> bool:
    with psycopg.connect(source_db, autocommit=True) as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND query LIKE '%gated_orders%'"
            ).fetchone()[0]
        )


@pytest.mark.parametrize("where", ["read", "probe"])
def test_a_stale_attempt_still_running_commits_nothing(
    where, control_db, source_db, source, lake_root, db, instance
):
    gated_source(source, where)
    add_control_row(db, source_db, "pg.gated", "gated_orders")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.gated"])
    assert materialize(control_db, lake_root, instance, claim(control_db, "pg.gated")).success
    source.execute(
        "INSERT INTO public.orders SELECT g, g, timestamptz '2024-03-01' + g * interval '1 hour'"
        " FROM generate_series(26, 30) g"
    )
    db.execute(
        "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
        " next_load_date_time = now()"
    )

    # Attempt A starts and is held inside its source read.
    source.execute("UPDATE public.gate SET closed = true")
    holder = psycopg.connect(source_db, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))
    stale = claim(control_db, "pg.gated")
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=materialize(control_db, lake_root, instance, stale)),
        daemon=True,
    )
    thread.start()
    wait_for(lambda: waiting_at_gate(source_db), f"attempt A to wait inside its {where}")

    # A monitor fails A's row (as if its run were known dead) and attempt B loads the table.
    source.execute("UPDATE public.gate SET closed = false")
    with LakebaseClient(control_db) as client:
        assert client.fail_stuck_running(stale.config_id, stale.metadata_id, 0)
    db.execute(
        "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
        " next_load_date_time = now()"
    )
    current = claim(control_db, "pg.gated")
    assert materialize(control_db, lake_root, instance, current).success

    # A goes on and finds B's commit: at its fencing check (held in its read: it fails and
    # says so), or when it opens the destination (held in its probe: it loads nothing).
    holder.close()
    thread.join(timeout=DEADLINE_SECONDS)
    result = outcome["result"]
    if where == "read":
        assert not result.success
        error = result.failure_data_for_node(LOAD_ASSET).error.message
        assert f"attempt {current.metadata_id}" in error and "committed nothing" in error
    else:
        [materialization] = materializations(result)
        assert materialization.metadata["rows_written"].value == 0
        assert materialization.metadata["reconciled_metadata_id"].value == str(current.metadata_id)
    table = DeltaTable(str(lake_root / "lake" / "raw" / "gated_orders")).to_pyarrow_table()
    assert table.num_rows == 30 == len(set(table.column("order_id").to_pylist()))
    row = control_row(db, "pg.gated")
    assert (row["last_status"], row["last_metadata_id"]) == ("Succeeded", current.metadata_id)
    [stale_history] = [h for h in history(db, "pg.gated") if h["metadata_id"] == stale.metadata_id]
    assert stale_history["status"] == "Failed"
    if where == "read":  # the stale attempt's own history row says it committed nothing
        assert "committed nothing" in stale_history["message"]
