"""failed_monitor: one ``dataloader__retry_analysis`` run per failed attempt.

Rows that are Failed, under the retry limit, not marked for review and not already being analysed
are stamped ``retry_analysis_requested_at`` in the same statement that selects them, so an analysis
is requested once per failure; the run key is the failed attempt's history row.
"""

import dagster as dg

from dagsters.assets.dataloader_pipes_asset import control_key_partitions
from dagsters.resources.lakebase import LakebaseResource
from dagsters.utils.run_config import (
    PARTITIONS_NAME,
    retry_run_config,
    retry_run_key,
    retry_run_tags,
)
from dagsters.utils.settings import Settings, load_settings

RETRY_JOB = "dataloader__retry_analysis_job"


def build_failed_monitor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="failed_monitor",
        job_name=RETRY_JOB,
        minimum_interval_seconds=settings.failed_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.sensors_running
        else dg.DefaultSensorStatus.STOPPED,
        description=f"Requests a retry decision for each failure (at most {settings.max_retries} "
        "retries per table).",
    )
    def failed_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        rows = lakebase.get_client().claim_failed_for_analysis(
            settings.failed_batch_size, settings.max_retries
        )
        if not rows:
            return dg.SkipReason(
                f"No failure to analyse (Failed, retry_count < {settings.max_retries}, not under "
                "review, not already being analysed)."
            )
        new_keys = sorted(
            {
                row["control_key"]
                for row in rows
                if not context.instance.has_dynamic_partition(PARTITIONS_NAME, row["control_key"])
            }
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=retry_run_key(row),
                    run_config=retry_run_config(row),
                    tags=retry_run_tags(row),
                    partition_key=row["control_key"],
                )
                for row in rows
            ],
            dynamic_partitions_requests=(
                [control_key_partitions.build_add_request(new_keys)] if new_keys else []
            ),
        )

    return failed_monitor


failed_monitor = build_failed_monitor(load_settings())
