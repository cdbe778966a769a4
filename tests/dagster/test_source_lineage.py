"""Source lineage (issue 27): each declared destination table depends on its source table, an
external asset keyed by connection, database, schema and table, grouped per connection, whose
metadata names the connection, type and host and nothing secret; the edges as the UI reads them
(GraphQL, an out-of-process code location); column comments as dbt descriptions."""

from __future__ import annotations

import dagster as dg
from helpers import add_control_row, insert_control_row, lakebase_for
from test_secret_binding import add_connection

from dagsters.assets.table_specs import table_asset_definitions
from dagsters.settings import load_settings


def test_tables_depend_on_their_source_tables_grouped_per_connection(control_db, source_db, db):
    add_control_row(db, source_db, "pg.orders", "orders")
    add_connection(
        db,
        "erp",
        "mysql",
        host="erp-db.internal",
        port=3306,
        database="erp",
        user_name="loader",
        secret_scope="kv-main",
        secret_key="erp-pass",
    )
    insert_control_row(
        db,
        {
            "control_key": "erp.invoices",
            "source_schema_name": "billing",
            "source_table_name": "invoices",
            "destination_catalog": "lake",
            "destination_schema_name": "erp",
            "destination_table_name": "invoices",
            "db_type": "mysql",
            "connection_name": "erp",
            "load_strategy": "full",
        },
    )
    settings = load_settings({"DATALOADER_TABLE_ASSETS_MAX": "10"})
    specs, _ = table_asset_definitions(settings, lakebase_for(control_db))
    graph = dg.Definitions(assets=specs).resolve_asset_graph()

    invoices = dg.AssetKey(["lake", "erp", "invoices"])
    source = dg.AssetKey(["sources", "erp", "billing", "invoices"])
    # source -> load -> table: the table hangs off its source and the load asset.
    assert graph.get(invoices).parent_keys == {source, dg.AssetKey("dataloader__table_load")}
    node = graph.get(source)
    assert node.group_name == "source_erp" and node.kinds == {"mysql"}
    meta = {k: v.value for k, v in node.metadata.items()}
    assert meta == {"connection": "erp", "type": "mysql", "host": "erp-db.internal"}
    assert "loader" not in str(meta) and "erp-pass" not in str(meta) and "kv-main" not in str(meta)

    [orders_source] = [
        key
        for key in graph.get(dg.AssetKey(["lake", "raw", "orders"])).parent_keys
        if key.path[0] == "sources"
    ]
    assert orders_source.path[0] == "sources" and orders_source.path[-2:] == ["public", "orders"]
    assert graph.get(orders_source).group_name.startswith("source_postgresql_")


def test_column_comments_in_delta_become_dbt_source_descriptions():
    from dagsters.landing.dbt_files import source_table_entry
    from dagsters.landing.schema import LandingTable, columns_from_delta_schema

    schema = {
        "fields": [
            {"name": "id", "type": "long", "nullable": False, "metadata": {}},
            {"name": "name", "type": "string", "metadata": {"comment": "Given name"}},
        ]
    }
    columns = columns_from_delta_schema(schema)
    table = LandingTable(1, "pii.people", "merge", "lake", "raw", "people", columns)
    entry = source_table_entry(table)
    assert entry["columns"] == [
        {"name": "id", "data_type": "bigint"},
        {"name": "name", "data_type": "string", "description": "Given name"},
    ]


LINEAGE_LOCATION = """
import os

import dagster as dg
from psycopg.conninfo import conninfo_to_dict

from dagsters.assets.table_specs import table_asset_definitions
from dagsters.resources.lakebase import LakebaseResource
from dagsters.settings import load_settings

_parts = conninfo_to_dict(os.environ["LINEAGE_TEST_CONNINFO"])
_lakebase = LakebaseResource(
    host=_parts["host"], port=int(_parts["port"]), database=_parts["dbname"],
    user=_parts["user"], sslmode="disable",
)
_specs, _ = table_asset_definitions(load_settings({"DATALOADER_TABLE_ASSETS_MAX": "10"}), _lakebase)
defs = dg.Definitions(assets=_specs)
"""

ASSET_NODES = """{ assetNodes { assetKey { path } dependencyKeys { path } groupName
  metadataEntries { label ... on TextMetadataEntry { text } } } }"""


def test_the_lineage_edges_are_in_graphql(control_db, source_db, db, tmp_path, monkeypatch):
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    add_control_row(db, source_db, "pg.orders", "orders")
    location = tmp_path / "lineage_location.py"
    location.write_text(LINEAGE_LOCATION)
    monkeypatch.setenv("LINEAGE_TEST_CONNINFO", control_db)
    with (
        dg.instance_for_test() as instance,
        define_out_of_process_context(str(location), None, instance) as context,
    ):
        result = execute_dagster_graphql(context, ASSET_NODES)
    assert not result.errors, result.errors
    nodes = {tuple(n["assetKey"]["path"]): n for n in result.data["assetNodes"]}
    table = nodes[("lake", "raw", "orders")]
    [source] = [tuple(d["path"]) for d in table["dependencyKeys"] if d["path"][0] == "sources"]
    assert source[0] == "sources" and source[-2:] == ("public", "orders")
    assert nodes[source]["groupName"].startswith("source_postgresql_")
    labels = {e["label"] for e in nodes[source]["metadataEntries"]}
    assert labels == {"type", "host"}  # a row without a connection: no connection name
