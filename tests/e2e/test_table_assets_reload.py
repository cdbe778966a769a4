"""A row added with SQL while `dataloader dev` runs gets its declared table asset (checks,
freshness, its place in the lineage) without a person reloading the code location, and a row
paused with ``is_active = false`` loses it: ``table_assets_sensor`` asks the webserver to reload.

Through the GraphQL API of one real `dataloader dev`. The other sensors stay stopped (no load
races the rows); the reload sensor is started the way a person starts a sensor in the UI. The
seconds from the SQL statement to the asset's (dis)appearance are printed (docs: README, "Each
table is an asset too"); the test asserts only that it happens within a generous bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from helpers import free_port, running_dev
from test_ui_launches import REPOSITORY, Dev, _code_location_loaded

from dagsters.assets.load_checks import ROW_COUNT_CHECK
from dagsters.local.cli import dev_environment
from dagsters.local.demo import DEMO_CATALOG, DEMO_SCHEMA
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.sensors import default_status
from dagsters.sensors.table_assets_sensor import SENSOR_NAME
from dagsters.settings import load_settings

NEW_TABLE = [DEMO_CATALOG, DEMO_SCHEMA, "customers_copy"]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    port = free_port()
    settings = {"DATALOADER_PORT": str(port), "DATALOADER_SENSORS_RUNNING": "false"}
    with running_dev(tmp_path_factory.mktemp("reload"), settings) as (home, process, log):
        started = Dev(f"http://127.0.0.1:{port}", home, process, log)
        started.wait_for(lambda: _code_location_loaded(started), "the code location to load")
        yield started


def _node(dev: Dev, path: list[str]) -> dict | None:
    data = dev.gql(
        "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { __typename"
        " ... on AssetNode { groupName isExecutable dependencyKeys { path }"
        " assetChecksOrError { ... on AssetChecks { checks { name } } } } } }",
        k={"path": path},
    )["assetNodeOrError"]
    return data if data["__typename"] == "AssetNode" else None


def _start_sensor(dev: Dev) -> None:
    started = dev.gql(
        "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }",
        s={**REPOSITORY, "sensorName": SENSOR_NAME},
    )["startSensor"]
    assert started["__typename"] == "Sensor", started


def _ticks(dev: Dev) -> list[dict]:
    data = dev.gql(
        "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {"
        " sensorState { ticks(limit: 20) { status skipReason error { message } } } } } }",
        s={**REPOSITORY, "sensorName": SENSOR_NAME},
    )
    return data["sensorOrError"]["sensorState"]["ticks"]


def test_dataloader_dev_runs_the_reload_sensor_by_default(tmp_path):
    env = dev_environment("127.0.0.1", 3000, {"DATALOADER_HOME": str(tmp_path)})
    settings = load_settings(env)
    assert settings.reloads_table_assets
    assert settings.table_assets_reload_seconds == 15
    assert default_status(settings).value == "RUNNING"
    assert not load_settings({}).reloads_table_assets  # no declared tables: no sensor
    assert not load_settings(
        {**env, "DATALOADER_TABLE_ASSETS_RELOAD_SECONDS": "0"}
    ).reloads_table_assets
    assert not load_settings({**env, "DAGSTER_ENVIRONMENT": "npd"}).reloads_table_assets


def test_a_row_added_with_sql_gets_its_asset_and_loses_it_when_paused(dev: Dev):
    assert _node(dev, NEW_TABLE) is None
    _start_sensor(dev)
    # Its first tick finds nothing to do; the row comes at a random point of the next interval.
    dev.wait_for(lambda: _ticks(dev), "the sensor's first tick")
    added = time.monotonic()
    dev.sql(
        "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
        " source_table_name, destination_catalog, destination_schema_name,"
        " destination_table_name, db_type, db_config_value, load_strategy, schedule_interval,"
        " next_load_date_time)"
        " SELECT 'demo.customers_copy', source_catalog, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, 'customers_copy', db_type,"
        " db_config_value, 'full', interval '5 minutes', now() + interval '1 day'"
        " FROM table_control WHERE control_key = 'demo.customers'"
    )
    node = dev.wait_for(lambda: _node(dev, NEW_TABLE), "the new row's table asset")
    appeared = time.monotonic() - added
    # Declared: its checks, its group (one per source) and its edge from the load asset.
    assert ROW_COUNT_CHECK in {c["name"] for c in node["assetChecksOrError"]["checks"]}
    assert node["groupName"] == "source_postgresql_demo_source"
    assert {"path": [LOAD_ASSET]} in node["dependencyKeys"]

    paused = time.monotonic()
    dev.sql("UPDATE table_control SET is_active = false WHERE control_key = 'demo.customers_copy'")
    dev.wait_for(lambda: _node(dev, NEW_TABLE) is None, "the paused row's asset to go")
    gone = time.monotonic() - paused
    # None failed (a tick may still be STARTED when they are read: the sensor keeps ticking).
    ticks = _ticks(dev)
    assert [t for t in ticks if t["status"] == "FAILURE"] == [], ticks
    assert "SKIPPED" in {t["status"] for t in ticks}, ticks
    print(f"\ntable asset appeared {appeared:.1f} s after INSERT, went {gone:.1f} s after pause")
    (dev.home.parent / "reload_seconds.txt").write_text(f"{appeared:.1f} {gone:.1f}\n")
