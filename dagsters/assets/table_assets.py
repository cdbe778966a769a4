"""Each destination table as its own asset key, reported at run time by the load that wrote it.

The spec's two assets stay as they are (``dataloader__table_load``, partitioned by control_key).
In addition every successful load records a materialization of the destination table's own key,
``[destination_catalog, destination_schema_name, destination_table_name]``, with the same metadata
as the load's partition (row count, column schema, table name, watermark, links) and the source it
came from, plus the load's row-count check (``load_checks``) on that key. A dbt source mapped to
the key (docs/assets.md) gets lineage and freshness from our loads.

Every load reports the key at run time, so a table has its asset from its first load on. Up to
``DATALOADER_TABLE_ASSETS_MAX`` tables are also declared when the code location loads
(``table_specs``: kinds, freshness, the Checks tab); above the cap only the reported keys remain,
which cost one event per load (docs/assets.md, "How this scales").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from dagsters.assets.load_checks import reconcile_row_counts, row_count_evaluation
from dagsters.control.rows import ControlRow
from dagsters.control.source_connections import ResolvedSource
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator
from databricks_scripts.contract import LoadMetadata

# Text, never plotted: the identifiers of a load (the plots tab shows rows, duration, bytes).
ID_KEYS = ("control_key", "metadata_id", "config_id", "triggered_by")
LOAD_ASSET_KEY = "dataloader/load_asset"


def load_asset_kinds(execution: str) -> set[str]:
    """The kinds of the load asset where it runs: Databricks only with Databricks execution."""
    if execution == "databricks":
        return {"databricks", "spark", "delta"}
    return {"python", "delta"}


def retry_asset_kinds(execution: str) -> set[str]:
    return {"databricks", "python", "openai"} if execution == "databricks" else {"python", "openai"}


def _metadata_value(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata.get(key)
    return getattr(value, "value", value)


def schema_changed(
    context: dg.AssetExecutionContext, table: dg.AssetKey, reported: Mapping
) -> bool:
    """Did this load change the destination's columns since the table's last materialization?

    Compared here rather than in the script so both engines (Arrow and Spark) are covered alike.
    The columns are the destination table's (its asset's materializations), not the load
    asset's. A first load is not a change: a new row's staging model is still unprocessed anyway.
    """
    new_schema = _metadata_value(reported, LoadMetadata.COLUMN_SCHEMA)
    if new_schema is None:
        return False
    previous = context.instance.fetch_materializations(table, limit=1).records
    if not previous:
        return False
    materialization = previous[0].asset_materialization
    old_schema = _metadata_value(
        materialization.metadata if materialization else {}, LoadMetadata.COLUMN_SCHEMA
    )
    return old_schema is not None and old_schema != new_schema


def as_text_ids(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` with its identifiers as text, so no plot is drawn of them."""
    out = dict(metadata)
    for key in ID_KEYS + (LoadMetadata.RECONCILED_METADATA_ID, LoadMetadata.RECONCILED_VERSION):
        value = out.get(key)
        value = getattr(value, "value", value)
        if value is not None and not isinstance(value, dg.MetadataValue):
            out[key] = dg.MetadataValue.text(str(value))
    for key in (LoadMetadata.WATERMARK_BEFORE, LoadMetadata.WATERMARK_AFTER):
        value = out.get(key)
        value = getattr(value, "value", value)
        # A numeric watermark (an id cursor) would be plotted; it is a position, not a measure.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = dg.MetadataValue.text(str(value))
    return out


def load_metadata(
    reported: Mapping[str, Any],
    row: ControlRow,
    source: ResolvedSource | None,
    *,
    trigger: str,
    run_link: str | None,
    translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
) -> dict[str, Any]:
    """The load's materialization metadata: what the script reported, where it came from (the
    translator's source metadata), why it ran full, the run link; identifiers as text."""
    extra: dict[str, Any] = {
        "triggered_by": trigger,
        **translator.get_source_metadata(row, source),
    }
    rows_written = reported.get(LoadMetadata.ROWS_WRITTEN)
    rows_written = getattr(rows_written, "value", rows_written)
    if rows_written is not None and LoadMetadata.ROW_COUNT not in reported:
        extra[LoadMetadata.ROW_COUNT] = int(rows_written)
    if run_link:
        extra["databricks_run"] = dg.MetadataValue.url(run_link)
    return as_text_ids({**reported, **extra})


# What describes the destination table itself: published on the table's asset only. On the
# partitioned load asset, Dagster would show the last loaded table's columns and row count as the
# load asset's own ("Columns", "Row count" on its Overview).
TABLE_OWNED_METADATA = (LoadMetadata.COLUMN_SCHEMA, LoadMetadata.ROW_COUNT, LoadMetadata.TABLE_NAME)


def load_partition_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The load asset's materialization metadata: the load's facts, without the table's own."""
    return {k: v for k, v in metadata.items() if k not in TABLE_OWNED_METADATA}


def analysis_metadata(row: ControlRow, run_url: Callable[[str], str]) -> dict[str, Any]:
    """What a retry analysis looked at: the failed attempt, its original error, its run."""
    meta: dict[str, Any] = {
        "control_key": dg.MetadataValue.text(str(row.control_key)),
        "metadata_id": dg.MetadataValue.text(str(row.last_metadata_id)),
        "original_error": dg.MetadataValue.md(_code_block(str(row.last_message or ""))),
    }
    failed_run = str(row.last_dagster_run or "")
    if failed_run:
        link = failed_run if "://" in failed_run else run_url(failed_run)
        meta["failed_run"] = dg.MetadataValue.url(link)
    if row.last_databricks_run:
        meta["failed_databricks_run"] = dg.MetadataValue.url(str(row.last_databricks_run))
    return meta


def _code_block(text: str) -> str:
    """``text`` as a Markdown code block: an error keeps its line breaks and shows no markup."""
    fence = "```"
    return f"{fence}\n{text.replace(fence, '` ` `')}\n{fence}"


def report_destination_table(
    context: dg.AssetExecutionContext,
    row: ControlRow,
    metadata: Mapping[str, Any],
    *,
    control_key: str,
    metadata_id: int,
    translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
) -> None:
    """Record the destination table's materialization and its row-count check for this load, on
    the key ``translator`` gives the row.

    Called after the control row was written: neither can hold up or undo the status, and a
    failure to report them is a warning in the run's log, not a failed load.
    """
    try:
        _report(context, row, metadata, control_key, metadata_id, translator)
    except Exception as exc:  # noqa: BLE001 - the load succeeded and is recorded; say what is missing
        context.log.warning(
            f"{control_key}: the destination table's materialization or check was not recorded: "
            f"{type(exc).__name__}: {exc}"
        )


def _report(
    context: dg.AssetExecutionContext,
    row: ControlRow,
    metadata: Mapping[str, Any],
    control_key: str,
    metadata_id: int,
    translator: DataLoaderTranslator,
) -> None:
    key = translator.get_asset_key(row)
    table_meta = {
        **metadata,
        LOAD_ASSET_KEY: dg.MetadataValue.asset(dg.AssetKey(LOAD_ASSET)),
    }
    # The load asset's key, not the context's: a batch run's op has no asset of its own.
    context.log_event(
        dg.AssetMaterialization(
            asset_key=key,
            description=f"Loaded by {LOAD_ASSET} [{control_key}]",
            metadata=table_meta,
        )
    )
    check = reconcile_row_counts(metadata)
    if check is None:
        context.log.info(
            f"{control_key}: not reconciled (an earlier attempt's commit recorded, verify_depth "
            "none, or an engine that does not verify)"
        )
        return
    context.log_event(
        row_count_evaluation(key, check, control_key=control_key, metadata_id=metadata_id)
    )
    if not check.passed:
        context.log.error(f"{control_key}: {check.description}")
