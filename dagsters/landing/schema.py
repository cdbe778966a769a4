"""A landed table's columns: from the local Delta table on disk or from Unity Catalog rows.

Plain module (no Dagster). ``landing_table_git_job`` reads each destination table through one of
the two paths (local mode: :func:`read_delta_columns`; Databricks mode: the query from
:func:`uc_columns_statement`, rows turned into columns by :func:`columns_from_uc_rows`) and hands
the resulting :class:`LandingTable` to :mod:`dagsters.landing.publish`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagsters.landing.names import quote_identifier


@dataclass(frozen=True)
class LandingColumn:
    """One column of a landed table; ``data_type`` is Databricks SQL type text (``bigint``...)."""

    name: str
    data_type: str
    nullable: bool = True
    # The column's comment (the source's, carried by the loader into Delta): its dbt description.
    description: str | None = None


@dataclass(frozen=True)
class LandingTable:
    """A destination table with the control row facts that go into its dbt files."""

    config_id: int
    control_key: str
    load_strategy: str
    catalog: str
    schema: str
    table: str
    columns: tuple[LandingColumn, ...]

    @property
    def full_name(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.table}"


class SchemaUnavailable(Exception):
    """The destination table's schema could not be read (missing table, no columns, API error)."""


# Delta's protocol names differ from the SQL names dbt users write (Delta ``long``, SQL ``bigint``).
_DELTA_PRIMITIVE_TO_SQL = {
    "long": "bigint",
    "integer": "int",
    "short": "smallint",
    "byte": "tinyint",
}


def delta_type_to_sql(delta_type: str | Mapping[str, Any]) -> str:
    """Databricks SQL type text for a type from a Delta protocol schema (JSON form)."""
    if isinstance(delta_type, str):
        return _DELTA_PRIMITIVE_TO_SQL.get(delta_type, delta_type)
    kind = delta_type.get("type")
    if kind == "array":
        return f"array<{delta_type_to_sql(delta_type['elementType'])}>"
    if kind == "map":
        key = delta_type_to_sql(delta_type["keyType"])
        return f"map<{key},{delta_type_to_sql(delta_type['valueType'])}>"
    if kind == "struct":
        inner = ",".join(
            f"{_struct_field_name(f['name'])}:{delta_type_to_sql(f['type'])}"
            for f in delta_type["fields"]
        )
        return f"struct<{inner}>"
    raise SchemaUnavailable(f"unknown Delta type {json.dumps(delta_type)}")


def _struct_field_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else quote_identifier(name)


def columns_from_delta_schema(schema_json: str | Mapping[str, Any]) -> tuple[LandingColumn, ...]:
    """Columns of a Delta table from its protocol schema (``DeltaTable.schema().to_json()``)."""
    schema = json.loads(schema_json) if isinstance(schema_json, str) else schema_json
    return tuple(
        LandingColumn(
            f["name"],
            delta_type_to_sql(f["type"]),
            bool(f.get("nullable", True)),
            (f.get("metadata") or {}).get("comment") or None,
        )
        for f in schema.get("fields", [])
    )


def read_delta_columns(table_path: Path | str) -> tuple[LandingColumn, ...]:
    """Read the columns of the Delta table at ``table_path``; SchemaUnavailable when it can't."""
    from deltalake import DeltaTable  # imported here: Databricks mode never needs it

    path = Path(table_path)
    if not path.exists():
        raise SchemaUnavailable(f"no Delta table at {path}")
    try:
        schema_json = DeltaTable(str(path)).schema().to_json()
    except Exception as exc:  # deltalake raises several unrelated types for a broken table
        raise SchemaUnavailable(f"cannot read Delta table at {path}: {exc}") from exc
    columns = columns_from_delta_schema(schema_json)
    if not columns:
        raise SchemaUnavailable(f"Delta table at {path} has no columns")
    return columns


def local_table_path(lake_root: Path | str, catalog: str, schema: str, table: str) -> Path:
    """Where the local loader writes a destination table (``<lake>/<catalog>/<schema>/<table>``)."""
    for part in (catalog, schema, table):
        # Same rule as the loader: a control row must not point outside the lake.
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise SchemaUnavailable(f"destination name part {part!r} is not a directory name")
    return Path(lake_root) / catalog / schema / table


def uc_columns_statement(catalog: str, schema: str, table: str) -> tuple[str, dict[str, str]]:
    """Unity Catalog query for a table's columns: SQL text plus named parameters.

    The catalog is an identifier (each catalog has its own information_schema) so it is quoted;
    schema and table are values and go in as parameters.
    """
    statement = (
        "SELECT column_name, full_data_type, is_nullable, ordinal_position "
        f"FROM {quote_identifier(catalog)}.information_schema.columns "
        "WHERE table_schema = :schema_name AND table_name = :table_name "
        "ORDER BY ordinal_position"
    )
    # Unity Catalog stores schema and table names in lower case.
    return statement, {"schema_name": schema.lower(), "table_name": table.lower()}


def columns_from_uc_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[LandingColumn, ...]:
    """Columns from ``information_schema.columns`` rows (values arrive as strings)."""
    ordered = sorted(rows, key=lambda r: int(r.get("ordinal_position") or 0))
    return tuple(
        LandingColumn(
            name=str(r["column_name"]),
            data_type=str(r.get("full_data_type") or r.get("data_type")).lower(),
            nullable=str(r.get("is_nullable", "YES")).upper() != "NO",
            description=r.get("comment") or None,
        )
        for r in ordered
    )
