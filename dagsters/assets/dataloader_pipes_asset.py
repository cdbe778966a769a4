"""The two assets: ``dataloader__table_load`` (one table load) and ``dataloader__retry_analysis``.

Both are partitioned by ``control_key`` (one dynamic partition per table_control row, kept in step
by master_sensor), so the Dagster UI shows each table's own status, history and row-count plot, and
a person reruns one table, or many as a backfill, by materializing its partitions.

Both run a script from ``databricks_scripts/`` through the ``pipes_databricks`` resource (local
subprocess or Databricks), and record the outcome in Lakebase: the control row and the history row.
"""

import os
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from pydantic import Field

from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource, ScriptOutcome
from dagsters.utils.lakebase_client import (
    LakebaseClient,
    LoadAlreadyActive,
    UnknownControlKey,
)
from dagsters.utils.retry_analysis import (
    apply_decision,
    build_analysis_request,
    decide_without_asking,
)
from dagsters.utils.run_config import (
    LOAD_ASSET,
    PARTITIONS_NAME,
    RETRY_ASSET,
    environment_tags,
    load_params,
)
from dagsters.utils.settings import dagster_environment, dagster_run_url
from databricks_scripts.redaction import redact, secrets_from_env

LOAD_SCRIPT = "dataloader_pipe.py"
RETRY_SCRIPT = "dataloader_retry_pipe.py"

control_key_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


class DataloaderTableConfig(dg.Config):
    """The spec's run config. master_sensor fills every field; a person may give only control_key
    (or nothing: the partition key is the control_key). The control row is authoritative: the
    other fields show what the sensor claimed, and the load reads the row itself."""

    config_id: int | None = None
    control_key: str | None = None
    metadata_id: int | None = None
    source_catalog: str | None = None
    source_schema_name: str | None = None
    source_table_name: str | None = None
    destination_catalog: str | None = None
    destination_schema_name: str | None = None
    destination_table_name: str | None = None
    db_type: str | None = None
    db_config_value: dict[str, Any] = Field(default_factory=dict)
    db_kv_scope: str | None = None
    load_strategy: str | None = None
    incremental_column: str | None = None
    incremental_value: str | None = None
    merge_keys: list[str] | None = None
    lookback_window_seconds: float = 0.0
    force_full_reload: bool = False


class RetryAnalysisConfig(dg.Config):
    """Which failure to analyse; failed_monitor fills all three, a person may give control_key."""

    config_id: int | None = None
    control_key: str | None = None
    metadata_id: int | None = None


def _safe(text: object) -> str:
    """``text`` without any secret this process can see (the shared list) or secret shape."""
    return redact(text, secrets_from_env(os.environ))


def _tag_environment(context: dg.AssetExecutionContext) -> None:
    """Tag this run with DAGSTER_ENVIRONMENT when its launcher did not (UI materializations)."""
    tags = environment_tags(dagster_environment())
    if tags and any(context.run.tags.get(k) != v for k, v in tags.items()):
        context.instance.add_run_tags(context.run.run_id, tags)


def _control_key(context: dg.AssetExecutionContext, configured: str | None) -> str:
    partition = context.partition_key if context.has_partition_key else None
    if configured and partition and configured != partition:
        raise dg.Failure(
            f"Run config control_key {configured!r} does not match partition {partition!r}; "
            "launch the partition of the table you want to load (or leave control_key out)."
        )
    key = configured or partition
    if not key:
        raise dg.Failure("No control_key: launch a partition, or set control_key in the config.")
    return key


def _begin_attempt(
    context: dg.AssetExecutionContext,
    client: LakebaseClient,
    config: DataloaderTableConfig,
    control_key: str,
) -> tuple[int, int, str]:
    """Put this run's attempt In Progress; returns (config_id, metadata_id, triggered_by).

    The sensor's attempt (metadata_id in the config) is started as claimed. A launch without one,
    or a re-execution of an earlier run, queues a fresh attempt with its own history row, so an old
    attempt's history is never overwritten.
    """
    run_id = context.run.run_id
    url = dagster_run_url(run_id)
    reexecution = context.run.parent_run_id is not None
    if config.metadata_id is not None and config.config_id is not None and not reexecution:
        if client.start_load(
            config.config_id, config.metadata_id, dagster_run_id=run_id, dagster_run_url=url
        ):
            return config.config_id, config.metadata_id, "sensor"
        row = client.get_table_details(control_key) or {}
        raise dg.Failure(
            f"{control_key}: attempt {config.metadata_id} is no longer queued (row is "
            f"{row.get('last_status')!r}: {row.get('last_message')!r}); nothing was loaded. "
            "Re-execute this run or launch the partition to load it again."
        )
    try:
        claimed = client.queue_manual_load(control_key, triggered_by="ui")
    except (UnknownControlKey, LoadAlreadyActive) as exc:
        raise dg.Failure(str(exc)) from None
    config_id, metadata_id = int(claimed["config_id"]), int(claimed["metadata_id"])
    if not client.start_load(config_id, metadata_id, dagster_run_id=run_id, dagster_run_url=url):
        raise dg.Failure(f"{control_key}: could not start attempt {metadata_id} (row changed)")
    context.log.info(f"{control_key}: new attempt {metadata_id} (triggered from the UI)")
    return config_id, metadata_id, "ui"


def _metadata_value(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata.get(key)
    return getattr(value, "value", value)


def _schema_changed(context: dg.AssetExecutionContext, control_key: str, reported: Mapping) -> bool:
    """Did this load change the destination's columns since the partition's last materialization?

    Compared here rather than in the script so both engines (Arrow and Spark) are covered alike.
    A first load is not a change: a new row's staging model is still unprocessed anyway.
    """
    new_schema = _metadata_value(reported, "dagster/column_schema")
    if new_schema is None:
        return False
    previous = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[control_key]),
        limit=1,
    ).records
    if not previous:
        return False
    materialization = previous[0].asset_materialization
    old_schema = _metadata_value(
        materialization.metadata if materialization else {}, "dagster/column_schema"
    )
    return old_schema is not None and old_schema != new_schema


def _reported_metadata(outcome: ScriptOutcome) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for result in outcome.results:
        if isinstance(result, dg.MaterializeResult):
            merged.update(result.metadata or {})
    return merged


@dg.asset(
    name=LOAD_ASSET,
    partitions_def=control_key_partitions,
    group_name="dataloader",
    kinds={"databricks", "python"},
    description="Loads one source table (the partition's control_key) into its Delta destination.",
)
def dataloader_table_load(
    context: dg.AssetExecutionContext,
    config: DataloaderTableConfig,
    lakebase: LakebaseResource,
    pipes_databricks: PipesDatabricksResource,
) -> Iterator[dg.MaterializeResult]:
    control_key = _control_key(context, config.control_key)
    _tag_environment(context)
    client = lakebase.get_client()
    config_id, metadata_id, trigger = _begin_attempt(context, client, config, control_key)
    row = client.get_table_details(control_key)
    if row is None:  # deleted between the claim and now
        raise dg.Failure(f"{control_key}: table_control row disappeared")
    params = load_params({**row, "metadata_id": metadata_id})
    databricks_url: list[str | None] = [None]

    def _link_external_run(url: str | None, external_run_id: str) -> None:
        databricks_url[0] = url
        context.log.info(f"{control_key}: Databricks run {external_run_id} {url or ''}")
        client.update_run_tracking(config_id, databricks_url=url, metadata_id=metadata_id)

    try:
        outcome = pipes_databricks.run_script(
            context,
            script=LOAD_SCRIPT,
            params=params,
            label=control_key,
            on_external_run=_link_external_run,
        )
    except DagsterExecutionInterruptedError:
        client.record_failure(
            config_id,
            metadata_id,
            f"Cancelled - Dagster run {context.run.run_id} was terminated",
            databricks_run_url=databricks_url[0],
        )
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to run must end the attempt Failed
        message = _safe(f"Load could not run: {type(exc).__name__}: {exc}")
        client.record_failure(config_id, metadata_id, message, databricks_run_url=databricks_url[0])
        raise dg.Failure(message) from None

    run_link = outcome.external_run_url or databricks_url[0]
    if outcome.error is not None:
        message = _safe(outcome.error)
        client.record_failure(config_id, metadata_id, message, databricks_run_url=run_link)
        raise dg.Failure(
            description=message,
            metadata={
                "control_key": control_key,
                "metadata_id": metadata_id,
                **({"databricks_run": dg.MetadataValue.url(run_link)} if run_link else {}),
            },
        )

    reported = _reported_metadata(outcome)
    if not reported:
        message = "Load script finished without reporting a materialization (rows, watermark)"
        client.record_failure(config_id, metadata_id, message, databricks_run_url=run_link)
        raise dg.Failure(message)
    rows_written = _metadata_value(reported, "rows_written")
    watermark_after = _metadata_value(reported, "watermark_after")
    recorded = client.record_success(
        config_id,
        metadata_id,
        rows_read=_metadata_value(reported, "rows_read"),
        rows_written=rows_written,
        watermark_after=None if watermark_after is None else str(watermark_after),
        databricks_run_url=run_link,
        schema_changed=_schema_changed(context, control_key, reported),
    )
    if not recorded:
        # The data was written; a monitor failed the row meanwhile. Say so instead of hiding it.
        context.log.warning(
            f"{control_key}: load finished but attempt {metadata_id} was no longer In Progress; "
            "the control row keeps the state a monitor gave it"
        )
    extra: dict[str, Any] = {
        "control_key": control_key,
        "metadata_id": metadata_id,
        "triggered_by": trigger,
    }
    if rows_written is not None and "dagster/row_count" not in reported:
        extra["dagster/row_count"] = int(rows_written)
    if run_link:
        extra["databricks_run"] = dg.MetadataValue.url(run_link)
    yield dg.MaterializeResult(metadata={**reported, **extra})


def _decision_from_outcome(outcome: ScriptOutcome) -> dict[str, Any] | None:
    reported = _reported_metadata(outcome)
    decision = _metadata_value(reported, "decision")
    if not decision:
        return None
    confidence = _metadata_value(reported, "confidence")
    return {
        "decision": str(decision),
        "confidence": None if confidence is None else float(confidence),
        "reason": str(_metadata_value(reported, "reason") or ""),
        "decider": str(_metadata_value(reported, "decider") or "unknown"),
    }


@dg.asset(
    name=RETRY_ASSET,
    partitions_def=control_key_partitions,
    group_name="dataloader",
    kinds={"databricks", "python"},
    output_required=False,
    description="Decides whether a failed load is retried or needs a person (failed_monitor).",
)
def dataloader_retry_analysis(
    context: dg.AssetExecutionContext,
    config: RetryAnalysisConfig,
    lakebase: LakebaseResource,
    pipes_databricks: PipesDatabricksResource,
) -> Iterator[dg.MaterializeResult]:
    control_key = _control_key(context, config.control_key)
    _tag_environment(context)
    client = lakebase.get_client()
    row = client.get_table_details(control_key)
    if row is None:
        raise dg.Failure(f"No table_control row with control_key {control_key!r}")
    if row["last_status"] != "Failed" or row["needs_review"]:
        context.log.info(
            f"{control_key}: nothing to analyse (status {row['last_status']!r}, "
            f"needs_review={row['needs_review']})"
        )
        return
    if config.metadata_id is not None and row["last_metadata_id"] != config.metadata_id:
        context.log.info(f"{control_key}: attempt {config.metadata_id} is no longer the latest")
        return

    decision = decide_without_asking(row)
    if decision is None:
        history = client.get_recent_history(row["config_id"], limit=5)
        request = build_analysis_request(row, history)
        outcome = pipes_databricks.run_script(
            context, script=RETRY_SCRIPT, params=request, label=f"retry {control_key}"
        )
        decision = _decision_from_outcome(outcome) if outcome.error is None else None
        if decision is None:
            # No decision means a person looks at it: never loop on an analysis that cannot run.
            decision = {
                "decision": "Requires Review",
                "confidence": 0.0,
                "reason": _safe(f"Retry analysis did not decide: {outcome.error or 'no answer'}"),
                "decider": "none",
            }
    applied = apply_decision(client, row, decision)
    yield dg.MaterializeResult(
        metadata={
            "control_key": control_key,
            "metadata_id": row["last_metadata_id"],
            "decision": decision["decision"],
            "confidence": decision.get("confidence"),
            "reason": decision.get("reason") or "",
            "decider": decision.get("decider") or "",
            "applied": str(applied),
        }
    )
