"""A load that committed to its destination but whose success was never written back.

The loader records in every Delta commit the attempt (``metadata_id``) that made it
(``databricks_scripts/engines/arrow/commits.py``). Before a load the asset reads the latest attempt whose
success this database recorded (:meth:`ReconcileSql.last_recorded_attempt`) and hands it to the
script; when the destination's last committing attempt is newer, the script loads nothing and the
asset records that attempt's result here (:meth:`ReconcileSql.record_reconciled`), guarded like
every status change, in one transaction.
"""

from __future__ import annotations

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import IN_PROGRESS, SUCCEEDED
from dagsters.control.transitions import (
    advance_schedule,
    guarded_transition,
    recorded_success_sets,
    row_guard,
)


class ReconcileSql(ControlDatabase):
    """Read and record what an earlier attempt committed without being recorded."""

    def last_recorded_attempt(self, config_id: int) -> int | None:
        """metadata_id of the row's latest attempt recorded Succeeded (None: none yet).

        Retention keeps that history row (``RetentionSql``); the control row's own pointer
        counts too (``last_metadata_id`` of a Succeeded row), so a history row removed by hand
        cannot make the row's last good commit look like one that was never recorded.
        """
        with self._transaction("last_recorded_attempt") as conn:
            row = conn.execute(
                "SELECT greatest("
                "  (SELECT max(metadata_id) FROM historical_metadata"
                "   WHERE config_id = %(config_id)s AND status = 'Succeeded'),"
                "  (SELECT last_metadata_id FROM table_control"
                "   WHERE config_id = %(config_id)s AND last_status = 'Succeeded')"
                ") AS metadata_id",
                {"config_id": config_id},
            ).fetchone()
        return None if row is None else row["metadata_id"]

    def note_on_attempt(self, config_id: int, metadata_id: int, note: str) -> bool:
        """Add ``note`` to an attempt's own history row without touching any status: what a
        stale attempt (its row already failed or taken over by a newer attempt) has to say."""
        with self._transaction("note_on_attempt") as conn:
            return bool(
                conn.execute(
                    "UPDATE historical_metadata SET message = CASE WHEN message IS NULL"
                    " OR message = '' THEN %(note)s ELSE message || ' | ' || %(note)s END"
                    " WHERE metadata_id = %(metadata_id)s AND config_id = %(config_id)s",
                    {
                        "note": self.redact(note),
                        "metadata_id": metadata_id,
                        "config_id": config_id,
                    },
                ).rowcount
            )

    def record_reconciled(
        self,
        config_id: int,
        metadata_id: int,
        *,
        committed_metadata_id: int,
        destination_version: int | None,
        watermark_after: str | None,
        databricks_run_url: str | None = None,
    ) -> bool:
        """This attempt In Progress -> Succeeded with the committed attempt's watermark; the
        committed attempt's history row says Succeeded (its data is in the destination).

        Returns False (nothing written) when this attempt is no longer the row's current one.
        """
        version = (
            "" if destination_version is None else f" (destination version {destination_version})"
        )
        watermark = repr(watermark_after) if watermark_after is not None else "unchanged"
        earlier = self.redact(
            f"Committed to the destination{version}; success recorded late by attempt {metadata_id}"
        )
        params = {
            "config_id": config_id,
            "metadata_id": metadata_id,
            "committed": committed_metadata_id,
            "watermark": watermark_after,
            "earlier": earlier,
            "databricks": databricks_run_url,
        }
        with self._transaction("record_reconciled") as conn:
            # Say what is known about the committing attempt, never a guess at an outage.
            params["message"] = self.redact(
                f"Loaded nothing: attempt {committed_metadata_id} had committed its load"
                f"{version} but {_what_was_recorded(conn, config_id, committed_metadata_id)};"
                f" recorded now, watermark {watermark}"
            )
            rows = guarded_transition(
                conn,
                SUCCEEDED,
                {IN_PROGRESS},
                where=row_guard(metadata_id),
                params=params,
                sets=recorded_success_sets(),
            )
            if not rows:
                return False
            advance_schedule(conn, rows)
            conn.execute(
                "UPDATE historical_metadata SET status = 'Succeeded', ended_at = now(),"
                " rows_read = 0, rows_written = 0,"
                " watermark_after = coalesce(%(watermark)s, watermark_before),"
                " message = %(message)s,"
                " databricks_run_url = coalesce(%(databricks)s, databricks_run_url)"
                " WHERE metadata_id = %(metadata_id)s",
                params,
            )
            conn.execute(
                "UPDATE historical_metadata SET status = 'Succeeded', failure_kind = NULL,"
                " ended_at = coalesce(ended_at, now()),"
                " watermark_after = coalesce(%(watermark)s, watermark_after),"
                " message = CASE WHEN message IS NULL OR message = '' THEN %(earlier)s"
                " ELSE message || ' | ' || %(earlier)s END"
                " WHERE metadata_id = %(committed)s AND config_id = %(config_id)s",
                params,
            )
        return True


def _what_was_recorded(conn, config_id: int, committed_metadata_id: int) -> str:
    """What the control database holds about an attempt the destination says committed."""
    row = conn.execute(
        "SELECT status, message FROM historical_metadata WHERE metadata_id = %s AND config_id = %s",
        (committed_metadata_id, config_id),
    ).fetchone()
    if row is None:
        return "its history row is gone (removed by hand or by retention), so its result is unknown"
    if row["status"] in ("Queued", "In Progress"):
        return (
            f"its result was never written back (its history still says {row['status']}: "
            "the control database was unreachable, or the run died after the commit)"
        )
    cause = (row["message"] or "").split(" | ")[0][:200]
    return f"it was recorded {row['status']}" + (f" ({cause})" if cause else "")
