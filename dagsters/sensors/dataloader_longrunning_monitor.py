"""longrunning_monitor: cancels loads running longer than the threshold and fails their rows.

For each In Progress row past the threshold (spec query): the Dagster run id is read from the
row's ``last_dagster_run`` link, the run is cancelled through the instance's run coordinator, then
the row is marked Failed, guarded on this attempt still being In Progress, so a load that finished
in the meantime keeps its result.
"""

import dagster as dg

from dagsters.control.run_requests import run_id_from_url
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import alert_on_error, default_status
from dagsters.settings import Settings


def _cancel_dagster_run(context: dg.SensorEvaluationContext, run_id: str | None) -> str:
    if not run_id:
        return "no Dagster run link"
    run = context.instance.get_run_by_id(run_id)
    if run is None:
        return f"run {run_id} not found"
    if run.is_finished:
        return f"run {run_id} already {run.status.value}"
    try:
        context.instance.run_coordinator.cancel_run(run_id)
    except Exception as exc:  # noqa: BLE001 - still fail the row: a stuck row must not stay In Progress
        context.log.warning(f"Could not cancel run {run_id}: {exc}")
        return f"cancel of run {run_id} failed"
    return f"run {run_id} cancelled"


def build_longrunning_monitor(settings: Settings) -> dg.SensorDefinition:
    threshold = settings.longrunning_threshold_minutes

    @dg.sensor(
        name="longrunning_monitor",
        minimum_interval_seconds=settings.longrunning_interval_seconds,
        default_status=default_status(settings),
        description=f"Cancels loads In Progress for more than {threshold} minutes.",
    )
    @alert_on_error(settings, "longrunning_monitor")
    def longrunning_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SkipReason:
        client = lakebase.get_client()
        rows = client.find_stuck_running(threshold)
        if not rows:
            return dg.SkipReason(f"No load has run for more than {threshold} minutes.")
        done = []
        for row in rows:
            cancelled = _cancel_dagster_run(context, run_id_from_url(row["last_dagster_run"]))
            failed = client.fail_stuck_running(row["config_id"], row["last_metadata_id"], threshold)
            outcome = "marked Failed" if failed else "left alone (finished meanwhile)"
            context.log.warning(f"{row['control_key']}: {cancelled}; {outcome}")
            if failed:
                done.append(row["control_key"])
        if not done:
            return dg.SkipReason("Stuck loads finished before they could be cancelled.")
        return dg.SkipReason(
            f"Cancelled {len(done)} load(s) over {threshold} minutes: " + ", ".join(done)
        )

    return longrunning_monitor
