"""landing_table_monitor: one ``landing_table_git_job`` run for all newly loaded tables.

Batches every Succeeded row whose staging model is not generated yet. The run key is derived from
the (row, attempt) pairs in the batch, so the same batch is launched once; while a landing run is
still queued or running the monitor waits, so two runs never write the same files.
"""

import dagster as dg

from dagsters.control.run_requests import (
    LANDING_JOB,
    environment_tags,
    landing_run_config,
    landing_run_key,
)
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import default_status
from dagsters.settings import Settings

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
    def landing_table_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.RunRequest | dg.SkipReason:
        rows = lakebase.get_client().get_unprocessed_landing_tables()
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
        return dg.RunRequest(
            run_key=landing_run_key(rows),
            run_config=landing_run_config(row["config_id"] for row in rows),
            tags={
                "dataloader/table_count": str(len(rows)),
                **environment_tags(settings.environment),
            },
        )

    return landing_table_monitor
