"""Retention of ``historical_metadata``: delete finished attempts older than N days, in batches.

Kept whatever their age: an attempt that has not finished (Queued / In Progress), the attempt
each control row points at (``last_metadata_id``: the monitors, the asset and the retry analysis
read it), and each row's latest Succeeded attempt: the next load compares the destination's last
commit with it (``ReconcileSql.last_recorded_attempt``), and without it a row whose latest
attempts failed would take its own last good commit for one never recorded and load nothing. Each batch is its own short transaction (``FOR UPDATE SKIP LOCKED``), so a purge of
millions of rows never holds locks for long or blocks a sensor tick.
"""

from __future__ import annotations

from dagsters.control.connection import ControlDatabase


class RetentionSql(ControlDatabase):
    """Batched deletes of old history rows."""

    def purge_history_batch(self, older_than_days: int, batch_size: int) -> int:
        """Delete up to ``batch_size`` finished history rows older than the retention; how many."""
        with self._transaction("purge_history_batch") as conn:
            cur = conn.execute(
                "DELETE FROM historical_metadata WHERE metadata_id IN ("
                "  SELECT h.metadata_id FROM historical_metadata h"
                "  WHERE h.queued_at < now() - make_interval(days => %(days)s)"
                "    AND h.status NOT IN ('Queued', 'In Progress')"
                "    AND NOT EXISTS (SELECT 1 FROM table_control t"
                "                    WHERE t.last_metadata_id = h.metadata_id)"
                # The row's latest Succeeded attempt stays (what reconcile compares with).
                "    AND (h.status <> 'Succeeded' OR EXISTS ("
                "         SELECT 1 FROM historical_metadata newer"
                "         WHERE newer.config_id = h.config_id AND newer.status = 'Succeeded'"
                "           AND newer.metadata_id > h.metadata_id))"
                "  ORDER BY h.queued_at LIMIT %(batch)s FOR UPDATE OF h SKIP LOCKED)",
                {"days": int(older_than_days), "batch": int(batch_size)},
            )
            return cur.rowcount
