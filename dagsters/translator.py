"""How a control row becomes Dagster assets: the one place that maps a row to its asset keys,
specs, group, kinds, tags, description and metadata (as ``DagsterDltTranslator.get_asset_spec``
does for dlt resources).

- the destination table's key ``[destination_catalog, destination_schema_name,
  destination_table_name]`` (reported by every load at run time, declared up to
  ``DATALOADER_TABLE_ASSETS_MAX``);
- the source table, an external asset keyed ``["sources", <connection or source system>,
  <database>, <schema>, <table>]`` (parts Dagster can use: other characters become ``_``), grouped
  per connection (``source_<connection>``), so the graph reads source -> load -> table -> dbt model.
  Its metadata is connection, type, host; never a user, a secret's name or a password
  (docs/assets.md, "Source lineage");
- the source metadata a load's materialization carries (names a person uses to find the source).

Injectable, as dagster-dlt's and dagster-dbt's translators are: every function that names a
row's asset (the declared specs and their checks, the load's runtime report, the deep
verification, the review status, failed_monitor) takes a ``translator`` argument, defaulting to
:data:`DEFAULT_TRANSLATOR`, and ``build_definitions(settings, translator=...)`` hands one instance
to all of them. A subclass overriding e.g. ``get_asset_key`` or ``get_group_name`` changes the key
or group everywhere it appears (README.md, "Your own asset keys and groups").
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import dagster as dg

from dagsters.control.rows import ControlRow
from dagsters.control.source_connections import ResolvedSource
from dagsters.control.table_listing import DeclaredTable
from dagsters.policy.freshness import freshness_window
from dagsters.policy.run_requests import LOAD_ASSET

SOURCE_KEY_PREFIX = "sources"
_UNUSABLE = re.compile(r"[^A-Za-z0-9_]+")
# Source metadata keys a load's materialization carries (text).
SOURCE_SYSTEM = "source_system"
SOURCE_CONNECTION = "source_connection"
SOURCE_DATABASE = "source_database"
SOURCE_SCHEMA = "source_schema"
SOURCE_TABLE = "source_table"


def _part(value: object) -> str:
    return _UNUSABLE.sub("_", str(value)).strip("_") or "_"


def reload_url(base_url: str, control_key: str) -> str:
    """The load asset's page on this table's partition: Materialize there reloads the table."""
    return f"{base_url}/assets/{LOAD_ASSET}?view=partitions&partition={quote(control_key, safe='')}"


class DataLoaderTranslator:
    """Maps one control row (a ``ControlRow``, or the declared-table read ``DeclaredTable``) to
    its Dagster assets. ``execution`` (local | databricks) decides the kinds; ``base_url`` (the
    Dagster UI's address) adds a reload link to a declared table. Imports no asset or sensor
    module, so the sensors and the review check use it too."""

    def get_asset_key(self, row: ControlRow | DeclaredTable) -> dg.AssetKey:
        """The destination table's own key: catalog, schema, table (as in table_control)."""
        return dg.AssetKey(
            [
                str(row.destination_catalog),
                str(row.destination_schema_name),
                str(row.destination_table_name),
            ]
        )

    def get_source_system(self, row: DeclaredTable) -> str:
        """The connection's name, or (a row without one) ``<db_type>_<host>``."""
        if row.connection_name:
            return _part(row.connection_name)
        return _part(f"{row.db_type}_{row.source_host or 'unknown'}")

    def get_source_asset_key(self, row: DeclaredTable) -> dg.AssetKey:
        """The source table's key: connection, database, schema, table (database when known)."""
        database = row.source_catalog
        if not database and row.db_type in ("postgresql", "oracle"):
            database = row.source_database  # theirs comes from the connection
        parts = [database, row.source_schema_name, row.source_table_name]
        return dg.AssetKey(
            [SOURCE_KEY_PREFIX, self.get_source_system(row), *(_part(p) for p in parts if p)]
        )

    def get_group_name(self, row: DeclaredTable) -> str:
        """One group per source: a row naming a connection is grouped by it (``source_erp``); an
        inline row by its type and database (``source_postgresql_demo_source``)."""
        if row.connection_name:
            name = str(row.connection_name)
        else:
            config = row.db_config_value or {}
            database = config.get("database") or row.source_catalog or "unknown"
            name = f"{row.db_type}_{database}"
        return "source_" + _UNUSABLE.sub("_", name).strip("_")

    def get_kinds(self, row: DeclaredTable, execution: str) -> set[str]:
        """Delta, the source system, and Databricks only when the loads run there."""
        kinds = {"delta", str(row.db_type or "database")}
        if execution == "databricks":
            kinds.add("databricks")
        return kinds

    def get_tags(self, row: DeclaredTable) -> dict[str, str]:
        return {"dataloader/source_system": str(row.db_type or "")}

    def get_source_spec(self, row: DeclaredTable) -> dg.AssetSpec:
        """The external asset of one row's source table (DataLoader reads it, never writes it)."""
        where = _source_where(row)
        metadata = {"type": dg.MetadataValue.text(str(row.db_type or ""))}
        if row.connection_name:
            metadata["connection"] = dg.MetadataValue.text(str(row.connection_name))
        if row.source_host:
            metadata["host"] = dg.MetadataValue.text(str(row.source_host))
        return dg.AssetSpec(
            key=self.get_source_asset_key(row),
            group_name=self.get_group_name(row),
            kinds={str(row.db_type or "database")},
            description=f"Source table {where} ({row.db_type}), read by DataLoader.",
            metadata=metadata,
        )

    def get_asset_spec(
        self, row: DeclaredTable, execution: str, base_url: str | None = None
    ) -> dg.AssetSpec:
        """The declared asset of one row's destination table; with ``base_url``, a link to reload
        it (the table's own Materialize is greyed out: the load asset's partition loads it)."""
        reload = (
            {"reload": dg.MetadataValue.url(reload_url(base_url, row.control_key))}
            if base_url
            else {}
        )
        window = freshness_window(row)
        key = self.get_asset_key(row)
        return dg.AssetSpec(
            key=key,
            # source -> load -> table -> dbt model in the lineage: the load asset writes the table.
            deps=[LOAD_ASSET, self.get_source_asset_key(row)],
            group_name=self.get_group_name(row),
            kinds=self.get_kinds(row, execution),
            description=(
                f"Delta table loaded from {row.db_type} {_source_where(row)} by {LOAD_ASSET} "
                f"(partition {row.control_key}, {row.load_strategy} load)."
                + (
                    f" To reload it: [its partition of {LOAD_ASSET}]({reload['reload'].value})"
                    " → Materialize."
                    if reload
                    else ""
                )
            ),
            metadata={
                "control_key": dg.MetadataValue.text(str(row.control_key)),
                "dagster/table_name": ".".join(key.path),
                **reload,
            },
            tags=self.get_tags(row),
            freshness_policy=dg.FreshnessPolicy.time_window(fail_window=window) if window else None,
        )

    def get_source_metadata(self, row: ControlRow, source: ResolvedSource | None) -> dict[str, Any]:
        """Where a load's rows came from: system, connection, database, schema, table. No host,
        user or secret: only names a person uses to find the source."""
        meta: dict[str, Any] = {SOURCE_SYSTEM: dg.MetadataValue.text(str(row.db_type or ""))}
        if source is not None and source.connection_name:
            meta[SOURCE_CONNECTION] = dg.MetadataValue.text(source.connection_name)
        for key, value in (
            (SOURCE_DATABASE, row.source_catalog),
            (SOURCE_SCHEMA, row.source_schema_name),
            (SOURCE_TABLE, row.source_table_name),
        ):
            if value:
                meta[key] = dg.MetadataValue.text(str(value))
        return meta


def _source_where(row: DeclaredTable) -> str:
    parts = (row.source_catalog, row.source_schema_name, row.source_table_name)
    return ".".join(str(p) for p in parts if p)


# The shipped translator: what every ``translator`` argument defaults to.
DEFAULT_TRANSLATOR = DataLoaderTranslator()
