"""Batch runs: one run loads up to ``DATALOADER_RUN_BATCH_SIZE`` tables of one source, one by one.

Opt-in (the default, 1, is one run per table). A tiny table's run costs seconds of run-worker start
(spawning it, importing Dagster and the code location) for under a second of load; a batch run
pays that once for N tables (docs/operations.md, "Batch runs").

Every table in a batch keeps what a run of its own gives it:

- its own claim and attempt (master_sensor claims the rows, a history row each), started In
  Progress when its turn comes, with this run's link;
- its own outcome: Succeeded or Failed on its own row and history row, its own retry decision
  (failed_monitor looks at rows, not runs); a failing table fails only itself, the batch goes on
  to the next table, and the run ends failed naming the tables that failed;
- its own materialization of its ``dataloader__table_load`` partition (an ``AssetMaterialization``
  for the partition: the op targets no asset, so the Pipes script names the load asset itself) and
  of its destination table's asset with the row-count check;
- its own termination: terminating the run ends the table that is loading
  ``Cancelled - Dagster run <id> was terminated`` and the tables not yet started
  ``Cancelled - ... before this table's load started``.

The run carries one tag per attempt (``dataloader/attempt-<metadata_id>``), which is how the
orphan-claim check and longqueued_monitor find it; longrunning_monitor finds it by the row's run
link, as for any load. A UI rerun of one table is the partition's own run, as before.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagsters.assets.dataloader_pipes_asset import (
    LOAD_SCRIPT,
    _Attempt,
    _begin_attempt,
    _load_params,
    _safe,
)
from dagsters.assets.launch_config import LoadConfig
from dagsters.assets.table_assets import (
    load_metadata,
    load_partition_metadata,
    report_destination_table,
)
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import (
    LOAD_ASSET,
    LOAD_BATCH_JOB,
    LOAD_BATCH_OP,
    attempt_tag,
    environment_tags,
)
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import Settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import KIND_CANCELLED


class BatchAttempt(dg.Config):
    """One claimed attempt of a batch (master_sensor fills all three)."""

    config_id: int
    control_key: str
    metadata_id: int


class BatchConfig(dg.Config):
    """The attempts of one batch run, loaded in this order."""

    attempts: list[BatchAttempt]


def _terminated(context: dg.OpExecutionContext) -> str:
    return f"Cancelled - Dagster run {context.run.run_id} was terminated"


def _start_one(
    context: dg.OpExecutionContext,
    client: LakebaseClient,
    settings: Settings,
    item: BatchAttempt,
    translator: DataLoaderTranslator,
) -> tuple[_Attempt, LoadConfig, str]:
    """Put one table's attempt In Progress: (attempt, config, triggered_by)."""
    config = LoadConfig(
        config_id=item.config_id, metadata_id=item.metadata_id, control_key=item.control_key
    )
    attempt = _Attempt(
        context,  # type: ignore[arg-type]
        client,
        settings,
        item.control_key,
        translator,
    )
    attempt.config_id, attempt.metadata_id, trigger = _begin_attempt(
        context,  # type: ignore[arg-type]
        client,
        config,
        item.control_key,
        settings,
    )
    if attempt.metadata_id != item.metadata_id:  # a re-executed batch made a new attempt
        context.instance.add_run_tags(
            context.run.run_id, {attempt_tag(attempt.metadata_id): str(attempt.config_id)}
        )
    return attempt, config, trigger


def _load_one(
    context: dg.OpExecutionContext,
    client: LakebaseClient,
    settings: Settings,
    pipes_databricks: PipesDatabricksResource,
    item: BatchAttempt,
    translator: DataLoaderTranslator,
) -> None:
    """One table of the batch, as the load asset runs it; raises when this table failed."""
    attempt, config, trigger = _start_one(context, client, settings, item, translator)
    try:
        params = _load_params(attempt, pipes_databricks, config, trigger)
        reported, run_link = attempt.record(attempt.run(pipes_databricks, params))
    except dg.DagsterExecutionInterruptedError:
        attempt.settle(dg.Failure(_terminated(context)), KIND_CANCELLED)
        raise
    except Exception as exc:
        attempt.settle(exc)
        raise
    _materialize(context, attempt, reported, run_link, trigger)


def _materialize(
    context: dg.OpExecutionContext,
    attempt: _Attempt,
    reported: dict[str, Any],
    run_link: str | None,
    trigger: str,
) -> None:
    """The table's destination asset (with its check) and its load partition, materialized."""
    key = attempt.control_key
    if not context.instance.has_dynamic_partition(PARTITIONS_NAME, key):
        raise dg.Failure(
            f"{key}: partition {key!r} no longer exists (the row was deleted or its control_key "
            "renamed while loading), so nothing is materialized in Dagster; the table_control "
            "row and its history say what was recorded"
        )
    metadata = load_metadata(
        reported,
        attempt.row,
        attempt.resolved,
        trigger=trigger,
        run_link=run_link,
        translator=attempt.translator,
    )
    metadata.update(control_key=key, metadata_id=str(attempt.metadata_id))
    report_destination_table(
        context,  # type: ignore[arg-type]
        attempt.row,
        metadata,
        control_key=key,
        metadata_id=attempt.metadata_id,
        translator=attempt.translator,
    )
    context.log_event(
        dg.AssetMaterialization(
            asset_key=LOAD_ASSET,
            partition=key,
            description=f"Loaded in batch run {context.run.run_id}",
            metadata=load_partition_metadata(metadata),
        )
    )


def _cancel_not_started(
    context: dg.OpExecutionContext, client: LakebaseClient, rest: list[BatchAttempt]
) -> None:
    """The run was terminated: the tables whose turn never came end Cancelled (guarded)."""
    message = f"{_terminated(context)} before this table's load started"
    for item in rest:
        try:
            client.record_failure(
                item.config_id, item.metadata_id, message, failure_kind=KIND_CANCELLED
            )
        except Exception as exc:  # noqa: BLE001 - the interrupt must not wait; the monitors settle
            context.log.error(f"{item.control_key}: could not record the cancel: {exc}")


def _run_batch(
    context: dg.OpExecutionContext,
    client: LakebaseClient,
    settings: Settings,
    pipes_databricks: PipesDatabricksResource,
    attempts: list[BatchAttempt],
    translator: DataLoaderTranslator,
) -> dict[str, str]:
    """Load each attempt in turn; the tables that failed, with why."""
    failed: dict[str, str] = {}
    for index, item in enumerate(attempts):
        context.log.info(f"{item.control_key}: table {index + 1} of {len(attempts)}")
        try:
            _load_one(context, client, settings, pipes_databricks, item, translator)
        except dg.DagsterExecutionInterruptedError:
            _cancel_not_started(context, client, attempts[index + 1 :])
            raise
        except dg.Failure as exc:
            failed[item.control_key] = exc.description or str(exc)
        except Exception as exc:  # noqa: BLE001 - this table failed (settled); the others go on
            failed[item.control_key] = f"{type(exc).__name__}: {exc}"
        if item.control_key in failed:
            context.log.error(f"{item.control_key}: failed: {failed[item.control_key]}")
    return failed


def _run_batch_on_databricks(
    context: dg.OpExecutionContext,
    client: LakebaseClient,
    settings: Settings,
    pipes_databricks: PipesDatabricksResource,
    attempts: list[BatchAttempt],
    translator: DataLoaderTranslator,
) -> dict[str, str]:
    """ONE Databricks run for the batch (a task per table, dagsters/runners/databricks_batch.py);
    each table is started, recorded and materialized on its own; the tables that failed."""
    failed: dict[str, str] = {}
    started: list[tuple[_Attempt, str, dict[str, Any]]] = []
    for index, item in enumerate(attempts):
        try:
            attempt, config, trigger = _start_one(context, client, settings, item, translator)
            try:
                params = _load_params(attempt, pipes_databricks, config, trigger)
                started.append((attempt, trigger, params))
            except Exception as exc:
                attempt.settle(exc)
                raise
        except dg.DagsterExecutionInterruptedError:
            _cancel_not_started(context, client, attempts[index:])
            _cancel_started(context, [a for a, _, _ in started])
            raise
        except Exception as exc:  # noqa: BLE001 - this table failed (settled); the others go on
            failed[item.control_key] = _why(exc)
    if not started:
        return failed
    items = [
        (attempt.control_key, params, attempt.link_external_run) for attempt, _, params in started
    ]
    try:
        outcomes = pipes_databricks.run_script_batch(context, script=LOAD_SCRIPT, items=items)
    except dg.DagsterExecutionInterruptedError as stopped:
        # Tables whose task finished before the cancel are recorded as loaded (their Delta
        # commit is there); the others end Cancelled.
        finished = getattr(stopped, "finished", {})
        for index, (attempt, trigger, _) in enumerate(started):
            if index in finished:
                _record_one(context, attempt, trigger, finished[index], failed)
        _cancel_started(context, [a for i, (a, _, _) in enumerate(started) if i not in finished])
        raise
    except Exception as exc:  # noqa: BLE001 - the run could not run: every started table fails
        message = _safe(f"Load could not run: {type(exc).__name__}: {exc}", settings)
        for attempt, _, _ in started:
            attempt.settle(dg.Failure(message))
            failed[attempt.control_key] = message
        return failed
    for (attempt, trigger, _), outcome in zip(started, outcomes, strict=True):
        _record_one(context, attempt, trigger, outcome, failed)
    return failed


def _record_one(
    context: dg.OpExecutionContext,
    attempt: _Attempt,
    trigger: str,
    outcome: Any,
    failed: dict[str, str],
) -> None:
    """One table's outcome recorded and materialized; a failure settles only this table."""
    try:
        reported, run_link = attempt.record(outcome)
        _materialize(context, attempt, reported, run_link, trigger)
    except Exception as exc:  # noqa: BLE001 - this table failed (settled); the others go on
        attempt.settle(exc)
        failed[attempt.control_key] = _why(exc)


def _cancel_started(context: dg.OpExecutionContext, started: list[_Attempt]) -> None:
    """The run was terminated: each started table ends Cancelled (guarded: never twice)."""
    for attempt in started:
        attempt.fail(_terminated(context), retry=False, kind=KIND_CANCELLED)


def _why(exc: Exception) -> str:
    if isinstance(exc, dg.Failure):
        return exc.description or str(exc)
    return f"{type(exc).__name__}: {exc}"


def build_load_batch_job(
    settings: Settings, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.JobDefinition:
    """``dataloader__table_load_batch_job``: the tables of one source, one after the other (each
    table's materialization on ``translator``'s key, as the load asset reports it)."""

    @dg.op(name=LOAD_BATCH_OP, description="Loads the batch's tables one by one.")
    def load_batch(
        context: dg.OpExecutionContext,
        config: BatchConfig,
        lakebase: LakebaseResource,
        pipes_databricks: PipesDatabricksResource,
    ) -> None:
        tags = environment_tags(settings.environment)
        if tags and any(context.run.tags.get(k) != v for k, v in tags.items()):
            context.instance.add_run_tags(context.run.run_id, tags)
        on_databricks = pipes_databricks.execution == "databricks"
        run = _run_batch_on_databricks if on_databricks else _run_batch
        failed = run(
            context,
            lakebase.get_client(),
            settings,
            pipes_databricks,
            list(config.attempts),
            translator,
        )
        if failed:
            raise dg.Failure(
                f"{len(failed)} of {len(config.attempts)} table(s) failed (each recorded on its "
                "own row; the others were loaded): "
                + "; ".join(f"{key}: {why}" for key, why in failed.items())[:4000],
                metadata={"failed": dg.MetadataValue.json(_short(failed))},
            )

    @dg.job(
        name=LOAD_BATCH_JOB,
        description="Several tables of one source in one run; launched by master_sensor when "
        "DATALOADER_RUN_BATCH_SIZE > 1.",
        tags=environment_tags(settings.environment),
        executor_def=dg.in_process_executor,  # one step: no second process (like the load job)
    )
    def load_batch_job() -> None:
        load_batch()

    return load_batch_job


def _short(failed: Mapping[str, str]) -> dict[str, Any]:
    return {key: why[:500] for key, why in failed.items()}
