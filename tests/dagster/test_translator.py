"""A translator of your own (issue 24): ``build_definitions(settings, translator=...)`` names
every table asset with it, as dagster-dlt's and dagster-dbt's translators do. A subclass that
prefixes the key and renames the group changes the declared specs, their checks, the load's
runtime materialization, the deep verification's lookup and the review status alike."""

from __future__ import annotations

import os

import dagster as dg
from helpers import add_control_row, claim_due, lakebase_for, make_row
from test_load_asset import lakebase_env, resources

from dagsters.assets.deep_verify import DEEP_CHECK, DEEP_VERIFY_JOB
from dagsters.assets.load_checks import ROW_COUNT_CHECK
from dagsters.control.rows import ControlRow
from dagsters.control.table_listing import DeclaredTable
from dagsters.definitions import build_definitions
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, load_run_config
from dagsters.review_status import NEEDS_REVIEW_CHECK, review_events
from dagsters.settings import load_settings
from dagsters.translator import DataLoaderTranslator
from dagsters.utils.lakebase_client import LakebaseClient

DEFAULT_KEY = dg.AssetKey(["lake", "raw", "orders"])
TABLE = dg.AssetKey(["warehouse", "lake", "raw", "orders"])
GROUP = "dataloader_tables"


class WarehouseTranslator(DataLoaderTranslator):
    """Every destination table under ``warehouse/``, all in one group."""

    def get_asset_key(self, row: ControlRow | DeclaredTable) -> dg.AssetKey:
        return super().get_asset_key(row).with_prefix("warehouse")

    def get_group_name(self, row: DeclaredTable) -> str:
        return GROUP


def _checks_of(graph, key: dg.AssetKey) -> set[str]:
    return {check.name for check in graph.asset_check_keys if check.asset_key == key}


def _evaluations(result: dg.ExecuteInProcessResult) -> list[dg.AssetCheckEvaluation]:
    return [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]


def test_a_translator_of_your_own_names_the_table_everywhere(
    control_db, source_db, source, lake_root, db, instance, monkeypatch
):
    add_control_row(
        db, source_db, "pg.orders", "orders", load_strategy="merge", merge_keys=["order_id"]
    )
    lakebase_env(monkeypatch, control_db)
    monkeypatch.setenv("DATALOADER_TABLE_ASSETS_MAX", "10")
    monkeypatch.setenv("DATALOADER_LAKE_ROOT", str(lake_root))
    defs = build_definitions(load_settings(dict(os.environ)), translator=WarehouseTranslator())

    # The declared graph: the table under its new key and group, its source in the group too,
    # and every check of the table on the new key.
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert TABLE in keys and DEFAULT_KEY not in keys
    assert graph.get(TABLE).group_name == GROUP
    [source_key] = [k for k in graph.get(TABLE).parent_keys if k.path[0] == "sources"]
    assert graph.get(source_key).group_name == GROUP
    assert _checks_of(graph, TABLE) == {ROW_COUNT_CHECK, NEEDS_REVIEW_CHECK, DEEP_CHECK}

    # A real load through the load asset these definitions built: the table's materialization
    # and its checks land on the new key, nothing on the shipped one.
    with LakebaseClient(control_db) as client:
        [claimed] = claim_due(client, 10)
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["pg.orders"])
    result = dg.materialize(
        [defs.get_assets_def(LOAD_ASSET)],
        partition_key="pg.orders",
        run_config=load_run_config(claimed),
        resources=resources(control_db, lake_root),
        instance=instance,
    )
    event = instance.get_latest_materialization_event(TABLE)
    assert event is not None and event.run_id == result.run_id
    assert instance.get_latest_materialization_event(DEFAULT_KEY) is None
    table_checks = {(e.check_name, e.passed) for e in _evaluations(result) if e.asset_key == TABLE}
    assert table_checks == {(ROW_COUNT_CHECK, True), (NEEDS_REVIEW_CHECK, True)}
    assert all(e.asset_key != DEFAULT_KEY for e in _evaluations(result))

    # The deep verification finds the row behind the new key (a lookup by the shipped key would
    # say no row loads this table).
    deep = defs.resolve_job_def(DEEP_VERIFY_JOB).execute_in_process(
        instance=instance, resources={"lakebase": lakebase_for(control_db)}
    )
    [verified] = _evaluations(deep)
    assert (verified.asset_key, verified.check_name) == (TABLE, DEEP_CHECK)
    assert verified.passed, verified.description


def test_a_row_sent_to_review_is_said_on_the_translated_key():
    row = make_row(
        control_key="pg.orders",
        destination_catalog="lake",
        destination_schema_name="raw",
        destination_table_name="orders",
    )
    events = review_events(row, "source table gone", WarehouseTranslator())
    on_tables = {e.asset_key for e in events if e.asset_key != dg.AssetKey(LOAD_ASSET)}
    assert on_tables == {TABLE}
    assert {e.asset_key for e in review_events(row, "source table gone")} >= {DEFAULT_KEY}
