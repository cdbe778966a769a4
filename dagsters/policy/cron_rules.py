"""Which cron expressions DataLoader accepts: the rules, identical in Python and in SQL.

The database refuses a schedule the scheduler could not compute (``sql/005``: the CHECK
``schedule_cron_must_have_fields_in_range_and_a_future_slot`` calls ``dataloader_cron_problem``,
the same rules written in PL/pgSQL), so a bad cron is refused at the INSERT/UPDATE a person types,
never discovered after a load. ``tests/control/test_schedule_rules.py`` runs both over the same corpus
and requires the same answer, and requires ``schedule.next_load_time`` to compute a slot for
every expression they accept.

The rules (a subset of what croniter reads, so everything accepted is computable):

- an @-macro (``@yearly @annually @monthly @weekly @daily @midnight @hourly``), or five fields
  separated by white space: minute 0-59, hour 0-23, day of month 1-31, month 1-12 (or
  ``jan``-``dec``), day of week 0-7 (0 and 7 are Sunday, or ``sun``-``sat``);
- a field is a comma list of ``*``, ``N``, ``N-M`` (N <= M), each optionally ``/S`` with S >= 1;
  ``N/S`` means N to the field's maximum in steps of S;
- day of month may be ``L`` (the month's last day); day of week may be one ``N#K`` (the K-th
  such weekday of the month, K 1-5) on its own, with day of month ``*`` (and not ``#5`` in
  February alone);
- the expression must have a slot at all: with day of week ``*``, some listed day must exist in
  some listed month (``0 0 30 2 *`` and ``0 0 31 4,6,9,11 *`` never fire and are refused;
  29 February exists in leap years). When both day fields are restricted either one fires
  (croniter's ``day_or``), so such an expression always has a slot.
"""

from __future__ import annotations

import re

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names for the values starting at ``lowest``)
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(\*|[a-z0-9]+(-[a-z0-9]+)?)(/([0-9]+))?$")
_NTH = re.compile(r"^([a-z0-9]+)#([0-9]+)$")
# Longest month: February counts 29 (leap years come round).
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30}


def cron_problem(expr: object) -> str | None:
    """None when DataLoader can schedule ``expr``; else one sentence saying what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        return "schedule_cron is empty"
    text = expr.strip().lower()
    if text.startswith("@"):
        return None if text in MACROS else f"unknown cron macro {expr.strip()!r}"
    fields = text.split()
    if len(fields) != 5:
        return (
            f"cron {expr.strip()!r} has {len(fields)} fields; expected five (minute hour "
            "day-of-month month day-of-week) or an @-macro such as @daily"
        )
    values: list[set[int] | None] = []
    for field, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        problem, expanded = _field(field, name, low, high, names)
        if problem:
            return f"cron {expr.strip()!r}: {problem}"
        values.append(expanded)
    days, months = values[2], values[3]
    if "#" in fields[4]:
        # croniter requires both day fields for N#K (no day_or): keep it to day of month '*'.
        if fields[2] != "*":
            return f"cron {expr.strip()!r}: N#K in day of week needs day of month '*'"
        if fields[4].endswith("#5") and months is not None and months <= {2}:
            return f"cron {expr.strip()!r} never fires reliably: February has no 5th weekday"
    if fields[4] == "*" and not _some_day_exists(days, months):
        return f"cron {expr.strip()!r} never fires: no listed month has the listed day"
    return None


def _some_day_exists(days: set[int] | None, months: set[int] | None) -> bool:
    if days is None or months is None:
        return True
    return any(day <= _MONTH_DAYS.get(month, 31) for month in months for day in days)


def _field(
    field: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> tuple[str | None, set[int] | None]:
    """(problem, the values it names); values None when not a plain set (``*``, ``L``, ``#``)."""
    if field == "*":
        return None, None
    if name == "day of month" and field == "l":
        return None, None
    if name == "day of week" and "#" in field:
        nth = _NTH.match(field)
        if not nth:
            return f"day of week {field!r}: N#K must stand alone (e.g. mon#1)", None
        day = _value(nth.group(1), low, high, names)
        if day is None or not 1 <= int(nth.group(2)) <= 5:
            return f"day of week {field!r}: expected a weekday 0-7 and K 1-5 in N#K", None
        return None, None
    found: set[int] = set()
    for item in field.split(","):
        problem = _item(item, name, low, high, names, found)
        if problem:
            return problem, None
    return None, found


def _item(
    item: str, name: str, low: int, high: int, names: tuple[str, ...], found: set[int]
) -> str | None:
    match = _ITEM.match(item)
    if not match:
        return f"{name} {item!r} is not *, N, N-M or one of those with /step"
    base, step = match.group(1), match.group(4)
    if step is not None and int(step) < 1:
        return f"{name} {item!r}: the step must be at least 1"
    if base == "*":
        first, last = low, high
    else:
        first_text, _, last_text = base.partition("-")
        first = _value(first_text, low, high, names)
        last = _value(last_text, low, high, names) if last_text else first
        if first is None or last is None:
            return f"{name} {item!r} is outside {low}-{high}"
        if last_text and last < first:
            return f"{name} {item!r}: a range must go from low to high"
        if step is not None and not last_text:
            last = high
    found.update(range(first, last + 1, int(step or 1)))
    return None


def _value(text: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        number = int(text)
        return number if low <= number <= high else None
    if text in names:
        return low + names.index(text)
    return None
