"""A person's launches of a table load, through the GraphQL API of one running `dataloader dev`.

Pins down: the old README YAML (config, no partition) is refused before anything is claimed and
says which partition to select; a partition picked in the job's launchpad is pre-filled with the
one option a person sets (no resource config) and carries the table's tags from launch, and `force_full_reload: true`
does reload everything; a materialization from the asset page lands on its partition and gets the
tags when it starts; a failed run re-executed from failure loads on the same partition. Every
launch is checked by the partition's status, the run's tags and the control row. A headless
chromium (Debian's package, when installed) opens the table's asset page and finds its row count.

The sensors are stopped in this instance (DATALOADER_SENSORS_RUNNING=false) so no scheduled load
races the launches; the partitions are added the way a person adds one in the UI.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from helpers import add_control_row, embedded_conninfo, free_port, load_scripts, running_dev
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from dagsters.control.rows import ControlRow, fetch_one
from dagsters.local.demo import DEMO_DATABASE, DEMO_SCHEMA, DEMO_TABLES
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import (
    LOAD_ASSET,
    TAG_METADATA_ID,
    TAG_SOURCE_SYSTEM,
    source_system,
)

WAIT_SECONDS = 240  # a bound, not a timing assertion: a test fails only if nothing happens
REPOSITORY = {"repositoryLocationName": "dataloader", "repositoryName": "__repository__"}
LOAD_JOB = "dataloader__table_load_job"
ASSET_KEY = {"path": [LOAD_ASSET]}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass
class Dev:
    url: str
    home: Path
    process: subprocess.Popen
    log: Path

    def gql(self, query: str, **variables: Any) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        assert not answer.get("errors"), answer["errors"]
        return answer["data"]

    def sql(self, statement: str, params: tuple = ()) -> list[dict]:
        conninfo = embedded_conninfo(self.home)
        assert conninfo, "the embedded control database is not running"
        with psycopg.connect(conninfo, row_factory=dict_row, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def wait_for(self, predicate: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"dataloader dev exited:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}:\n{self.log.read_text()[-4000:]}")


def _code_location_loaded(dev: Dev) -> bool:
    try:
        data = dev.gql(
            "query($s: RepositorySelector!) { repositoryOrError(repositorySelector: $s) "
            "{ __typename } }",
            s=REPOSITORY,
        )
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return data["repositoryOrError"]["__typename"] == "Repository"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    port = free_port()
    settings = {"DATALOADER_PORT": str(port), "DATALOADER_SENSORS_RUNNING": "false"}
    with running_dev(tmp_path_factory.mktemp("ui"), settings) as (home, process, log):
        started = Dev(f"http://127.0.0.1:{port}", home, process, log)
        started.wait_for(lambda: _code_location_loaded(started), "the code location to load")
        for key, *_ in DEMO_TABLES:  # master_sensor's job; done here as a person can in the UI
            added = started.gql(
                "mutation($r: RepositorySelector!, $d: String!, $k: String!) {"
                " addDynamicPartition(repositorySelector: $r, partitionsDefName: $d,"
                " partitionKey: $k) { __typename } }",
                r=REPOSITORY,
                d=PARTITIONS_NAME,
                k=key,
            )
            assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
        yield started


# -- what the UI sends ------------------------------------------------------------------------


def _launch(dev: Dev, config: dict | None, tags: dict[str, str], *, asset_page=False) -> str:
    selector = {**REPOSITORY, "jobName": LOAD_JOB}
    if asset_page:  # the asset page's Materialize: Dagster's hidden asset job, one asset
        selector = {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [ASSET_KEY]}
    data = dev.gql(
        "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename"
        " ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }"
        " ... on RunConfigValidationInvalid { errors { message } } } }",
        p={
            "selector": selector,
            "runConfigData": config or {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        },
    )
    launched = data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _partition_in_launchpad(dev: Dev, key: str) -> tuple[dict, dict[str, str]]:
    """What the launchpad fills in when the partition is picked: run config and tags."""
    data = dev.gql(
        "query($s: PipelineSelector!, $k: String!, $a: [AssetKeyInput!]) {"
        " pipelineOrError(params: $s) { ... on Pipeline {"
        " partition(partitionName: $k, selectedAssetKeys: $a) {"
        " runConfigOrError { ... on PartitionRunConfig { yaml } }"
        " tagsOrError { ... on PartitionTags { results { key value } } } } } } }",
        s={**REPOSITORY, "pipelineName": LOAD_JOB},
        k=key,
        a=[ASSET_KEY],
    )
    partition = data["pipelineOrError"]["partition"]
    tags = {t["key"]: t["value"] for t in partition["tagsOrError"]["results"]}
    return yaml.safe_load(partition["runConfigOrError"]["yaml"]), tags


def _finished_run(dev: Dev, run_id: str) -> dict:
    def finished() -> dict | None:
        run = dev.gql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status"
            " tags { key value } } } }",
            id=run_id,
        )["runOrError"]
        return run if run["status"] in FINISHED else None

    run = dev.wait_for(finished, f"run {run_id} to finish")
    return {"status": run["status"], "tags": {t["key"]: t["value"] for t in run["tags"]}}


def _failure_text(dev: Dev, run_id: str) -> str:
    events = dev.gql(
        "query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {"
        " __typename ... on ExecutionStepFailureEvent { error { message } } } } } }",
        id=run_id,
    )["logsForRun"]["events"]
    return "\n".join(e["error"]["message"] for e in events if e.get("error"))


def _partition_status(dev: Dev) -> dict[str, list[str]]:
    data = dev.gql(
        "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode {"
        " assetPartitionStatuses { ... on DefaultPartitionStatuses {"
        " materializedPartitions failedPartitions } } } } }",
        k=ASSET_KEY,
    )
    return data["assetNodeOrError"]["assetPartitionStatuses"]


def _row(dev: Dev, key: str) -> dict:
    [row] = dev.sql("SELECT * FROM table_control WHERE control_key = %s", (key,))
    return row


def _typed(dev: Dev, key: str) -> ControlRow:
    """The row as the code reads it."""
    conninfo = embedded_conninfo(dev.home)
    assert conninfo, "the embedded control database is not running"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = fetch_one(
            conn, ControlRow, "SELECT * FROM table_control WHERE control_key = %s", (key,)
        )
    assert row is not None
    return row


def _history(dev: Dev, key: str) -> list[dict]:
    return dev.sql(
        "SELECT * FROM historical_metadata WHERE control_key = %s ORDER BY metadata_id", (key,)
    )


# -- the launch paths -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_launches(dev: Dev) -> dict[str, str]:
    """The launches that do not wait on each other, made at once (they run side by side):
    the old README YAML, a materialization from the asset page, and a load bound to fail."""
    dev.sql(
        "UPDATE table_control SET source_table_name = 'no_such_products'"
        " WHERE control_key = 'demo.products'"
    )
    old_readme = {"ops": {LOAD_ASSET: {"config": {"control_key": "demo.customers"}}}}
    config, tags = _partition_in_launchpad(dev, "demo.products")
    return {
        "old_readme": _launch(dev, old_readme, {}),
        "asset_page": _launch(dev, None, {"dagster/partition": "demo.orders"}, asset_page=True),
        "failing": _launch(dev, config, tags),
    }


def test_the_old_readme_yaml_without_a_partition_is_refused_before_any_claim(
    dev: Dev, first_launches: dict[str, str]
):
    run_id = first_launches["old_readme"]
    assert _finished_run(dev, run_id)["status"] == "FAILURE"
    assert "select the partition 'demo.customers' and launch again" in _failure_text(dev, run_id)
    assert _history(dev, "demo.customers") == []
    assert _row(dev, "demo.customers")["last_status"] is None


def test_materializing_a_partition_from_the_asset_page_lands_on_it(
    dev: Dev, first_launches: dict[str, str]
):
    run_id = first_launches["asset_page"]
    run = _finished_run(dev, run_id)
    assert run["status"] == "SUCCESS", _failure_text(dev, run_id)
    attempt = _history(dev, "demo.orders")[0]
    assert (attempt["status"], attempt["triggered_by"]) == ("Succeeded", "ui")
    assert attempt["dagster_run_id"] == run_id
    assert run["tags"][TAG_METADATA_ID] == str(attempt["metadata_id"])  # tagged when it started
    assert run["tags"][TAG_SOURCE_SYSTEM] == source_system(_typed(dev, "demo.orders"))
    assert "demo.orders" in _partition_status(dev)["materializedPartitions"]


def _latest_metadata(dev: Dev, path: list[str]) -> dict[str, str]:
    """The metadata of the asset's latest materialization, label -> shown value, via GraphQL."""
    data = dev.gql(
        "query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { ... on Asset {"
        " assetMaterializations(limit: 1) { partition metadataEntries { label"
        " ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } } }",
        k={"path": path},
    )
    [latest] = data["assetOrError"]["assetMaterializations"]
    return {e["label"]: e.get("intValue", e.get("text")) for e in latest["metadataEntries"]}


def test_the_tables_columns_and_row_count_are_on_its_asset_not_the_load_assets(
    dev: Dev, first_launches: dict[str, str]
):
    assert _finished_run(dev, first_launches["asset_page"])["status"] == "SUCCESS"
    row = _row(dev, "demo.orders")
    rows = _history(dev, "demo.orders")[-1]["rows_written"]
    load = _latest_metadata(dev, [LOAD_ASSET])
    assert not {"dagster/column_schema", "dagster/row_count", "dagster/table_name"} & set(load)
    assert load["rows_written"] == rows  # the load's own fact stays on the load asset
    table = _latest_metadata(
        dev,
        [row["destination_catalog"], row["destination_schema_name"], row["destination_table_name"]],
    )
    assert table["dagster/row_count"] == rows
    assert "dagster/column_schema" in table


def test_a_tables_page_links_to_its_partition_of_the_load(dev: Dev):
    row = _row(dev, "demo.orders")
    table = [
        row["destination_catalog"],
        row["destination_schema_name"],
        row["destination_table_name"],
    ]
    data = dev.gql(
        "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode {"
        " description metadataEntries { label ... on UrlMetadataEntry { url } } } } }",
        k={"path": table},
    )
    node = data["assetNodeOrError"]
    links = {e["label"]: e.get("url") for e in node["metadataEntries"]}
    target = f"{dev.url}/assets/{LOAD_ASSET}?view=partitions&partition=demo.orders"
    assert links["reload"] == target
    assert f"]({target})" in node["description"]  # the Overview's description links it too
    with urllib.request.urlopen(target, timeout=30) as page:  # the UI serves that page
        assert page.status == 200


def test_a_partition_picked_in_the_launchpad_forces_a_full_reload_with_the_tables_tags(
    dev: Dev, first_launches: dict[str, str]
):
    config, tags = _partition_in_launchpad(dev, "demo.orders")
    assert config == {"ops": {LOAD_ASSET: {"config": {"force_full_reload": False}}}}
    assert tags["dagster/partition"] == "demo.orders"
    # The per-source limit holds it in the queue like a sensor run.
    assert tags[TAG_SOURCE_SYSTEM] == source_system(_typed(dev, "demo.orders"))

    # demo.orders is incremental and was loaded from the asset page: nothing new in the source,
    # yet the one option, honoured, writes every row again.
    assert _finished_run(dev, first_launches["asset_page"])["status"] == "SUCCESS"
    config["ops"][LOAD_ASSET]["config"]["force_full_reload"] = True
    forced_run = _launch(dev, config, tags)
    run = _finished_run(dev, forced_run)
    assert run["status"] == "SUCCESS", _failure_text(dev, forced_run)
    loaded, forced = _history(dev, "demo.orders")
    assert forced["rows_written"] == loaded["rows_written"] > 0
    assert (forced["status"], forced["triggered_by"]) == ("Succeeded", "ui")
    assert forced["dagster_run_id"] == forced_run
    assert run["tags"][TAG_METADATA_ID] == str(forced["metadata_id"])
    row = _row(dev, "demo.orders")
    assert (row["last_status"], row["force_full_reload"]) == ("Succeeded", False)
    assert "demo.orders" in _partition_status(dev)["materializedPartitions"]


def test_a_failed_run_re_executed_from_failure_loads_on_the_same_partition(
    dev: Dev, first_launches: dict[str, str]
):
    failed_run = first_launches["failing"]
    assert _finished_run(dev, failed_run)["status"] == "FAILURE"
    assert "no_such_products" in (_row(dev, "demo.products")["last_message"] or ""), _failure_text(
        dev, failed_run
    )
    assert _row(dev, "demo.products")["last_status"] == "Failed"
    assert "demo.products" in _partition_status(dev)["failedPartitions"]

    dev.sql(
        "UPDATE table_control SET source_table_name = 'products'"
        " WHERE control_key = 'demo.products'"
    )
    data = dev.gql(
        "mutation($p: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $p) {"
        " __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
        p={"parentRunId": failed_run, "strategy": "FROM_FAILURE"},
    )
    assert data["launchRunReexecution"]["__typename"] == "LaunchRunSuccess", data
    again = data["launchRunReexecution"]["run"]["runId"]
    run = _finished_run(dev, again)
    assert run["status"] == "SUCCESS", _failure_text(dev, again)

    old, new = _history(dev, "demo.products")
    assert (old["status"], old["dagster_run_id"]) == ("Failed", failed_run)
    assert (new["status"], new["triggered_by"], new["dagster_run_id"]) == ("Succeeded", "ui", again)
    assert run["tags"][TAG_METADATA_ID] == str(new["metadata_id"])
    assert run["tags"]["dagster/partition"] == "demo.products"
    assert _row(dev, "demo.products")["last_status"] == "Succeeded"
    status = _partition_status(dev)
    assert "demo.products" in status["materializedPartitions"]
    assert "demo.products" not in status["failedPartitions"]


def test_the_asset_page_shows_the_tables_row_count_in_a_browser(dev: Dev):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    loaded = _history(dev, "demo.orders")
    if not loaded:
        pytest.skip("demo.orders was not loaded by the launch tests of this module")
    rows = str(loaded[-1]["rows_written"])
    row = _row(dev, "demo.orders")  # the table's own asset page, where its row count belongs
    table = "/".join(
        row[c] for c in ("destination_catalog", "destination_schema_name", "destination_table_name")
    )
    page = f"{dev.url}/assets/{table}"
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    (dev.home.parent / "asset_page.html").write_text(dom)  # kept with the test's files
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))  # what a person reads
    # Dagster 1.13 shows dagster/row_count in the page's Status box, as "Row count N".
    assert re.search(rf"Row count {rows} ", text), text[:2000]
    # One click from the table's page to its partition of the load, where Materialize reloads it.
    reload = f"/assets/{LOAD_ASSET}?view=partitions&partition=demo.orders"
    assert re.search(rf'href="[^"]*{re.escape(reload)}"', html.unescape(dom)), "no reload link"


# -- termination: the step runs in the run worker itself (the in-process executor) ------------


def _demo_source(dev: Dev, statement: str) -> list[dict]:
    conninfo = make_conninfo(embedded_conninfo(dev.home), dbname=DEMO_DATABASE)
    with psycopg.connect(conninfo, row_factory=dict_row, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_terminating_a_running_load_in_the_ui_stops_its_script_and_records_the_cancellation(
    dev: Dev, first_launches: dict[str, str]
):
    """Terminate goes to the run worker, which now runs the step itself: the script inside its
    source query is stopped, the row ends Failed with the cancellation, nothing materializes."""
    _demo_source(
        dev,
        "CREATE OR REPLACE VIEW shop.slow_customers AS SELECT c.* FROM shop.customers c"
        " WHERE (SELECT count(*) FROM pg_sleep(600)) > 0",
    )
    conninfo = make_conninfo(embedded_conninfo(dev.home), dbname=DEMO_DATABASE)
    with psycopg.connect(embedded_conninfo(dev.home), row_factory=dict_row, autocommit=True) as db:
        add_control_row(
            db,
            conninfo,
            "demo.slow",
            "slow_customers",
            source_schema_name=DEMO_SCHEMA,
            load_strategy="full",
            incremental_column=None,
        )
    added = dev.gql(
        "mutation($r: RepositorySelector!, $d: String!, $k: String!) {"
        " addDynamicPartition(repositorySelector: $r, partitionsDefName: $d,"
        " partitionKey: $k) { __typename } }",
        r=REPOSITORY,
        d=PARTITIONS_NAME,
        k="demo.slow",
    )
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
    config, tags = _partition_in_launchpad(dev, "demo.slow")
    run_id = _launch(dev, config, tags)

    def inside_the_source_query() -> bool:
        return (
            _row(dev, "demo.slow")["last_status"] == "In Progress"
            and bool(load_scripts(dev.process.pid))
            and bool(
                _demo_source(
                    dev,
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                    " AND query LIKE '%slow_customers%' AND pid <> pg_backend_pid()",
                )
            )
        )

    dev.wait_for(inside_the_source_query, "the load to be inside its source query")
    data = dev.gql(
        "mutation($id: String!) { terminateRun(runId: $id) { __typename"
        " ... on TerminateRunFailure { message } ... on PythonError { message } } }",
        id=run_id,
    )
    assert data["terminateRun"]["__typename"] == "TerminateRunSuccess", data

    assert _finished_run(dev, run_id)["status"] in ("CANCELED", "FAILURE")
    row = dev.wait_for(
        lambda: (r := _row(dev, "demo.slow"))["last_status"] == "Failed" and r, "the row to fail"
    )
    assert row["last_message"].startswith("Cancelled"), row["last_message"]
    [attempt] = _history(dev, "demo.slow")
    assert (attempt["status"], attempt["dagster_run_id"]) == ("Failed", run_id)
    assert "demo.slow" not in _partition_status(dev)["materializedPartitions"]
    dev.wait_for(lambda: not load_scripts(dev.process.pid), "the load script to exit")
