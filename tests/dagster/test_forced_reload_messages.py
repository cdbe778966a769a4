"""Every message says when a reload was forced, and who asked: the row's flag or the run config.

The real load asset and script, a real source table, real Delta destinations and control rows.
The row's flag is set the way the issue met it: with SQL while the row is already Queued.
"""

from __future__ import annotations

import dagster as dg
from helpers import add_control_row, claim_due, control_row, history
from test_load_asset import claim_and_materialize, resources

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.assets.forced_reload import FORCED_BY_ROW, FORCED_BY_RUN_CONFIG
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient


def _claim(control_db: str, key: str) -> dict:
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    return claimed


def _run(control_db, lake_root, instance, key, run_config) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    return dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=run_config,
        resources=resources(control_db, lake_root),
        instance=instance,
        raise_on_error=False,
    )


def _logs(instance, run_id: str) -> str:
    return "\n".join(e.user_message or "" for e in instance.all_logs(run_id))


def _due(db, key: str) -> None:
    db.execute(
        "UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,)
    )


def test_the_rows_flag_set_while_queued_is_named_in_every_message(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    _due(db, "pg.orders")
    claimed = _claim(control_db, "pg.orders")  # Queued ...
    db.execute("UPDATE table_control SET force_full_reload = true WHERE control_key = 'pg.orders'")
    result = _run(control_db, lake_root, instance, "pg.orders", load_run_config(claimed))

    assert result.success
    row, attempt = control_row(db, "pg.orders"), history(db, "pg.orders")[-1]
    assert row["last_message"] == f"Loaded 25 rows; full reload forced by {FORCED_BY_ROW}"
    assert attempt["message"].startswith(row["last_message"])
    assert attempt["full_load_reason"] == "forced"
    assert row["force_full_reload"] is False  # used once
    assert f"pg.orders: full reload forced by {FORCED_BY_ROW}" in _logs(instance, result.run_id)


def test_a_person_forcing_from_the_launchpad_is_named(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    forced = {"ops": {LOAD_ASSET: {"config": {"force_full_reload": True}}}}
    result = _run(control_db, lake_root, instance, "pg.orders", forced)

    assert result.success
    row = control_row(db, "pg.orders")
    assert row["last_message"] == f"Loaded 25 rows; full reload forced by {FORCED_BY_RUN_CONFIG}"
    assert history(db, "pg.orders")[-1]["message"].startswith(row["last_message"])


def test_a_forced_reload_of_a_table_that_keeps_history_says_it_merged(
    control_db, source_db, source, lake_root, db, instance
):
    # The case: a merge row with soft deletes answered only "Loaded 0 rows (merge load)".
    add_control_row(
        db,
        source_db,
        "pg.orders",
        "orders",
        load_strategy="merge",
        merge_keys=["order_id"],
        delete_detection="soft",
    )
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    _due(db, "pg.orders")
    claimed = _claim(control_db, "pg.orders")
    db.execute("UPDATE table_control SET force_full_reload = true WHERE control_key = 'pg.orders'")
    result = _run(control_db, lake_root, instance, "pg.orders", load_run_config(claimed))

    assert result.success
    message = control_row(db, "pg.orders")["last_message"]
    assert f"full reload forced by {FORCED_BY_ROW}: the whole source was re-read and merged" in (
        message
    )
    assert "(merge load; a table that keeps history is never overwritten)" in message


def test_a_failed_forced_reload_says_it_was_forced_by_both(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")
    assert claim_and_materialize(control_db, lake_root, instance, "pg.orders")[0].success
    db.execute(
        "UPDATE table_control SET force_full_reload = true, source_table_name = 'no_such_table'"
        " WHERE control_key = 'pg.orders'"
    )
    forced = {"ops": {LOAD_ASSET: {"config": {"force_full_reload": True}}}}
    result = _run(control_db, lake_root, instance, "pg.orders", forced)

    assert not result.success
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed"
    assert "no_such_table" in row["last_message"]
    assert row["last_message"].endswith(
        f"[full reload forced by {FORCED_BY_ROW} and {FORCED_BY_RUN_CONFIG}]"
    )
    assert history(db, "pg.orders")[-1]["message"].endswith(row["last_message"][-40:])
