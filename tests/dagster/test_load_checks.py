"""The checks of a load: row-count reconciliation of the reported counts; the declared table assets
with their freshness policy from the row's own schedule, their kinds and their checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
from helpers import (
    add_control_row,
    declared_table,
    lakebase_for,
    make_declared,
    make_row,
    pg_config,
)

from dagsters.assets.load_checks import ROW_COUNT_CHECK, reconcile_row_counts, row_count_evaluation
from dagsters.assets.table_specs import table_asset_definitions
from dagsters.policy.freshness import freshness_window
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.resources.lakebase import LakebaseResource
from dagsters.review_status import NEEDS_REVIEW_CHECK
from dagsters.settings import load_settings
from dagsters.translator import DEFAULT_TRANSLATOR
from databricks_scripts.contract import LoadMetadata as M
from databricks_scripts.contract import full_load_reason


def _verified(passed: bool, **facts) -> dict:
    return {
        M.LOAD_STRATEGY: "merge",
        M.ROWS_READ: 4,
        M.VERIFIED: passed,
        M.VERIFICATION: "table: source 10, destination 9" if not passed else "table: 10, 10",
        M.VERIFY_DEPTH: "counts",
        **facts,
    }


def test_the_check_reports_the_scripts_facts_not_what_it_says_it_wrote():
    ok = reconcile_row_counts(_verified(True, source_rows=10, destination_rows=10))
    assert ok.passed and ok.description.startswith("reconciliation (counts) passed")
    assert ok.counts == {"source_rows": 10, "destination_rows": 10}
    failed = reconcile_row_counts(_verified(False, source_rows=10, destination_rows=9))
    assert not failed.passed
    assert failed.description == "reconciliation (counts) FAILED: table: source 10, destination 9"


def test_unverified_loads_and_reconciled_commits_are_not_checked():
    # Written counts alone are never checked: an engine or row that does not verify says nothing.
    assert reconcile_row_counts({M.LOAD_STRATEGY: "incremental", M.ROWS_READ: 1}) is None
    reconciled = {**_verified(True), M.RECONCILED_METADATA_ID: 4}
    assert reconcile_row_counts(reconciled) is None


def test_the_evaluation_lands_on_the_table_key_as_an_error_with_ids_as_text():
    key = dg.AssetKey(["lake", "raw", "orders"])
    evaluation = row_count_evaluation(
        key, reconcile_row_counts(_verified(False)), control_key="pg.orders", metadata_id=12
    )
    assert (evaluation.asset_key, evaluation.check_name) == (key, ROW_COUNT_CHECK)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
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
        return freshness_window(make_row(**row), now)

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

    [spec, source] = specs  # the table, then its source table (source_spec)
    assert spec.key == dg.AssetKey(["lake", "raw", "orders"])
    assert source.key in {dep.asset_key for dep in spec.deps}
    assert spec.kinds == {"delta", "postgresql"}
    assert spec.freshness_policy == dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=10)
    )
    # needs_review: failed by a review decision, with the release command (test_review_status).
    assert {key.name for key in checks.check_keys} == {ROW_COUNT_CHECK, NEEDS_REVIEW_CHECK}
    # The lineage draws load -> table, and the tables are grouped per source.
    assert [dep.asset_key for dep in spec.deps] == [dg.AssetKey(LOAD_ASSET), source.key]
    assert spec.group_name == f"source_postgresql_{pg_config(source_db)['database']}"
    erp = make_declared(connection_name="erp-db.main", db_type="mysql")
    assert DEFAULT_TRANSLATOR.get_group_name(erp) == "source_erp_db_main"
    on_databricks = load_settings(
        {"DATALOADER_TABLE_ASSETS_MAX": "10", "DATALOADER_EXECUTION": "databricks"}
    )
    assert (
        "databricks"
        in DEFAULT_TRANSLATOR.get_asset_spec(
            declared_table(control_db, "pg.orders"), on_databricks.execution
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
    checks = row_count_checks([dg.AssetSpec(key, metadata={"control_key": "pg.orders"})])
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=key, metadata=_verified(False, destination_rows=9))
    )

    result = dg.materialize(
        [checks],
        instance=instance,
        selection=dg.AssetSelection.checks(dg.AssetCheckKey(key, ROW_COUNT_CHECK)),
        resources={"lakebase": LakebaseResource()},  # not used by the row-count check
    )

    [evaluation] = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert (evaluation.asset_key, evaluation.passed) == (key, False)
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "source 10, destination 9" in evaluation.description


def test_a_row_whose_destination_dagster_cannot_name_is_not_declared_and_the_rest_still_are(
    control_db, source_db, db
):
    """One bad row (a destination table named like a path) must not stop the code location."""
    add_control_row(db, source_db, "pg.orders", "orders")
    add_control_row(db, source_db, "pg.bad", "bad", destination_table_name="../outside_bad")
    local = load_settings({"DATALOADER_TABLE_ASSETS_MAX": "10"})

    specs, [checks] = table_asset_definitions(local, lakebase_for(control_db))

    tables = [spec.key for spec in specs if spec.key.path[0] != "sources"]
    assert tables == [dg.AssetKey(["lake", "raw", "orders"])]
    assert {key.asset_key for key in checks.check_keys} == {specs[0].key}
