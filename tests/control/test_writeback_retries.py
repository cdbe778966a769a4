"""The write-back retry bound: connection failures are retried with back-off until the bound,
anything else fails at once (a refused statement is not made right by waiting)."""

from __future__ import annotations

import pytest

from dagsters.control.errors import LakebaseError
from dagsters.policy.writeback import is_connection_error, with_writeback_retries


class Clock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors: list[LakebaseError], result: str = "written"):
    def operation() -> str:
        if errors:
            raise errors.pop(0)
        return result

    return operation


def test_connection_failures_are_retried_with_growing_delays_until_it_works():
    clock, logs = Clock(), []
    down = [LakebaseError("record_success: no connection") for _ in range(4)]
    result = with_writeback_retries(
        failing(down),
        bound_seconds=300,
        log=logs.append,
        sleep=clock.sleep,
        clock=lambda: clock.now,
    )
    assert result == "written"
    assert clock.sleeps == [1, 2, 4, 8]
    assert len(logs) == 4 and "control database unreachable" in logs[0]


def test_the_bound_is_kept_and_the_last_error_is_raised():
    clock = Clock()
    down = [LakebaseError(f"no connection {i}") for i in range(100)]
    with pytest.raises(LakebaseError, match="no connection"):
        with_writeback_retries(
            failing(down),
            bound_seconds=60,
            log=lambda _: None,
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert sum(clock.sleeps) <= 60
    assert max(clock.sleeps) <= 30


def test_a_refused_statement_is_not_retried():
    clock = Clock()
    refused = LakebaseError("record_success: violates check constraint", sqlstate="23514")
    assert not is_connection_error(refused)
    with pytest.raises(LakebaseError, match="check constraint"):
        with_writeback_retries(
            failing([refused]),
            bound_seconds=300,
            log=lambda _: None,
            sleep=clock.sleep,
            clock=lambda: clock.now,
        )
    assert clock.sleeps == []


@pytest.mark.parametrize("state", [None, "08006", "57P01", "57P03"])
def test_connection_states_count_as_unreachable(state):
    assert is_connection_error(LakebaseError("x", sqlstate=state))
