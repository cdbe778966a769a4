"""``dataloader__history_retention_job``: keep ``historical_metadata`` from growing for ever.

Deletes finished attempts older than ``DATALOADER_HISTORY_RETENTION_DAYS`` (default 400) in batches
of ``DATALOADER_HISTORY_RETENTION_BATCH_ROWS`` (default 10,000), one short transaction each, until a
batch comes back short. Unfinished attempts and the attempt each control row points at are kept
whatever their age (``dagsters/control/retention.py``). Runs daily on
``DATALOADER_HISTORY_RETENTION_CRON`` (default 03:30 UTC); a person can launch it any time, and
the launchpad's config can override the days or the batch size for one run.
"""

# No ``from __future__ import annotations``: Dagster resolves the op's config annotation at runtime.

import dagster as dg
from pydantic import Field

from dagsters.alerts import ALERT_ON_FAILURE_TAGS
from dagsters.resources.lakebase import LakebaseResource
from dagsters.settings import Settings

HISTORY_RETENTION_JOB = "dataloader__history_retention_job"
# A purge this large in one run is a misconfiguration (or a first run after years): stop and
# let the next run continue, so one run never runs for hours.
MAX_BATCHES_PER_RUN = 1000


def build_history_retention_job(settings: Settings) -> dg.JobDefinition:
    class RetentionConfig(dg.Config):
        older_than_days: int = Field(
            default=settings.history_retention_days,
            description="Delete finished history rows queued more than this many days ago",
        )
        batch_rows: int = Field(
            default=settings.history_retention_batch_rows, description="Rows per transaction"
        )

    @dg.op(name="history_retention_op")
    def history_retention_op(
        context: dg.OpExecutionContext, config: RetentionConfig, lakebase: LakebaseResource
    ) -> dg.Output:
        if config.older_than_days < 1 or config.batch_rows < 1:
            raise dg.Failure("older_than_days and batch_rows must be at least 1")
        client = lakebase.get_client()
        deleted, batches = 0, 0
        while batches < MAX_BATCHES_PER_RUN:
            count = client.purge_history_batch(config.older_than_days, config.batch_rows)
            batches += 1
            deleted += count
            if count < config.batch_rows:
                break
        context.log.info(
            f"Deleted {deleted} history row(s) older than {config.older_than_days} days in "
            f"{batches} batch(es)"
        )
        return dg.Output(
            deleted,
            metadata={
                "deleted_rows": dg.MetadataValue.int(deleted),
                "batches": dg.MetadataValue.int(batches),
                "older_than_days": dg.MetadataValue.int(config.older_than_days),
                "complete": dg.MetadataValue.bool(batches < MAX_BATCHES_PER_RUN),
            },
        )

    @dg.job(
        name=HISTORY_RETENTION_JOB,
        description=f"Deletes finished load history older than {settings.history_retention_days} "
        "days, in batches.",
        tags=ALERT_ON_FAILURE_TAGS,
    )
    def history_retention_job() -> None:
        history_retention_op()

    return history_retention_job


def build_history_retention_schedule(
    settings: Settings, job: dg.JobDefinition
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="dataloader__history_retention_schedule",
        job=job,
        cron_schedule=settings.history_retention_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.sensors_running
        else dg.DefaultScheduleStatus.STOPPED,
        description="Daily retention of historical_metadata (DATALOADER_HISTORY_RETENTION_*).",
    )
