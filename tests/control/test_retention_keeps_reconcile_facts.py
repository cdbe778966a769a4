"""Retention never removes what reconcile needs; reconcile never reports an outage that did not
happen (issue 23).

Before: the latest attempt of a row had failed, so retention deleted the row's last Succeeded
history row; the next load took the destination's last commit (that Succeeded attempt) for one
never recorded and "reconciled" instead of loading: 25 rows in the destination, 30 in the source.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from deltalake import DeltaTable
from helpers import add_control_row, claim_due, control_row, history, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient


def _load(control_db: str, lake_root: Path, instance, key: str) -> dg.ExecuteInProcessResult:
    """What master_sensor + a run worker do: claim the due row, run its partition."""
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    return dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(
                load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)}),
                termination_grace_seconds=3,
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_retention_keeps_the_last_succeeded_attempt_and_the_next_load_loads(
    control_db, source_db, source, lake_root, db, instance
):
    cid = add_control_row(db, source_db, "pg.orders", "orders")
    assert _load(control_db, lake_root, instance, "pg.orders").success
    [good] = history(db, "pg.orders")
    assert good["status"] == "Succeeded"
    # The next attempt fails before committing anything (its row points at it now).
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    with LakebaseClient(control_db) as client:
        [failed] = claim_due(client, 10)
        assert client.record_failure(cid, failed.metadata_id, "source unreachable")
    # Both attempts are older than the retention; the purge runs.
    db.execute("UPDATE historical_metadata SET queued_at = now() - interval '500 days'")
    with LakebaseClient(control_db) as client:
        client.purge_history_batch(400, 100)
        assert client.last_recorded_attempt(cid) == good["metadata_id"]
    assert [h["metadata_id"] for h in history(db, "pg.orders")] == [
        good["metadata_id"],
        failed.metadata_id,
    ]

    source.execute(
        "INSERT INTO public.orders SELECT g, 1, timestamptz '2024-03-01' + make_interval(days => g)"
        " FROM generate_series(26, 30) g"
    )
    db.execute(
        "UPDATE table_control SET last_status = NULL, next_load_date_time = now()"
        " WHERE config_id = %s",
        (cid,),
    )
    assert _load(control_db, lake_root, instance, "pg.orders").success

    latest = history(db, "pg.orders")[-1]
    assert latest["status"] == "Succeeded"
    assert not latest["message"].startswith("Loaded nothing"), latest["message"]
    assert latest["rows_written"] == 5
    assert control_row(db, "pg.orders")["last_status"] == "Succeeded"
    table = DeltaTable(str(lake_root / "lake" / "raw" / "orders"))
    assert table.to_pyarrow_table().num_rows == 30


def test_a_reconciled_commit_says_what_the_database_recorded_not_an_outage(
    control_db, source_db, source, lake_root, db, instance
):
    # A load committed, then its row was failed by the run timeout before the result was written
    # back (the run worker died): the next load reconciles, and says so, not "unreachable?".
    cid = add_control_row(db, source_db, "pg.orders", "orders")
    assert _load(control_db, lake_root, instance, "pg.orders").success
    [first] = history(db, "pg.orders")
    db.execute(
        "UPDATE historical_metadata SET status = 'Failed',"
        " message = 'Cancelled - exceeded 180 minute timeout' WHERE metadata_id = %s",
        (first["metadata_id"],),
    )
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', next_load_date_time = now()"
        " WHERE config_id = %s",
        (cid,),
    )
    db.execute("UPDATE table_control SET last_status = NULL WHERE config_id = %s", (cid,))
    assert _load(control_db, lake_root, instance, "pg.orders").success
    latest = history(db, "pg.orders")[-1]
    assert latest["message"].startswith(
        f"Loaded nothing: attempt {first['metadata_id']} had committed its load"
    )
    assert "it was recorded Failed (Cancelled - exceeded 180 minute timeout)" in latest["message"]
    assert "unreachable" not in latest["message"]
