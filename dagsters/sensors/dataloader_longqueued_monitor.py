"""longqueued_monitor: fails rows that have waited in Queued longer than the threshold.

Passive (no RunRequest). The UPDATE is guarded on status Queued and the age of the status, so a row
whose load started in the meantime is left alone. A Dagster run still waiting for that attempt finds
its attempt no longer queued and stops without loading.
"""

import dagster as dg

from dagsters.resources.lakebase import LakebaseResource
from dagsters.sensors import default_status
from dagsters.settings import Settings


def build_longqueued_monitor(settings: Settings) -> dg.SensorDefinition:
    threshold = settings.longqueued_threshold_minutes

    @dg.sensor(
        name="longqueued_monitor",
        minimum_interval_seconds=settings.longqueued_interval_seconds,
        default_status=default_status(settings),
        description=f"Marks rows Queued for more than {threshold} minutes as Failed.",
    )
    def longqueued_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SkipReason:
        rows = lakebase.get_client().fail_stuck_queued(threshold)
        if not rows:
            return dg.SkipReason(f"No row has been Queued for more than {threshold} minutes.")
        keys = ", ".join(row["control_key"] for row in rows)
        context.log.warning(f"Failed {len(rows)} row(s) stuck in queue >{threshold} min: {keys}")
        return dg.SkipReason(f"Marked {len(rows)} row(s) Failed (stuck in queue): {keys}")

    return longqueued_monitor
