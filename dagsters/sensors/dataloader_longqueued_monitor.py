"""longqueued_monitor: cancels runs queued longer than the threshold, then fails their rows.

Passive (no RunRequest). For each row Queued past the threshold (spec: the queued run is
*cancelled*, not just the row failed):

1. the attempt's Dagster run is found by its ``dataloader/metadata_id`` tag (a batch run by its
   ``dataloader/attempt-<metadata_id>`` tag: a started batch is loading the tables before this
   one, so its rows are left alone like any starting run's); a run still waiting
   (QUEUED / NOT_STARTED) is cancelled through the instance's run coordinator, so it can never
   start later and fail on a row that moved on;
2. a Databricks run linked to the row (if any) is cancelled, through the code location's
   ``databricks_workspace`` resource (a sensor resource argument);
3. the row is marked Failed (``Cancelled - stuck in queue for >N minutes``: retry analysis treats
   it as transient), guarded on this attempt still being Queued past the threshold.

A row whose run is already starting is left alone this tick: the run is about to move it to
In Progress, and cancelling it would turn a healthy load into a failure. With queue-aware claiming
(``dagsters/control/source_slots.py``) a row reaches this monitor only when a run really is stuck
(a run queue that is paused or misconfigured, a launch that never happened).
"""

from __future__ import annotations

import re

import dagster as dg

from dagsters.control.rows import ControlRow
from dagsters.policy.run_requests import (
    LOAD_BATCH_JOB,
    TAG_CONTROL_KEY,
    TAG_METADATA_ID,
    attempt_run_filters,
)
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import (
    alert_on_error,
    default_status,
    fail_row_that_raised,
    fail_uncomputable_rows,
)
from dagsters.settings import Settings

_WAITING = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}
_STARTING = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
_DATABRICKS_RUN = re.compile(r"(?:#job/\d+/run/|/runs/|/run/)(\d+)")


def databricks_run_id(url: str | None) -> int | None:
    """The run id in a Databricks run page link (``...#job/<job>/run/<run>``), or None."""
    match = _DATABRICKS_RUN.search(url or "")
    return int(match.group(1)) if match else None


def _cancel_queued_dagster_runs(context: dg.SensorEvaluationContext, row: ControlRow) -> str | None:
    """Cancel the attempt's waiting runs; a description, or None when a run is already starting."""
    runs = list(
        context.instance.get_runs(
            filters=dg.RunsFilter(
                tags={
                    TAG_CONTROL_KEY: str(row.control_key),
                    TAG_METADATA_ID: str(row.last_metadata_id),
                }
            )
        )
    )
    # A batch run holding the attempt (DATALOADER_RUN_BATCH_SIZE > 1): started means the
    # attempt's turn is coming (the tables before it are loading), so it is left alone too.
    _, batch = attempt_run_filters(row.last_metadata_id, row.config_id)
    runs += context.instance.get_runs(filters=dg.RunsFilter(job_name=LOAD_BATCH_JOB, tags=batch))
    if any(run.status in _STARTING for run in runs):
        return None
    done = []
    for run in runs:
        if run.status not in _WAITING:
            continue
        try:
            context.instance.run_coordinator.cancel_run(run.run_id)
            done.append(f"Dagster run {run.run_id} cancelled")
        except Exception as exc:  # noqa: BLE001 - still fail the row, say what happened
            context.log.warning(f"Could not cancel Dagster run {run.run_id}: {exc}")
            done.append(f"cancel of Dagster run {run.run_id} failed")
    return "; ".join(done) or "no queued Dagster run"


def _cancel_databricks_run(
    context: dg.SensorEvaluationContext, workspace: DatabricksWorkspaceResource, row: ControlRow
) -> str | None:
    run_id = databricks_run_id(row.last_databricks_run)
    if run_id is None:
        return None
    try:
        workspace.get_client().jobs.cancel_run(run_id)
    except Exception as exc:  # noqa: BLE001 - the row must not stay Queued because of it
        context.log.warning(f"Could not cancel Databricks run {run_id}: {type(exc).__name__}")
        return f"cancel of Databricks run {run_id} failed"
    return f"Databricks run {run_id} cancelled"


def build_longqueued_monitor(settings: Settings) -> dg.SensorDefinition:
    threshold = settings.longqueued_threshold_minutes

    @dg.sensor(
        name="longqueued_monitor",
        minimum_interval_seconds=settings.longqueued_interval_seconds,
        default_status=default_status(settings),
        description=f"Cancels runs queued for more than {threshold} minutes and fails their rows.",
    )
    @alert_on_error(settings, "longqueued_monitor")
    def longqueued_monitor(
        context: dg.SensorEvaluationContext,
        lakebase: LakebaseResource,
        databricks_workspace: DatabricksWorkspaceResource,
    ) -> dg.SkipReason:
        client = lakebase.get_client()
        fail_uncomputable_rows(context, client)
        rows = client.find_stuck_queued(threshold)
        if not rows:
            return dg.SkipReason(f"No row has been Queued for more than {threshold} minutes.")
        failed = []
        for row in rows:
            try:
                dagster = _cancel_queued_dagster_runs(context, row)
                if dagster is None:
                    context.log.info(f"{row.control_key}: its run is starting; left alone")
                    continue
                databricks = _cancel_databricks_run(context, databricks_workspace, row)
                won = client.fail_stuck_queued_attempt(
                    row.config_id, row.last_metadata_id, threshold
                )
            except Exception as exc:  # noqa: BLE001 - this row fails; the others go on
                if fail_row_that_raised(context, client, row, {"Queued"}, "the stuck check", exc):
                    failed.append(row.control_key)
                continue
            outcome = "marked Failed" if won else "left alone (moved on meanwhile)"
            context.log.warning(
                f"{row.control_key}: {'; '.join(filter(None, [dagster, databricks]))}; {outcome}"
            )
            if won:
                failed.append(row.control_key)
        if not failed:
            return dg.SkipReason("Rows stuck in queue started or moved on before being failed.")
        keys = ", ".join(failed)
        return dg.SkipReason(f"Cancelled and failed {len(failed)} row(s) stuck in queue: {keys}")

    return longqueued_monitor
