"""Schedule arithmetic: cron in a row's time zone (incl. DST edges), intervals, no schedule, back-off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dagsters.policy.schedule import next_load_time, retry_backoff, validate_cron

NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_cron_is_evaluated_in_the_rows_time_zone():
    # 02:00 in Amsterdam (CET, UTC+1 in January) is 01:00 UTC.
    got = next_load_time(utc(2024, 1, 10, 12), cron="0 2 * * *", timezone="Europe/Amsterdam")
    assert got == utc(2024, 1, 11, 1)
    assert got.tzinfo is UTC


def test_cron_result_is_strictly_after_the_given_time():
    assert next_load_time(utc(2024, 1, 10, 2), cron="0 2 * * *", timezone="UTC") == utc(
        2024, 1, 11, 2
    )


def test_non_existent_local_time_fires_when_the_clocks_jump():
    # 2024-03-10 02:30 does not exist in New York; the jump happens at 07:00 UTC (03:00 EDT).
    assert next_load_time(utc(2024, 3, 9, 12), cron="30 2 * * *", timezone=NY) == utc(
        2024, 3, 10, 7
    )
    # The next day is normal again: 02:30 EDT = 06:30 UTC.
    assert next_load_time(utc(2024, 3, 10, 7), cron="30 2 * * *", timezone=NY) == utc(
        2024, 3, 11, 6, 30
    )


def test_every_fifteen_minutes_fires_once_at_the_end_of_the_gap():
    times = []
    t = utc(2024, 3, 10, 6, 50)  # 01:50 EST
    for _ in range(3):
        t = next_load_time(t, cron="*/15 * * * *", timezone=NY)
        times.append(t)
    # 02:00..02:45 do not exist: one run at 03:00 EDT (07:00 UTC), then 03:15 EDT.
    assert times == [utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 15), utc(2024, 3, 10, 7, 30)]


def test_ambiguous_local_time_fires_once_at_its_first_occurrence():
    # 2024-11-03 01:30 happens twice in New York (EDT 05:30 UTC, then EST 06:30 UTC).
    first = next_load_time(utc(2024, 11, 3, 4), cron="30 1 * * *", timezone=NY)
    assert first == utc(2024, 11, 3, 5, 30)
    assert next_load_time(first, cron="30 1 * * *", timezone=NY) == utc(2024, 11, 4, 6, 30)


def test_after_inside_the_repeated_hour_does_not_fire_the_same_wall_time_again():
    # 06:10 UTC is 01:10 EST, the second pass through 01:xx; 01:30 already fired at 05:30 UTC.
    assert next_load_time(utc(2024, 11, 3, 6, 10), cron="30 1 * * *", timezone=NY) == utc(
        2024, 11, 4, 6, 30
    )


def test_cron_macro_and_weekday_names():
    assert next_load_time(utc(2024, 1, 10, 12), cron="@daily", timezone="UTC") == utc(2024, 1, 11)
    # 2024-01-10 is a Wednesday; next Monday 09:00 in Tokyo (UTC+9) is Monday 00:00 UTC.
    assert next_load_time(utc(2024, 1, 10), cron="0 9 * * mon", timezone="Asia/Tokyo") == utc(
        2024, 1, 15
    )


def test_interval_adds_to_the_given_time():
    after = utc(2024, 3, 10, 6, 59)
    assert next_load_time(after, cron=None, interval=timedelta(minutes=5)) == utc(2024, 3, 10, 7, 4)


def test_no_schedule_means_load_once():
    assert next_load_time(utc(2024, 1, 1), cron=None, timezone="UTC", interval=None) is None


def test_naive_after_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_load_time(datetime(2024, 1, 1), cron="@daily", timezone="UTC")


@pytest.mark.parametrize("expr", ["bad", "* * * *", "0 0 * * * *", "61 * * * *", ""])
def test_invalid_cron_is_refused(expr):
    with pytest.raises(ValueError, match="cron"):
        validate_cron(expr)


def test_unknown_time_zone_is_refused():
    with pytest.raises(ValueError, match="time zone"):
        next_load_time(utc(2024, 1, 1), cron="@daily", timezone="Mars/Olympus")


def test_cron_that_never_fires_is_refused():
    with pytest.raises(ValueError, match="never fires"):
        next_load_time(utc(2024, 1, 1), cron="0 0 30 2 *", timezone="UTC")


def test_retry_backoff_grows_and_is_capped():
    assert [retry_backoff(n) for n in range(3)] == [
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(minutes=45),
    ]
    assert retry_backoff(50) == timedelta(hours=4)
    with pytest.raises(ValueError):
        retry_backoff(-1)
