"""The dbt demo under examples/: dbt parses it, dagster-dbt loads it, and its model's upstream is
the asset key a DataLoader load records for the demo table it reads."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from helpers import make_declared

from dagsters.local.demo import DEMO_CATALOG, DEMO_DATABASE, DEMO_SCHEMA
from dagsters.translator import DEFAULT_TRANSLATOR

pytest.importorskip(
    "dagster_dbt", reason="the dbt extra is not installed (pip install -e '.[dbt]')"
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dbt_demo"
DBT = Path(sys.executable).with_name("dbt")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example with its manifest made by ``dbt parse`` (what a first load does)."""
    project = tmp_path_factory.mktemp("dbt") / "dbt_demo"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb"))
    completed = subprocess.run(
        [str(DBT), "parse", "--project-dir", str(project), "--profiles-dir", str(project)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (project / "target" / "manifest.json").exists()
    return project


def _load_example_definitions(project: Path) -> dg.Definitions:
    spec = importlib.util.spec_from_file_location(
        "dbt_demo_definitions", project / "definitions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def test_the_models_upstream_is_the_loaded_tables_asset_key(example):
    defs = _load_example_definitions(example)
    graph = defs.resolve_asset_graph()
    model = dg.AssetKey(["orders_by_country"])
    orders = DEFAULT_TRANSLATOR.get_asset_key(
        make_declared(
            destination_catalog=DEMO_CATALOG,
            destination_schema_name=DEMO_SCHEMA,
            destination_table_name="orders",
        )
    )
    customers = dg.AssetKey([DEMO_CATALOG, DEMO_SCHEMA, "customers"])

    assert graph.get(model).parent_keys == {orders, customers}
    assert orders == dg.AssetKey(["demo_lake", "shop", "orders"])


def test_the_lineage_draws_load_then_table_then_model_grouped_per_source(example):
    """The two code locations' graph as the UI joins it: the load asset, the declared tables
    (as ``dataloader dev`` declares the demo rows), the dbt model."""
    from dagsters.definitions import defs
    from dagsters.policy.run_requests import LOAD_ASSET

    rows = [
        make_declared(
            control_key=f"demo.{table}",
            db_type="postgresql",
            db_config_value={"host": "/tmp/pg", "database": DEMO_DATABASE},
            source_catalog=DEMO_DATABASE,
            source_schema_name=DEMO_SCHEMA,
            source_table_name=table,
            destination_catalog=DEMO_CATALOG,
            destination_schema_name=DEMO_SCHEMA,
            destination_table_name=table,
            load_strategy="full",
        )
        for table in ("orders", "customers")
    ]
    tables = dg.Definitions(assets=[DEFAULT_TRANSLATOR.get_asset_spec(r, "local") for r in rows])
    graph = dg.Definitions.merge(
        defs, tables, _load_example_definitions(example)
    ).resolve_asset_graph()
    load, model = dg.AssetKey(LOAD_ASSET), dg.AssetKey(["orders_by_country"])
    keys = {dg.AssetKey([DEMO_CATALOG, DEMO_SCHEMA, t]) for t in ("orders", "customers")}

    assert graph.get(model).parent_keys == keys
    for table in keys:
        parents = graph.get(table).parent_keys  # the load, and the source table it reads
        assert {key for key in parents if key.path[0] != "sources"} == {load}
        assert len(parents) == 2
        assert graph.get(table).group_name == f"source_postgresql_{DEMO_DATABASE}"
    assert keys <= graph.get(load).child_keys


def test_the_model_builds_from_the_delta_tables_a_load_wrote(example, tmp_path, monkeypatch):
    """dagster-dbt runs ``dbt build``; dbt-duckdb's delta plugin reads the Delta tables."""
    import duckdb
    import pyarrow as pa
    from deltalake import write_deltalake

    lake = tmp_path / "lake"
    shop = lake / DEMO_CATALOG / DEMO_SCHEMA
    write_deltalake(
        str(shop / "customers"),
        pa.table({"customer_id": [1, 2], "country": ["GB", "US"]}),
    )
    write_deltalake(
        str(shop / "orders"),
        pa.table({"customer_id": [1, 2, 2], "amount": [10.0, 5.0, 2.5]}),
    )
    warehouse = tmp_path / "demo.duckdb"
    monkeypatch.setenv("DATALOADER_LAKE_ROOT", str(lake))
    monkeypatch.setenv("DBT_DEMO_DUCKDB", str(warehouse))
    defs = _load_example_definitions(example)

    result = dg.materialize([defs.resolve_assets_def(dg.AssetKey(["orders_by_country"]))])

    assert result.success
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT country, orders, revenue FROM orders_by_country ORDER BY 1")
        assert rows.fetchall() == [("GB", 1, 10.0), ("US", 2, 7.5)]
