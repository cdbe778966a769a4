"""Claims without a run: master_sensor settles them in minutes instead of the 60-minute monitor.

A claim (row Queued + history row) is committed before the sensor daemon creates its run. If the
tick fails after the claim, master_sensor releases what it claimed at once
(:func:`release_after_failed_tick`). If the daemon dies in that window, nothing is left to do so;
every tick therefore also looks at rows Queued longer than ``ORPHAN_AFTER_MINUTES``
(:func:`settle_orphan_claims`): no run carries the attempt's metadata_id tag (nor, for a batch
run, its ``dataloader/attempt-<metadata_id>`` tag) -> the claim is
released (ready again, due at once); the run exists but already ended without starting the
attempt (it failed to launch) -> the attempt is Failed with what happened to its run.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from dagsters.control.rows import ClaimedRow, ControlRow
from dagsters.policy.run_requests import LOAD_BATCH_JOB, attempt_run_filters
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import KIND_ORPHANED

# Long enough for a queued run to be created by any healthy daemon, far below the 60-minute
# long-queued threshold.
ORPHAN_AFTER_MINUTES = 5
_FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


def release_after_failed_tick(
    client: LakebaseClient, rows: Sequence[ClaimedRow], error: BaseException
) -> list[ControlRow]:
    """The tick failed after claiming ``rows``: give them back (their runs were never requested)."""
    return client.release_claims(
        rows,
        "Released: master_sensor's tick failed after claiming this row and before requesting "
        f"its run ({type(error).__name__}: {error}); it is due again on the next tick",
    )


def attempt_run_records(instance: dg.DagsterInstance, row: ClaimedRow, job_name: str) -> list:
    """The run of the row's attempt (``metadata_id``): its own run, or the batch run holding it."""
    own, batch = attempt_run_filters(row.metadata_id, row.config_id)
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, tags=own), limit=1)
    if records:
        return list(records)
    return list(
        instance.get_run_records(
            filters=dg.RunsFilter(job_name=LOAD_BATCH_JOB, tags=batch), limit=1
        )
    )


def settle_orphan_claims(
    context: dg.SensorEvaluationContext, client: LakebaseClient, job_name: str
) -> list[str]:
    """Release or fail rows Queued past the threshold whose run never started the attempt."""
    settled: list[str] = []
    for row in client.queued_longer_than(ORPHAN_AFTER_MINUTES):
        records = attempt_run_records(context.instance, row, job_name)
        if not records:
            done = bool(
                client.release_claims(
                    [row],
                    f"Released: no Dagster run was created for attempt {row.metadata_id} within "
                    f"{ORPHAN_AFTER_MINUTES} minutes of its claim (sensor daemon stopped?); it is "
                    "due again",
                )
            )
        elif records[0].dagster_run.status in _FINISHED:
            run = records[0].dagster_run
            done = client.record_failure(
                row.config_id,
                row.metadata_id,
                f"Run {run.run_id} ended {run.status.value} before the load started "
                "(see the run's event log)",
                failure_kind=KIND_ORPHANED,
            )
        else:
            continue  # queued or running: the long-queued monitor's business
        if done:
            settled.append(row.control_key)
    if settled:
        context.log.warning(f"Settled claims without a working run: {', '.join(settled)}")
    return settled
