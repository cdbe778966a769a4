"""failed_monitor: one ``dataloader__retry_analysis`` run per failed attempt.

Rows that are Failed, not marked for review and not already being analysed are stamped
``retry_analysis_requested_at`` in the same statement that selects them, so each failure is handled
once. Rows under the retry limit get an analysis run (run key: the failed attempt's history row);
rows that have used their retries are marked for review here, by rule, without asking anyone.

An analysis that died before writing its decision (run crashed, Databricks unreachable) would
leave the stamp for ever; a stamp older than ``DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES`` (60) is
therefore taken back by the same guarded claim, and the failure gets a second analysis run with a
new run key, unless the first analysis run is in fact still queued or running in Dagster.
"""

import dagster as dg

from dagsters.assets.dataloader_pipes_asset import control_key_partitions
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import default_status
from dagsters.utils.retry_analysis import apply_decision, decide_without_asking
from dagsters.utils.run_config import (
    TAG_METADATA_ID,
    environment_tags,
    retry_run_config,
    retry_run_key,
    retry_run_tags,
)
from dagsters.utils.settings import Settings, load_settings

RETRY_JOB = "dataloader__retry_analysis_job"
_ANY_RETRY_COUNT = 2**31 - 1
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _analysis_run_key(row: dict) -> str:
    previous = row.get("previous_analysis_requested_at")
    if previous is None:
        return retry_run_key(row)
    # A second analysis of the same attempt: the first run key is spent (Dagster would drop it).
    return f"{retry_run_key(row)}:again-{int(row['retry_analysis_requested_at'].timestamp())}"


def _still_running(context: dg.SensorEvaluationContext, row: dict) -> str | None:
    """Run id of an analysis run for this attempt that is still queued or running, if any."""
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=RETRY_JOB,
            statuses=_ACTIVE,
            tags={TAG_METADATA_ID: str(row.get("last_metadata_id"))},
        ),
        limit=1,
    )
    return records[0].dagster_run.run_id if records else None


def _exhausted(row: dict, max_retries: int) -> dict:
    # decide_without_asking uses the spec's limit of 3; a lower DATALOADER_MAX_RETRIES lands here.
    return {
        "decision": "Requires Review",
        "confidence": 1.0,
        "reason": f"Failed after {row['retry_count']} of {max_retries} automatic retries.",
        "decider": "rules",
    }


def build_failed_monitor(settings: Settings) -> dg.SensorDefinition:
    timeout = settings.retry_analysis_timeout_minutes

    @dg.sensor(
        name="failed_monitor",
        job_name=RETRY_JOB,
        minimum_interval_seconds=settings.failed_interval_seconds,
        default_status=default_status(settings),
        description=f"Requests a retry decision for each failure (at most {settings.max_retries} "
        "retries per table).",
    )
    def failed_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        client = lakebase.get_client()
        # Every failure not yet handled, whatever its retry count: the exhausted ones are settled
        # below, so they do not sit Failed without a review marker.
        claimed = client.claim_failed_for_analysis(
            settings.failed_batch_size, _ANY_RETRY_COUNT, stale_after_minutes=timeout
        )
        rows = []
        for row in claimed:
            if row["retry_count"] >= settings.max_retries:
                continue
            if row.get("previous_analysis_requested_at") is not None:
                # Rare (an analysis that never decided): one run lookup for such rows only.
                active = _still_running(context, row)
                if active:
                    context.log.info(
                        f"{row['control_key']}: analysis run {active} is still in flight after "
                        f"{timeout} min; waiting for it"
                    )
                    continue
                context.log.warning(
                    f"{row['control_key']}: analysis requested at "
                    f"{row['previous_analysis_requested_at']} never decided; analysing again"
                )
            rows.append(row)
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
                    run_key=_analysis_run_key(row),
                    run_config=retry_run_config(row),
                    tags={**retry_run_tags(row), **environment_tags(settings.environment)},
                    partition_key=row["control_key"],
                )
                for row in rows
            ],
            dynamic_partitions_requests=[control_key_partitions.build_add_request(keys)],
        )

    return failed_monitor


failed_monitor = build_failed_monitor(load_settings())
