"""Each load also materializes the destination table's own asset key, with the load's metadata,
its source, why it ran full, its row-count and freshness checks; the history says which strategy
was applied; ids are text; the asset kinds say where the load runs; a retry analysis shows the
original error and links to the failed run."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
from helpers import add_control_row, history, make_row, typed_control_row
from test_load_asset import claim_and_materialize

from dagsters.assets.dataloader_pipes_asset import build_load_asset, build_retry_asset
from dagsters.assets.load_checks import ROW_COUNT_CHECK
from dagsters.assets.table_assets import analysis_metadata
from dagsters.settings import load_settings

TABLE = dg.AssetKey(["lake", "raw", "orders"])


def _latest_check(instance: dg.DagsterInstance, name: str):
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(TABLE, name), limit=1
    )
    return record.event.dagster_event.event_specific_data


def _value(metadata, key):
    return getattr(metadata[key], "value", metadata[key])


def test_a_load_materializes_the_table_key_with_its_source_checks_and_strategy(
    control_db, source_db, source, lake_root, db, instance
):
    add_control_row(db, source_db, "pg.orders", "orders")

    result, claimed = claim_and_materialize(control_db, lake_root, instance, "pg.orders")

    assert result.success
    event = instance.get_latest_materialization_event(TABLE)
    assert event is not None and event.run_id == result.run_id
    meta = event.asset_materialization.metadata
    assert _value(meta, "dagster/row_count") == 25
    assert (
        "dagster/column_schema" in meta and _value(meta, "dagster/table_name") == "lake.raw.orders"
    )
    assert meta["metadata_id"] == dg.MetadataValue.text(str(claimed.metadata_id))
    assert meta["control_key"] == dg.MetadataValue.text("pg.orders")
    assert meta["source_system"] == dg.MetadataValue.text("postgresql")
    assert (_value(meta, "source_schema"), _value(meta, "source_table")) == ("public", "orders")
    assert _value(meta, "full_load_reason") == "first load"
    assert not any("password" in str(v).lower() for v in meta.values())
    checked = _latest_check(instance, ROW_COUNT_CHECK)
    assert checked.passed and checked.metadata["source_rows"].value == 25

    [attempt] = history(db, "pg.orders")
    assert (attempt["load_strategy"], attempt["requested_load_strategy"]) == ("full", "incremental")
    assert attempt["full_load_reason"] == "first load"
    assert attempt["message"] == "Loaded 25 rows (full load: first load)"

    source.execute("INSERT INTO public.orders VALUES (26, 1, '2024-03-01'), (27, 2, '2024-03-02')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.orders")

    assert result.success
    second = db.execute(
        "SELECT load_strategy, message FROM v_load_history ORDER BY metadata_id DESC LIMIT 1"
    ).fetchone()
    assert second == {"load_strategy": "incremental", "message": "Loaded 2 rows (incremental load)"}
    checked = _latest_check(instance, ROW_COUNT_CHECK)
    assert checked.passed
    assert checked.severity == dg.AssetCheckSeverity.ERROR
    facts = {k: v.value for k, v in checked.metadata.items() if k.startswith(("source", "dest"))}
    assert facts["source_rows_new"] == facts["destination_rows_new"] == 2
    assert facts["source_rows"] == facts["destination_rows"] == 27
    meta = instance.get_latest_materialization_event(TABLE).asset_materialization.metadata
    assert _value(meta, "dagster/row_count") == 27


def test_a_destination_changed_behind_the_loaders_back_fails_the_check_and_says_so(
    control_db, source_db, source, lake_root, db, instance
):
    from deltalake import DeltaTable

    add_control_row(db, source_db, "pg.orders", "orders")
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.orders")
    assert result.success and _latest_check(instance, ROW_COUNT_CHECK).passed
    path = _value(
        instance.get_latest_materialization_event(TABLE).asset_materialization.metadata,
        "destination",
    )
    DeltaTable(str(path)).delete("order_id <= 3")  # old rows: no later incremental load reads them
    source.execute("INSERT INTO public.orders VALUES (26, 1, '2024-03-01')")
    db.execute("UPDATE table_control SET next_load_date_time = now()")
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.orders")

    assert result.success  # the load itself committed what it read; the check is red
    checked = _latest_check(instance, ROW_COUNT_CHECK)
    assert not checked.passed and checked.severity == dg.AssetCheckSeverity.ERROR
    assert "3 source row(s) missing from the table" in checked.description
    row = db.execute("SELECT last_message FROM table_control").fetchone()
    assert "RECONCILIATION FAILED (counts)" in row["last_message"], row
    [*_, latest] = history(db, "pg.orders")
    assert "RECONCILIATION FAILED" in latest["message"]


def test_kinds_say_where_the_assets_run():
    local = load_settings({})
    databricks = load_settings({"DATALOADER_EXECUTION": "databricks"})
    for build in (build_load_asset, build_retry_asset):
        assert "databricks" not in next(iter(build(local).specs)).kinds
        assert "databricks" in next(iter(build(databricks).specs)).kinds


def test_retry_analysis_metadata_shows_the_original_error_and_links_the_failed_run():
    row = make_row(
        control_key="pg.orders",
        last_metadata_id=41,
        last_message="load failed at step 'read source': connection refused",
        last_dagster_run="http://127.0.0.1:3000/runs/abc",
    )
    meta = analysis_metadata(row, lambda run_id: f"http://ui/runs/{run_id}")
    assert "connection refused" in meta["original_error"].value
    assert meta["failed_run"] == dg.MetadataValue.url("http://127.0.0.1:3000/runs/abc")
    assert meta["metadata_id"] == dg.MetadataValue.text("41")
    by_id = analysis_metadata(replace(row, last_dagster_run="abc"), lambda r: f"http://ui/runs/{r}")
    assert by_id["failed_run"] == dg.MetadataValue.url("http://ui/runs/abc")


def test_progress_shows_rows_so_far_of_the_sources_own_estimate(source_db, source, db):
    """A full load's progress lines say how far it is, from PostgreSQL's catalog estimate."""

    from dagsters.policy.run_requests import load_params
    from databricks_scripts.engines.arrow.stream import Progress
    from databricks_scripts.load.params import parse_load_spec
    from databricks_scripts.sources.readers import open_source

    add_control_row(db, source_db, "pg.orders", "orders")
    spec = parse_load_spec(load_params(typed_control_row(db, "pg.orders"), metadata_id=1))
    source.execute("ANALYZE public.orders")
    reader = open_source(spec, None, batch_bytes=1 << 20, batch_rows=1000)
    try:
        assert reader.estimated_rows() == 25
    finally:
        reader.close()
    lines: list[str] = []
    progress = Progress(lines.append, "public.orders", 0, estimated_total=25)
    progress.add(10)
    assert lines == ["public.orders: 10 rows read so far (of ~25 estimated, 40%)"]
    Progress(lines.append, "t", 0).add(3)
    assert lines[-1] == "t: 3 rows read so far"
