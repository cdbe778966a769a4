"""Load history: the ``historical_metadata`` rows of each attempt (insert, update, read)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from dagsters.control.connection import ControlDatabase
from dagsters.control.errors import LakebaseError

# historical_metadata columns a caller may set through update_metadata.
METADATA_FIELDS = frozenset(
    {
        "status",
        "load_strategy",
        "started_at",
        "ended_at",
        "rows_read",
        "rows_written",
        "watermark_before",
        "watermark_after",
        "message",
        "dagster_run_id",
        "dagster_run_url",
        "databricks_run_url",
        "retry_decision",
        "retry_confidence",
        "retry_reason",
        "retry_decider",
        "retry_analysed_at",
    }
)


class HistorySql(ControlDatabase):
    """Insert, update and read ``historical_metadata`` rows."""

    def insert_initial_metadata(self, config_id: int, *, triggered_by: str = "sensor") -> int:
        """New history row (status Queued) for ``config_id``; returns its metadata_id."""
        with self._transaction("insert_initial_metadata") as conn:
            row = conn.execute(
                "INSERT INTO historical_metadata"
                " (config_id, control_key, triggered_by, status, load_strategy, watermark_before)"
                " SELECT config_id, control_key, %s, 'Queued', load_strategy, incremental_value"
                " FROM table_control WHERE config_id = %s RETURNING metadata_id",
                (triggered_by, config_id),
            ).fetchone()
        if row is None:
            raise LakebaseError(f"insert_initial_metadata: no table_control row {config_id}")
        return row["metadata_id"]

    def update_metadata(self, metadata_id: int, **fields: Any) -> bool:
        """Set whitelisted historical_metadata columns; True if the row exists."""
        unknown = set(fields) - METADATA_FIELDS
        if unknown:
            raise ValueError(f"update_metadata: not updatable: {sorted(unknown)}")
        if not fields:
            return False
        if fields.get("message") is not None:
            fields["message"] = self.redact(fields["message"])
        statement = sql.SQL("UPDATE historical_metadata SET {} WHERE metadata_id = {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
            ),
            sql.Placeholder("_metadata_id"),
        )
        with self._transaction("update_metadata") as conn:
            return conn.execute(statement, {**fields, "_metadata_id": metadata_id}).rowcount > 0

    def get_recent_history(self, config_id: int, limit: int = 5) -> list[dict]:
        with self._transaction("get_recent_history") as conn:
            return conn.execute(
                "SELECT * FROM historical_metadata WHERE config_id = %s"
                " ORDER BY metadata_id DESC LIMIT %s",
                (config_id, int(limit)),
            ).fetchall()
