"""The tables the code location declares as assets: the active rows' destinations and schedules."""

from __future__ import annotations

from dagsters.control.connection import ControlDatabase

_COLUMNS = (
    "config_id, control_key, db_type, source_catalog, source_schema_name, source_table_name,"
    " destination_catalog, destination_schema_name, destination_table_name, load_strategy,"
    " schedule_cron, schedule_timezone, schedule_interval, merge_keys"
)


class TableListingSql(ControlDatabase):
    def active_tables(self, limit: int) -> list[dict]:
        """Up to ``limit`` active rows (by config_id): what ``table_specs`` declares."""
        with self._transaction("active_tables") as conn:
            return conn.execute(
                f"SELECT {_COLUMNS} FROM table_control WHERE is_active ORDER BY config_id LIMIT %s",
                (int(limit),),
            ).fetchall()
