"""failed_monitor: one ``dataloader__retry_analysis`` run per failed attempt.

Rows that are Failed, not marked for review and not already being analysed are stamped
``retry_analysis_requested_at`` in the same statement that selects them, so each failure is handled
once. Rows under the retry limit get an analysis run (run key: the failed attempt's history row);
rows that have used their retries are marked for review here, by rule, without asking anyone.
"""

import dagster as dg

from dagsters.assets.dataloader_pipes_asset import control_key_partitions
from dagsters.resources.lakebase import LakebaseResource
from dagsters.utils.retry_analysis import apply_decision, decide_without_asking
from dagsters.utils.run_config import (
    retry_run_config,
    retry_run_key,
    retry_run_tags,
)
from dagsters.utils.settings import Settings, load_settings

RETRY_JOB = "dataloader__retry_analysis_job"
_ANY_RETRY_COUNT = 2**31 - 1


def _exhausted(row: dict, max_retries: int) -> dict:
    # decide_without_asking uses the spec's limit of 3; a lower DATALOADER_MAX_RETRIES lands here.
    return {
        "decision": "Requires Review",
        "confidence": 1.0,
        "reason": f"Failed after {row['retry_count']} of {max_retries} automatic retries.",
        "decider": "rules",
    }


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
        client = lakebase.get_client()
        # Every failure not yet handled, whatever its retry count: the exhausted ones are settled
        # below, so they do not sit Failed without a review marker.
        claimed = client.claim_failed_for_analysis(settings.failed_batch_size, _ANY_RETRY_COUNT)
        rows = [r for r in claimed if r["retry_count"] < settings.max_retries]
        exhausted = [r for r in claimed if r["retry_count"] >= settings.max_retries]
        for row in exhausted:
            decision = decide_without_asking(row) or _exhausted(row, settings.max_retries)
            outcome = apply_decision(client, row, decision)
            context.log.info(f"{row['control_key']}: retries used up; {outcome}")
        if not rows:
            reviewed = (
                f" Marked {len(exhausted)} for review (retries used up)." if exhausted else ""
            )
            return dg.SkipReason(
                f"No failure to analyse (Failed, retry_count < {settings.max_retries}, not under "
                f"review, not already being analysed).{reviewed}"
            )
        # Every claimed key goes in the add request: the sensor daemon adds only the keys it does
        # not have yet (one lookup per key there), so checking them here as well would only
        # double that cost on every tick.
        keys = sorted({row["control_key"] for row in rows})
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
            dynamic_partitions_requests=[control_key_partitions.build_add_request(keys)],
        )

    return failed_monitor


failed_monitor = build_failed_monitor(load_settings())
