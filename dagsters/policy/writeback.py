"""Writing a finished load's result to a control database that is briefly unreachable.

A load can finish (its Delta commit landed) while the control database restarts or refuses
connections. Its write-back is then retried with bounded exponential back-off (1 s doubling to
30 s, for at most ``Settings.writeback_retry_seconds``). Only connection failures are retried; a
refused statement (a constraint, bad data) fails at once. If the bound runs out, the commit still
names its attempt, and the row's next load records it instead of loading it again
(:mod:`dagsters.control.reconcile`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from dagsters.control.errors import LakebaseError

T = TypeVar("T")

FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0


def is_connection_error(exc: LakebaseError) -> bool:
    """No connection, connection lost, or the server shutting down / starting up."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def with_writeback_retries(
    operation: Callable[[], T],
    *,
    bound_seconds: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``operation()``, retried on connection failures until ``bound_seconds`` have passed."""
    deadline = clock() + max(0.0, bound_seconds)
    delay = FIRST_DELAY_SECONDS
    attempt = 1
    while True:
        try:
            return operation()
        except LakebaseError as exc:
            if not is_connection_error(exc) or clock() + delay > deadline:
                raise
            log(
                f"control database unreachable (try {attempt}: {exc}); "
                f"writing the result again in {delay:.0f} s"
            )
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_SECONDS)
        attempt += 1
