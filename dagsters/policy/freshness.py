"""How long a table may go without a successful load before it is late, from its own schedule.

A table is late when no load succeeded for one period of its schedule plus a grace of one more
period, at most an hour (``GRACE_CAP``): a table every 5 minutes is late 10 minutes after its last
load, an hourly one after 2 hours, a daily one after 25 hours. A cron schedule's period is its
longest gap between slots over the coming ``_SLOTS_LOOKED_AT`` slots, so a weekday schedule is not
late over a weekend. A row without a schedule (it loads once) has no window: it is never late.

Pure functions (no Dagster, no database); ``table_assets`` turns the window into the table
asset's Dagster freshness policy.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from dagsters.policy.schedule import Schedule, next_load_time

GRACE_CAP = timedelta(hours=1)
_SLOTS_LOOKED_AT = 14


def schedule_period(
    *, cron: str | None, timezone: str | None, interval: timedelta | None, now: datetime
) -> timedelta | None:
    """The longest time between two loads of this schedule (None: not scheduled)."""
    if not cron:
        return interval
    slots = [now]
    for _ in range(_SLOTS_LOOKED_AT):
        slot = next_load_time(slots[-1], cron=cron, timezone=timezone or "UTC")
        if slot is None:
            break
        slots.append(slot)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    return max(gaps) if gaps else None


def freshness_window(row: Schedule, now: datetime | None = None) -> timedelta | None:
    """The time a table_control row's table may go without a successful load, or None."""
    try:
        period = schedule_period(
            cron=row.schedule_cron,
            timezone=row.schedule_timezone,
            interval=row.schedule_interval,
            now=now or datetime.now(UTC),
        )
    except ValueError:
        return None  # a schedule the scheduler refuses: the row's own message says so
    if period is None or period <= timedelta(0):
        return None
    return period + min(period, GRACE_CAP)
