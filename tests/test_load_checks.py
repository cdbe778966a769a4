"""The checks of a load: row-count reconciliation of the reported counts; the declared table assets
with their freshness policy from the row's own schedule, their kinds and their checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
from helpers import add_control_row, lakebase_for

from dagsters.assets.load_checks import ROW_COUNT_CHECK, reconcile_row_counts, row_count_evaluation
from dagsters.assets.table_specs import table_asset_definitions, table_spec
from dagsters.control.freshness import freshness_window
from dagsters.settings import load_settings
from databricks_scripts.contract import LoadMetadata as M
from databricks_scripts.contract import full_load_reason


def _full(source: int, written: int, after: int) -> dict:
    return {
        M.LOAD_STRATEGY: "full",
        M.ROWS_READ: source,
        M.SOURCE_ROWS: source,
        M.ROWS_WRITTEN: written,
        M.DESTINATION_ROWS_BEFORE: 7,
        M.ROW_COUNT: after,
    }


def _changed(strategy: str, read: int, written: int, before: int, after: int) -> dict:
    return {
        M.LOAD_STRATEGY: strategy,
        M.ROWS_READ: read,
        M.ROWS_WRITTEN: written,
        M.DESTINATION_ROWS_BEFORE: before,
        M.ROW_COUNT: after,
    }


def test_full_load_passes_when_source_written_and_destination_agree_and_fails_with_numbers():
    assert reconcile_row_counts(_full(25, 25, 25)).passed
    failed = reconcile_row_counts(_full(25, 25, 24))
    assert not failed.passed
    assert "25" in failed.description and "24" in failed.description
    assert failed.counts == {"source_rows": 25, "rows_written": 25, "destination_rows_after": 24}


def test_incremental_load_checks_the_destination_change_against_rows_read_and_written():
    assert reconcile_row_counts(_changed("incremental", 3, 2, 25, 27)).passed  # 1 look-back dup
    wrong = reconcile_row_counts(_changed("incremental", 3, 3, 25, 27))
    assert (
        not wrong.passed and "changed by 2" in wrong.description and "wrote 3" in wrong.description
    )
    assert not reconcile_row_counts(_changed("incremental", 2, 3, 25, 28)).passed  # wrote > read


def test_merge_changes_the_destination_by_at_most_the_rows_read():
    assert reconcile_row_counts(_changed("merge", 4, 4, 10, 11)).passed  # 3 updated, 1 inserted
    assert reconcile_row_counts(_changed("merge", 4, 4, 10, 10)).passed  # all updates
    doubled = reconcile_row_counts(_changed("merge", 4, 4, 10, 18))
    assert not doubled.passed and "read 4" in doubled.description and "18" in doubled.description
    assert not reconcile_row_counts(_changed("merge", 4, 4, 10, 9)).passed


def test_unknown_counts_and_reconciled_commits_are_not_checked():
    assert reconcile_row_counts({M.LOAD_STRATEGY: "incremental", M.ROWS_READ: 1}) is None
    reconciled = {**_changed("incremental", 0, 0, 5, 5), M.RECONCILED_METADATA_ID: 4}
    assert reconcile_row_counts(reconciled) is None


def test_the_evaluation_lands_on_the_table_key_as_a_warning_with_ids_as_text():
    key = dg.AssetKey(["lake", "raw", "orders"])
    evaluation = row_count_evaluation(
        key, reconcile_row_counts(_full(3, 3, 2)), control_key="pg.orders", metadata_id=12
    )
    assert (evaluation.asset_key, evaluation.check_name) == (key, ROW_COUNT_CHECK)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["metadata_id"] == dg.MetadataValue.text("12")


def test_full_load_reason_names_first_load_forced_strategy_or_missing_watermark():
    def reason(**kw):
        base = {
            "force_full_reload": False,
            "destination_exists": True,
            "load_strategy": "incremental",
            "incremental_column": "updated_at",
            "incremental_value": "2024-01-01",
        }
        return full_load_reason(**{**base, **kw})

    assert reason(destination_exists=False, force_full_reload=True) == "first load"
    assert reason(force_full_reload=True) == "forced"
    assert reason(load_strategy="full") == "strategy"
    assert reason(incremental_value=None) == "no watermark yet"
    assert reason() is None


def test_freshness_window_is_one_period_plus_a_grace_of_one_period_at_most_an_hour():
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday

    def window(**row):
        return freshness_window({"schedule_timezone": "UTC", **row}, now)

    assert window(schedule_interval=timedelta(minutes=5)) == timedelta(minutes=10)
    assert window(schedule_interval=timedelta(hours=6)) == timedelta(hours=7)
    assert window(schedule_cron="0 2 * * *") == timedelta(hours=25)
    # Weekdays only: the longest gap is the weekend's, so Monday's table is not late on Sunday.
    assert window(schedule_cron="0 2 * * 1-5") == timedelta(days=3, hours=1)
    assert window() is None  # loads once: never late


def test_declared_table_specs_carry_kinds_freshness_and_the_row_count_check(
    control_db, source_db, db
):
    add_control_row(db, source_db, "pg.orders", "orders", schedule_interval="5 minutes")
    add_control_row(db, source_db, "pg.paused", "paused", is_active=False)
    local = load_settings({"DATALOADER_TABLE_ASSETS_MAX": "10"})

    specs, [checks] = table_asset_definitions(local, lakebase_for(control_db))

    [spec] = specs
    assert spec.key == dg.AssetKey(["lake", "raw", "orders"])
    assert spec.kinds == {"delta", "postgresql"}
    assert spec.freshness_policy == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=10)
    )
    assert {key.name for key in checks.check_keys} == {ROW_COUNT_CHECK}
    on_databricks = load_settings(
        {"DATALOADER_TABLE_ASSETS_MAX": "10", "DATALOADER_EXECUTION": "databricks"}
    )
    assert (
        "databricks"
        in table_spec(
            dict(
                db.execute("SELECT * FROM table_control WHERE control_key = 'pg.orders'").fetchone()
            ),
            on_databricks.execution,
        ).kinds
    )
    # Over the cap nothing is declared (the loads still report each table's events).
    capped = load_settings({"DATALOADER_TABLE_ASSETS_MAX": "1"})
    add_control_row(db, source_db, "pg.more", "more")
    assert table_asset_definitions(capped, lakebase_for(control_db)) == ([], [])
    assert table_asset_definitions(load_settings({}), lakebase_for(control_db)) == ([], [])


def test_executing_a_declared_check_re_evaluates_the_tables_latest_load():
    """The UI's "Execute" on a table's row-count check reads its latest materialization."""
    from dagsters.assets.table_specs import row_count_checks

    key = dg.AssetKey(["lake", "raw", "orders"])
    checks = row_count_checks([dg.AssetSpec(key)])
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=key, metadata=_full(3, 3, 2))
    )

    result = dg.materialize(
        [checks], instance=instance, selection=dg.AssetSelection.all_asset_checks()
    )

    [evaluation] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert (evaluation.asset_key, evaluation.passed) == (key, False)
    assert (
        "source snapshot 3 rows" in evaluation.description and "holds 2" in evaluation.description
    )


def test_a_row_whose_destination_dagster_cannot_name_is_not_declared_and_the_rest_still_are(
    control_db, source_db, db
):
    """One bad row (a destination table named like a path) must not stop the code location."""
    add_control_row(db, source_db, "pg.orders", "orders")
    add_control_row(db, source_db, "pg.bad", "bad", destination_table_name="../outside_bad")
    local = load_settings({"DATALOADER_TABLE_ASSETS_MAX": "10"})

    specs, [checks] = table_asset_definitions(local, lakebase_for(control_db))

    assert [spec.key for spec in specs] == [dg.AssetKey(["lake", "raw", "orders"])]
    assert {key.asset_key for key in checks.check_keys} == {specs[0].key}
