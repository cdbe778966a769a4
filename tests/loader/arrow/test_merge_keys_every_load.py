"""A keyed table's keys are checked on every load, the first one (which runs as a full) included.

Before: the first load of a merge (or keyed incremental) row ran as a full overwrite without the
check, so duplicate or NULL keys were written, every later MERGE failed, and the duplicate stayed
even after the source was fixed. Now the first load fails before it commits, names the key, and
writes nothing; once the source is fixed the load succeeds.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable
from helpers import add_control_row, claim_due, control_row, history, lakebase_for

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient


def load(control_db: str, lake_root: Path, instance, key: str) -> dg.ExecuteInProcessResult:
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    settings = load_settings({"DATALOADER_LAKE_ROOT": str(lake_root)})
    return dg.materialize(
        [build_load_asset(settings)],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource.from_settings(settings),
        },
        instance=instance,
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("strategy", "bad_row", "expected"),
    [
        ("merge", "(3, 9.9, '2024-02-01')", "not unique"),
        ("merge", "(NULL, 9.9, '2024-02-01')", "is NULL"),
        ("incremental", "(3, 9.9, '2024-02-01')", "not unique"),
    ],
    ids=["merge-duplicate", "merge-null", "keyed-incremental-duplicate"],
)
def test_first_load_refuses_bad_keys_and_writes_nothing(
    strategy, bad_row, expected, control_db, source_db, source, lake_root, db, instance
):
    source.execute("ALTER TABLE public.orders DROP CONSTRAINT orders_pkey")
    source.execute("ALTER TABLE public.orders ALTER COLUMN order_id DROP NOT NULL")
    source.execute(f"INSERT INTO public.orders VALUES {bad_row}")
    add_control_row(
        db, source_db, "pg.orders", "orders", load_strategy=strategy, merge_keys=["order_id"]
    )

    result = load(control_db, lake_root, instance, "pg.orders")

    assert not result.success
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    assert expected in row["last_message"] and "order_id" in row["last_message"]
    assert history(db, "pg.orders")[-1]["message"] == row["last_message"]
    assert row["incremental_value"] is None
    destination = lake_root / "lake" / "raw" / "orders"
    assert not (destination / "_delta_log").exists()  # nothing committed

    # The source is fixed: the next load succeeds with one row per key.
    source.execute("DELETE FROM public.orders WHERE updated_at = '2024-02-01'")
    db.execute(
        "UPDATE table_control SET last_status = NULLIF(last_status, 'Failed'),"
        " next_load_date_time = now()"
    )
    assert load(control_db, lake_root, instance, "pg.orders").success
    table = DeltaTable(str(destination)).to_pyarrow_table()
    assert table.num_rows == 25 == len(set(table.column("order_id").to_pylist()))
