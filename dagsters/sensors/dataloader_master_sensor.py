"""master_sensor: claims due tables and launches one ``dataloader__table_load`` run per table.

Each tick claims up to the batch size of due rows in one transaction (status Queued + a history row
each; FOR UPDATE SKIP LOCKED, so two ticks never claim the same row), adds any new control_key as a
partition, and yields one RunRequest per row. The run key is the history row, so a repeated tick
never launches an attempt twice, and a re-queued table always gets a new run.
"""

import dagster as dg

from dagsters.assets.dataloader_pipes_asset import control_key_partitions
from dagsters.resources.lakebase import LakebaseResource
from dagsters.utils.run_config import (
    load_run_config,
    load_run_key,
    load_run_tags,
    triggered_by,
)
from dagsters.utils.settings import Settings, load_settings

LOAD_JOB = "dataloader__table_load_job"


def build_master_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="master_sensor",
        job_name=LOAD_JOB,
        minimum_interval_seconds=settings.master_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING
        if settings.sensors_running
        else dg.DefaultSensorStatus.STOPPED,
        description=f"Claims up to {settings.master_batch_size} due tables per tick and launches "
        "a load for each.",
    )
    def master_sensor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        rows = lakebase.get_client().claim_due_tables(settings.master_batch_size)
        if not rows:
            return dg.SkipReason(
                "No table is due: no active row with next_load_date_time <= now() outside "
                "Queued/In Progress."
            )
        # Every claimed key goes in the add request: the sensor daemon adds only the keys it does
        # not have yet (one lookup per key there), so checking them here as well would only
        # double that cost on every tick.
        keys = sorted({row["control_key"] for row in rows})
        context.log.info(
            f"Claimed {len(rows)} table(s): " + ", ".join(row["control_key"] for row in rows)
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=load_run_key(row),
                    run_config=load_run_config(row),
                    tags=load_run_tags(row, triggered_by=triggered_by(row)),
                    partition_key=row["control_key"],
                )
                for row in rows
            ],
            dynamic_partitions_requests=[control_key_partitions.build_add_request(keys)],
        )

    return master_sensor


master_sensor = build_master_sensor(load_settings())
