"""landing_table_monitor: one ``landing_table_git_job`` run for all newly loaded tables.

Batches every Succeeded row whose staging model is not generated yet. The run key is derived from
the (row, attempt) pairs in the batch, so a batch is launched once per tick at most; while a landing
run is still queued or running the monitor waits, so two runs never write the same files.

A run that ended without marking its rows (a failed push, a warehouse error) leaves them
unprocessed; the next tick launches the same batch again under the key ``<batch>#<n>`` (n = runs
of that batch so far, counted by the ``dataloader/landing_batch`` tag), so a failure is retried
every ``DATALOADER_LANDING_INTERVAL_SECONDS`` instead of never.
"""

import dagster as dg

from dagsters.policy.run_requests import (
    LANDING_JOB,
    environment_tags,
    landing_run_config,
    landing_run_key,
)
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import alert_on_error, default_status, fail_uncomputable_rows
from dagsters.settings import Settings

LANDING_BATCH_TAG = "dataloader/landing_batch"
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_landing_table_monitor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_table_monitor",
        job_name=LANDING_JOB,
        minimum_interval_seconds=settings.landing_interval_seconds,
        default_status=default_status(settings),
        description="Batches newly loaded tables into one landing_table_git_job run.",
    )
    @alert_on_error(settings, "landing_table_monitor")
    def landing_table_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.RunRequest | dg.SkipReason:
        client = lakebase.get_client()
        fail_uncomputable_rows(context, client)
        rows = client.get_unprocessed_landing_tables()
        if not rows:
            return dg.SkipReason("No newly loaded table is waiting for its staging model.")
        active = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=LANDING_JOB, statuses=_ACTIVE), limit=1
        )
        if active:
            return dg.SkipReason(
                f"{len(rows)} table(s) waiting; landing run {active[0].dagster_run.run_id} "
                "is still in flight."
            )
        batch = landing_run_key(rows)
        earlier = len(
            context.instance.get_run_records(
                filters=dg.RunsFilter(job_name=LANDING_JOB, tags={LANDING_BATCH_TAG: batch})
            )
        )
        if earlier:
            context.log.info(f"Batch {batch} ran {earlier} time(s) without settling; again")
        return dg.RunRequest(
            run_key=f"{batch}#{earlier}" if earlier else batch,
            run_config=landing_run_config(row.config_id for row in rows),
            tags={
                "dataloader/table_count": str(len(rows)),
                LANDING_BATCH_TAG: batch,
                **environment_tags(settings.environment),
            },
        )

    return landing_table_monitor
