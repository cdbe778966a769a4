"""The tables the code location declares as assets: the active rows' destinations and schedules."""

from __future__ import annotations

from dagsters.control.connection import ControlDatabase

_COLUMNS = (
    "t.config_id, t.control_key, t.db_type, t.source_catalog, t.source_schema_name,"
    " t.source_table_name, t.destination_catalog, t.destination_schema_name,"
    " t.destination_table_name, t.load_strategy, t.schedule_cron, t.schedule_timezone,"
    " t.schedule_interval, t.merge_keys, t.connection_name,"
    # Source lineage (table_specs.source_spec): where the source is, never who logs in or with what.
    " coalesce(s.host, t.db_config_value ->> 'host') AS source_host,"
    " coalesce(s.database, t.db_config_value ->> 'database') AS source_database"
)


class TableListingSql(ControlDatabase):
    def active_tables(self, limit: int) -> list[dict]:
        """Up to ``limit`` active rows (by config_id): what ``table_specs`` declares, with their
        source's host and database (from the connection, or the row's own config)."""
        with self._transaction("active_tables") as conn:
            return conn.execute(
                f"SELECT {_COLUMNS} FROM table_control t"
                " LEFT JOIN source_connection s ON s.connection_name = t.connection_name"
                " WHERE t.is_active ORDER BY t.config_id LIMIT %s",
                (int(limit),),
            ).fetchall()
