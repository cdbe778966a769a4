"""Stuck rows: Queued or In Progress for too long, failed by the long-queued/long-running monitors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import FAILED, IN_PROGRESS, ControlRow, fetch_all
from dagsters.control.transitions import advance_schedule, guarded_transition
from databricks_scripts.contract import KIND_RUN_TIMEOUT

# The two monitors' messages (the spec's words). What retry rules read is the kind each one writes
# with it (KIND_STUCK_QUEUED, KIND_RUN_TIMEOUT), not these words.
STUCK_IN_QUEUE = "Cancelled - stuck in queue for >{minutes} minutes"
RUN_TIMEOUT = "Cancelled - exceeded {minutes} minute timeout"


class StuckRowsSql(ControlDatabase):
    """Find and fail rows stuck in Queued or In Progress (guarded, per attempt)."""

    def find_stuck_running(self, threshold_minutes: int = 180) -> list[ControlRow]:
        """In Progress rows whose load started longer ago than the threshold (spec query)."""
        with self._transaction("find_stuck_running") as conn:
            return fetch_all(
                conn,
                ControlRow,
                "SELECT * FROM table_control WHERE last_status = 'In Progress'"
                " AND last_load_date_time < now() - make_interval(mins => %s)"
                " ORDER BY last_load_date_time",
                (int(threshold_minutes),),
            )

    def fail_stuck_running(
        self, config_id: int, metadata_id: int | None, threshold_minutes: int = 180
    ) -> bool:
        """In Progress past the threshold -> Failed, only for this attempt; True if this won."""
        message = RUN_TIMEOUT.format(minutes=threshold_minutes)
        with self._transaction("fail_stuck_running") as conn:
            rows = guarded_transition(
                conn,
                FAILED,
                {IN_PROGRESS},
                where=sql.SQL(
                    "t.config_id = %(config_id)s AND t.last_metadata_id = %(metadata_id)s"
                    " AND t.last_load_date_time < now() - make_interval(mins => %(minutes)s)"
                ),
                params={
                    "config_id": config_id,
                    "metadata_id": metadata_id,
                    "minutes": int(threshold_minutes),
                    "message": message,
                },
                sets={"last_message": sql.SQL("%(message)s")},
                failure_kind=KIND_RUN_TIMEOUT,
            )
            fail_history(conn, rows, message, KIND_RUN_TIMEOUT)
            advance_schedule(conn, rows)
        return bool(rows)


def fail_history(
    conn: psycopg.Connection[Any], rows: Sequence[ControlRow], message: str, kind: str | None
) -> None:
    """The history rows of attempts a stuck-row monitor failed: Failed with its message and kind."""
    ids = [r.last_metadata_id for r in rows if r.last_metadata_id is not None]
    if ids:
        conn.execute(
            "UPDATE historical_metadata SET status = 'Failed', ended_at = now(), message = %s,"
            " failure_kind = %s"
            " WHERE metadata_id = ANY(%s) AND status IN ('Queued', 'In Progress')",
            (message, kind, ids),
        )
