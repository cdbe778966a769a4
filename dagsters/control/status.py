"""The status lifecycle of a control row (``table_control.last_status``).

::

    NULL (ready) -> Queued -> In Progress -> Succeeded | Failed
    Failed -> NULL (retry, retry_count + 1)      Queued -> Failed (stuck / run failed early)
    Queued -> NULL (a claim whose run was never created is released)

Plain values only: :mod:`dagsters.control.transitions` turns them into the one guarded UPDATE.
"""

from __future__ import annotations

from typing import Any

QUEUED = "Queued"
IN_PROGRESS = "In Progress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STATUSES = (None, QUEUED, IN_PROGRESS, SUCCEEDED, FAILED)

# Which states each status may be entered from. NULL means "ready to load".
ALLOWED_FROM: dict[str | None, frozenset[str | None]] = {
    QUEUED: frozenset({None, SUCCEEDED, FAILED}),
    IN_PROGRESS: frozenset({QUEUED}),
    SUCCEEDED: frozenset({IN_PROGRESS}),
    FAILED: frozenset({QUEUED, IN_PROGRESS}),
    None: frozenset({FAILED, QUEUED}),
}

# A row whose values the code cannot compute with (sql/012's bounds broken where its CHECKs are
# not in force) is failed from whatever state it is in, so no sensor tick stops on it
# (dagsters/control/uncomputable.py); only that statement may use these.
UNCOMPUTABLE_FROM: frozenset[str | None] = frozenset(STATUSES)

ANY_ALLOWED: Any = object()  # "use the lifecycle's allowed predecessor states"


def expected_states(status: str | None, expected_status: Any) -> set[str | None]:
    """The states a row may be in before entering ``status``.

    ``expected_status`` is :data:`ANY_ALLOWED` (every state the lifecycle allows), one status or
    None, or a collection of them.
    """
    if status not in ALLOWED_FROM:
        raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
    if expected_status is ANY_ALLOWED:
        return set(ALLOWED_FROM[status])
    if expected_status is None or isinstance(expected_status, str):
        return {expected_status}
    return set(expected_status)
