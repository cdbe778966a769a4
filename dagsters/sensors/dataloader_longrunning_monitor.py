"""longrunning_monitor: cancels loads running longer than the threshold and fails their rows.

For each In Progress row past the threshold (spec query): the Dagster run id is read from the
row's ``last_dagster_run`` link and the run is cancelled through the instance's run coordinator.
The row is marked Failed (guarded on this attempt still being In Progress, so a load that
finished in the meantime keeps its result) only once the run is known to have stopped:

- the run is finished (its cancel confirmed, or it ended by itself): failed now;
- the run is still going (cancel requested, or cancelling): left In Progress; a later tick fails
  it once the run has stopped (the asset's own terminate handler usually records it first);
- the run is not in this Dagster instance (another deployment on the same control database, or a
  wiped instance): left alone;
- either way, a row whose run is still not known to have stopped at twice the threshold is failed
  anyway, so no row strands (a run worker that died without Dagster noticing);
- the row has no run link at all: failed (there is nothing to wait for).

A load that still commits after its row was failed is harmless: the loader's fencing check and the
next load's reconcile step (docs/control-database.md, "Exactly once") keep it from being loaded
twice.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from dagsters.policy.run_requests import run_id_from_url
from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import (
    alert_on_error,
    default_status,
    fail_row_that_raised,
    fail_uncomputable_rows,
)
from dagsters.settings import Settings


@dataclass(frozen=True)
class RunState:
    """What this tick knows about a stuck row's Dagster run."""

    text: str
    stopped: bool  # known to be no longer running: the row may be failed


def _cancel_dagster_run(
    context: dg.SensorEvaluationContext, run_id: str | None, started: datetime | None, limit: int
) -> RunState:
    if not run_id:
        return RunState("no Dagster run link", True)
    state = _ask_run_to_stop(context, run_id)
    overdue = started is not None and datetime.now(UTC) - started > timedelta(minutes=2 * limit)
    if not state.stopped and overdue:
        return RunState(
            f"{state.text}; still not known to have stopped after {2 * limit} min: failed anyway "
            "(the loader's fencing check keeps a late commit from loading twice)",
            True,
        )
    return state


def _ask_run_to_stop(context: dg.SensorEvaluationContext, run_id: str) -> RunState:
    run = context.instance.get_run_by_id(run_id)
    if run is None:
        return RunState(f"run {run_id} not found in this Dagster instance; waiting", False)
    if run.is_finished:
        return RunState(f"run {run_id} {run.status.value}", True)
    if run.status == dg.DagsterRunStatus.CANCELING:
        return RunState(f"run {run_id} is still cancelling; waiting", False)
    try:
        context.instance.run_coordinator.cancel_run(run_id)
    except Exception as exc:  # noqa: BLE001 - reported; the row waits for a confirmed stop
        context.log.warning(f"Could not cancel run {run_id}: {exc}")
        return RunState(f"cancel of run {run_id} failed; waiting", False)
    after = context.instance.get_run_by_id(run_id)
    if after is not None and after.is_finished:
        return RunState(f"run {run_id} cancelled", True)
    return RunState(f"cancel of run {run_id} requested; the row is failed once it stops", False)


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
        fail_uncomputable_rows(context, client)
        rows = client.find_stuck_running(threshold)
        if not rows:
            return dg.SkipReason(f"No load has run for more than {threshold} minutes.")
        done, waiting = [], []
        for row in rows:
            try:
                state = _cancel_dagster_run(
                    context,
                    run_id_from_url(row.last_dagster_run),
                    row.last_load_date_time,
                    threshold,
                )
                if not state.stopped:
                    context.log.warning(f"{row.control_key}: {state.text}")
                    waiting.append(row.control_key)
                    continue
                failed = client.fail_stuck_running(row.config_id, row.last_metadata_id, threshold)
            except Exception as exc:  # noqa: BLE001 - this row fails; the others go on
                if fail_row_that_raised(
                    context, client, row, {"In Progress"}, "the run timeout", exc
                ):
                    done.append(row.control_key)
                continue
            outcome = "marked Failed" if failed else "left alone (finished meanwhile)"
            context.log.warning(f"{row.control_key}: {state.text}; {outcome}")
            if failed:
                done.append(row.control_key)
        if not done:
            if waiting:
                return dg.SkipReason(
                    f"Waiting for {len(waiting)} stuck load(s) to stop: " + ", ".join(waiting)
                )
            return dg.SkipReason("Stuck loads finished before they could be cancelled.")
        return dg.SkipReason(
            f"Cancelled {len(done)} load(s) over {threshold} minutes: " + ", ".join(done)
        )

    return longrunning_monitor
