"""The tables the code location declares as assets: the active rows' destinations and schedules.

What is read here is everything a declared table asset is built from (``assets/table_specs``),
and nothing that changes with each load, so its fingerprint changes exactly when the declared
assets would: ``table_assets_sensor`` compares it with the one the loaded definitions were built
from and asks the webserver to reload the code location when they differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from dagsters.control.connection import ControlDatabase
from dagsters.control.rows import fetch_all
from databricks_scripts.contract import DbType, Strategy

# The source's host and port (never user or secret names) group inline rows by source.
_COLUMNS = (
    "t.config_id, t.control_key, t.db_type, t.source_catalog, t.source_schema_name,"
    " t.source_table_name, t.destination_catalog, t.destination_schema_name,"
    " t.destination_table_name, t.load_strategy, t.schedule_cron, t.schedule_timezone,"
    " t.schedule_interval, t.merge_keys, t.connection_name,"
    # Source lineage (translator.get_source_spec): where the source is, never who logs in or with what.
    " coalesce(s.host, t.db_config_value ->> 'host') AS source_host,"
    " coalesce(s.database, t.db_config_value ->> 'database') AS source_database,"
    " jsonb_build_object('host', t.db_config_value->'host', 'port', t.db_config_value->'port',"
    "   'database', t.db_config_value->'database') AS db_config_value"
)


@dataclass(frozen=True, kw_only=True)
class DeclaredTable:
    """An active row as its declared asset sees it (``_COLUMNS``): some of the control row's
    columns, its source's host and database, and only where ``db_config_value`` points."""

    config_id: int
    control_key: str
    db_type: DbType
    source_catalog: str | None
    source_schema_name: str | None
    source_table_name: str
    destination_catalog: str
    destination_schema_name: str
    destination_table_name: str
    load_strategy: Strategy
    schedule_cron: str | None
    schedule_timezone: str
    schedule_interval: timedelta | None
    merge_keys: list[str] | None
    connection_name: str | None
    source_host: str | None
    source_database: str | None
    db_config_value: dict[str, Any]


class TableListingSql(ControlDatabase):
    def active_tables(self, limit: int) -> list[DeclaredTable]:
        """Up to ``limit`` active rows (by config_id): what ``table_specs`` declares, with their
        source's host and database (from the connection, or the row's own config)."""
        with self._transaction("active_tables") as conn:
            return fetch_all(
                conn,
                DeclaredTable,
                f"SELECT {_COLUMNS} FROM table_control t"
                " LEFT JOIN source_connection s ON s.connection_name = t.connection_name"
                " WHERE t.is_active ORDER BY t.config_id LIMIT %s",
                (int(limit),),
            )


def rows_to_declare(client: TableListingSql, cap: int) -> tuple[list[DeclaredTable], bool]:
    """The active rows to declare as assets, and whether there were more than ``cap`` (then none
    is declared, so what is declared never depends on row order). ``cap`` 0: none."""
    if cap <= 0:
        return [], False
    rows = client.active_tables(cap + 1)
    if len(rows) > cap:
        return [], True
    return rows, False


def declared_fingerprint(rows: Sequence[DeclaredTable]) -> str:
    """One short text that changes exactly when the declared rows (or their columns) do."""
    text = json.dumps([asdict(r) for r in rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
