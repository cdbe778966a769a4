"""Schedule arithmetic for control rows: when a table is next due, and how long a retry waits.

Pure functions (no Dagster, no database) so the DST edge cases can be pinned down by unit tests.

Cron expressions are evaluated on the wall clock of the row's time zone:
- a local time that does not exist (spring forward gap) fires at the first instant after the gap
  (``30 2 * * *`` in America/New_York fires at 03:00 EDT on the changeover day);
- a local time that happens twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from dagsters.policy.cron_rules import cron_problem


class Schedule(Protocol):
    """What a next slot is computed from: a control row, or a read of its schedule alone."""

    @property
    def schedule_cron(self) -> str | None: ...
    @property
    def schedule_timezone(self) -> str | None: ...
    @property
    def schedule_interval(self) -> timedelta | None: ...


RETRY_BASE = timedelta(minutes=5)
RETRY_FACTOR = 3
RETRY_CAP = timedelta(hours=4)

# A cron expression that can never fire again (e.g. "0 0 30 2 *") must not spin forever.
_MAX_CANDIDATES = 100_000


def validate_cron(expr: str) -> str:
    """Return ``expr`` stripped if DataLoader can schedule it; else ValueError saying why.

    The rules are :func:`dagsters.policy.cron_rules.cron_problem`, the same the database's
    CHECK applies (``sql/005``), so a row the database accepted is always computable.
    """
    problem = cron_problem(expr)
    if problem is not None:
        raise ValueError(f"invalid cron expression: {problem}")
    expr = expr.strip()
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}")
    return expr


def validate_timezone(name: str) -> ZoneInfo:
    """The zone ``name`` names in the IANA zone database (``Europe/Berlin``, ``UTC``).

    POSIX offset strings (``UTC+3``) are refused here as in the database (``sql/005``: only
    names PostgreSQL lists in ``pg_timezone_names``, which ``tests/control/test_schedule_rules.py``
    checks are all known here).
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def retry_backoff(retry_count: int) -> timedelta:
    """Wait before retry number ``retry_count + 1``: 5, 15, 45 minutes, ... capped at 4 hours."""
    if retry_count < 0:
        raise ValueError("retry_count must not be negative")
    # Cap the exponent first so a large retry_count cannot build an enormous integer.
    wait = RETRY_BASE * RETRY_FACTOR ** min(retry_count, 10)
    return min(wait, RETRY_CAP)


def next_load_time(
    after: datetime,
    *,
    cron: str | None,
    timezone: str = "UTC",
    interval: timedelta | None = None,
) -> datetime | None:
    """The first load time strictly after ``after`` (tz-aware UTC), or None when unscheduled.

    ``cron`` wins over ``interval`` (the database forbids setting both). With neither, the row
    loads once and is not scheduled again.
    """
    if after.tzinfo is None:
        raise ValueError("'after' must be timezone-aware")
    after = after.astimezone(UTC)
    if cron:
        return _next_cron_time(after, validate_cron(cron), validate_timezone(timezone or "UTC"))
    if interval is not None:
        if interval <= timedelta(0):
            raise ValueError("schedule interval must be positive")
        return after + interval
    return None


def _next_cron_time(after: datetime, expr: str, zone: ZoneInfo) -> datetime:
    # Walk the cron slots on the naive local wall clock (what a person means by "02:30"), then
    # map each slot to a real instant. Starting one minute early keeps slots that fall inside a
    # repeated hour reachable; the '> after' filter below drops the ones already past.
    start = after.astimezone(zone).replace(tzinfo=None) - timedelta(minutes=1)
    slots = croniter(expr, start)
    for _ in range(_MAX_CANDIDATES):
        try:
            wall = slots.get_next(datetime)
        except CroniterBadDateError:
            break  # croniter gives up after decades without a match
        candidate = _wall_clock_to_utc(wall, zone)
        if candidate > after:
            return candidate
    raise ValueError(f"cron expression {expr!r} has no upcoming slot")


def _wall_clock_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant  # exists; for an ambiguous time fold=0 is its first occurrence
    return _end_of_gap(wall, zone)


def _end_of_gap(wall: datetime, zone: ZoneInfo) -> datetime:
    """First real instant after a non-existent local time: the moment the clocks jumped."""
    # fold=1 reads the wall time with the offset after the jump, fold=0 with the one before;
    # the transition lies between the two readings. Offsets change on whole seconds.
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if lo > hi:
        lo, hi = hi, lo
    after_offset = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi
