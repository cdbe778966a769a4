"""Release a row a person has reviewed: ready to load now, its retry budget restored.

What the README's hand-written SQL did, as one guarded statement: Failed -> NULL (ready),
``needs_review = false``, ``retry_count = 0``, ``next_load_date_time = now()``, the pending
analysis stamp cleared, and a note in ``last_message`` saying who released it. A row that is not
Failed (already released, or loading) is refused with a message that says its state.
"""

from __future__ import annotations

from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.errors import LoadAlreadyActive, UnknownControlKey
from dagsters.control.rows import FAILED, ControlRow
from dagsters.control.transitions import guarded_transition

RELEASED_PREFIX = "[Released after review by {who}] "


class ReviewReleaseSql(ControlDatabase):
    """Release one reviewed (or failed) row."""

    def release_reviewed(self, control_key: str, *, released_by: str = "an operator") -> ControlRow:
        """Failed -> ready now with a fresh retry budget; returns the row. Raises when it is not
        Failed (``UnknownControlKey`` / ``LoadAlreadyActive``)."""
        with self._transaction("release_reviewed") as conn:
            # Three columns for a status check: kept a dict.
            row = conn.execute(
                "SELECT config_id, last_status, needs_review FROM table_control"
                " WHERE control_key = %s FOR UPDATE",
                (control_key,),
            ).fetchone()
            if row is None:
                raise UnknownControlKey(f"no table_control row with control_key {control_key!r}")
            if row["last_status"] != FAILED:
                raise LoadAlreadyActive(
                    f"{control_key} is {row['last_status'] or 'ready (NULL)'}, not Failed: "
                    "nothing to release"
                )
            note = self.redact(RELEASED_PREFIX.format(who=released_by))
            [released] = guarded_transition(
                conn,
                None,
                {FAILED},
                where=sql.SQL("t.config_id = %(config_id)s"),
                params={"config_id": row["config_id"], "note": note},
                sets={
                    "needs_review": sql.SQL("false"),
                    "retry_count": sql.SQL("0"),
                    "next_load_date_time": sql.SQL("now()"),
                    "retry_analysis_requested_at": sql.SQL("NULL"),
                    "last_message": sql.SQL("%(note)s || coalesce(t.last_message, '')"),
                },
            )
        return released
