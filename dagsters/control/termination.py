"""A person's termination is not a failure to analyse: the row goes back to its schedule.

Terminating a load run from the Dagster UI ends the row Failed with
``Cancelled - Dagster run <id> was terminated`` (the load asset writes it). That is a decision a
person made, not a fault: failed_monitor does not send it to retry analysis (which could only
guess, and after a few terminations would send a healthy table to review), does not count it
against ``retry_count``, and releases the row here: Failed -> NULL (ready), keeping the
``next_load_date_time`` that was advanced to the next schedule slot when the run was terminated.
So a scheduled table loads again at its next slot; a one-time row (no schedule) waits for a person.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.status import FAILED
from dagsters.control.transitions import guarded_transition, row_guard

# The message the load asset writes when its Dagster run is terminated (a person's action).
TERMINATED = re.compile(r"^Cancelled - Dagster run \S+ was terminated")
RELEASED_NOTE = "[Terminated by a person - not counted as a retry; loads at its next slot] "


def terminated_by_a_person(row: Mapping[str, Any]) -> bool:
    return bool(TERMINATED.match(str(row.get("last_message") or "")))


class TerminationSql(ControlDatabase):
    """Release a row whose run a person terminated."""

    def release_terminated(self, config_id: int, metadata_id: int | None) -> bool:
        """Failed (terminated) -> NULL for this attempt; retry_count unchanged; True if won."""
        with self._transaction("release_terminated") as conn:
            rows = guarded_transition(
                conn,
                None,
                {FAILED},
                where=sql.SQL("{} AND t.last_message ~ %(pattern)s").format(row_guard(metadata_id)),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "pattern": TERMINATED.pattern,
                    "note": RELEASED_NOTE,
                },
                sets={
                    "last_message": sql.SQL("%(note)s || t.last_message"),
                    "retry_analysis_requested_at": sql.SQL("NULL"),
                },
            )
        return bool(rows)
