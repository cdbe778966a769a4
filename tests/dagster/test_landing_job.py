"""landing_table_git_job on a real control database: commits the files, marks exactly those rows."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake
from helpers import lakebase_for
from psycopg.rows import dict_row

from dagsters.jobs.landing_table_git_job import landing_table_git_job
from dagsters.resources.databricks_rest import DatabricksRestResource, DatabricksSqlError
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.settings import load_settings

if TYPE_CHECKING:
    from databricks_sql_standin import SqlWarehouseStandin

# The stand-in's fixtures (databricks_standin, sql_warehouse) without shadowing imports.
pytest_plugins = ["databricks_sql_standin"]

BRANCH = "dataloader/landing-tables"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def add_control_row(
    conninfo: str, table: str, *, status: str = "Succeeded", processed: bool = False
) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, load_strategy,"
            " last_status, last_message, staging_model_processed)"
            " VALUES (%s, %s, 'main', 'sales', %s, 'postgresql', 'full', %s, 'loaded', %s)"
            " RETURNING config_id",
            (f"sales.{table}", table, table, status, processed),
        ).fetchone()[0]


def control_rows(conninfo: str) -> dict[str, dict]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT control_key, last_status, last_message, staging_model_processed"
            " FROM table_control"
        ).fetchall()
    return {r["control_key"]: r for r in rows}


def resources(conninfo: str, env: dict[str, str]) -> dict:
    return {
        "lakebase": lakebase_for(conninfo),
        "databricks_rest": rest_resource(poll_interval_seconds=0.05),
        # Built the way build_definitions builds it: from settings, never from os.environ.
        "models_repo": ModelsRepoResource.from_settings(load_settings(env)),
    }


def rest_resource(**overrides) -> DatabricksRestResource:
    """The resource as the code location builds it, from settings read from the environment."""
    return DatabricksRestResource.from_settings(load_settings(os.environ), **overrides)


def run_job(conninfo: str, config_ids: list[int], env: dict[str, str]) -> dg.ExecuteInProcessResult:
    return landing_table_git_job.execute_in_process(
        run_config={"ops": {"landing_table_git_op": {"config": {"config_ids": config_ids}}}},
        resources=resources(conninfo, env),
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


@pytest.fixture
def control(control_db: str) -> Iterator[str]:
    """``control_db``, closing the resource's cached pool before the database is dropped."""
    yield control_db
    lakebase_for(control_db).get_client().close()


@pytest.fixture
def env(tmp_path: Path, lake_root: Path) -> dict[str, str]:
    """The environment the job's settings are read from (local mode, default repo and branch)."""
    return {"DATALOADER_HOME": str(tmp_path / "home"), "DATALOADER_LAKE_ROOT": str(lake_root)}


@pytest.fixture
def models_repo(env: dict[str, str]) -> Path:
    return Path(env["DATALOADER_HOME"]) / "models_repo"  # the default location


def land(lake_root: Path, table: str) -> None:
    write_deltalake(
        str(lake_root / "main" / "sales" / table),
        pa.table({"ID": pa.array([1], pa.int64()), "amount": pa.array([1], pa.decimal128(9, 2))}),
    )


def test_local_run_commits_readable_tables_and_marks_only_them(
    control: str, lake_root: Path, models_repo: Path, env: dict[str, str]
) -> None:
    land(lake_root, "orders")
    land(lake_root, "customers")
    ids = [add_control_row(control, t) for t in ("orders", "customers", "missing")]
    add_control_row(control, "done", processed=True)
    add_control_row(control, "broken", status="Failed")

    result = run_job(control, ids, env)

    # The unreadable table fails the run so someone looks, after the others were published.
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "sales.missing" in failure.event_specific_data.error.message
    meta = output_metadata(result)
    head = git(models_repo, "rev-parse", "HEAD")
    assert meta["commit"] == head
    assert git(models_repo, "branch", "--show-current") == BRANCH
    assert sorted(meta["changed_files"]) == [
        "models/staging/sales/_sales__sources.yml",
        "models/staging/sales/stg_sales__customers.sql",
        "models/staging/sales/stg_sales__orders.sql",
    ]
    assert meta["processed_tables"] == ["sales.customers", "sales.orders"]
    assert "no Delta table" in meta["unreadable_tables"]["sales.missing"]
    log = git(models_repo, "log", "--format=%B")
    assert "main.sales.orders" in log and "main.sales.customers" in log
    assert "missing" not in log

    rows = control_rows(control)
    assert rows["sales.orders"]["staging_model_processed"]
    assert rows["sales.customers"]["staging_model_processed"]
    assert not rows["sales.missing"]["staging_model_processed"]
    assert rows["sales.missing"]["last_status"] == "Succeeded"
    # Operators see why on the row itself; the load's own message stays in front.
    note = rows["sales.missing"]["last_message"]
    assert note.startswith("loaded | [Landing] staging model not generated, schema not readable:")
    assert "no Delta table" in note
    assert not rows["sales.broken"]["staging_model_processed"]
    assert rows["sales.broken"]["last_message"] == "loaded"

    source = yaml.safe_load((models_repo / meta["changed_files"][0]).read_text())["sources"][0]
    assert {t["name"]: [c["data_type"] for c in t["columns"]] for t in source["tables"]} == {
        "customers": ["bigint", "decimal(9,2)"],
        "orders": ["bigint", "decimal(9,2)"],
    }

    # Once the table can be read, a later run processes it and the note goes away.
    land(lake_root, "missing")
    second = run_job(control, ids, env)
    assert second.success
    rows = control_rows(control)
    assert rows["sales.missing"]["staging_model_processed"]
    assert rows["sales.missing"]["last_message"] == "loaded"


def test_rerun_with_nothing_new_commits_nothing(
    control: str, lake_root: Path, models_repo: Path, env: dict[str, str]
) -> None:
    land(lake_root, "orders")
    config_id = add_control_row(control, "orders")
    assert run_job(control, [config_id], env).success
    head = git(models_repo, "rev-parse", "HEAD")

    again = run_job(control, [config_id], env)

    assert again.success
    assert output_metadata(again)["commit"] == "none"
    assert git(models_repo, "rev-parse", "HEAD") == head
    assert git(models_repo, "rev-list", "--count", "HEAD") == "1"


def test_pushes_to_configured_remote(
    control: str, lake_root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    bare = tmp_path / "dbt.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(bare), str(clone)], check=True)
    env["DATALOADER_MODELS_REPO"] = str(clone)
    env["DATALOADER_MODELS_BRANCH"] = "feature/new-sources"
    land(lake_root, "orders")
    config_id = add_control_row(control, "orders")

    result = run_job(control, [config_id], env)

    assert result.success
    meta = output_metadata(result)
    assert meta["pushed_to"] == "origin"
    assert git(bare, "rev-parse", "refs/heads/feature/new-sources") == meta["commit"]
    assert control_rows(control)["sales.orders"]["staging_model_processed"]


def test_databricks_mode_reads_unity_catalog_through_sql_warehouse(
    control: str,
    models_repo: Path,
    env: dict[str, str],
    sql_warehouse: SqlWarehouseStandin,
) -> None:
    env["DATALOADER_EXECUTION"] = "databricks"
    sql_warehouse.add_table(
        "main.sales.orders",
        [
            ("order_id", "bigint", False),
            ("Total Amount", "decimal(18,2)"),
            ("tags", "array<string>"),
        ],
    )
    ids = [add_control_row(control, t) for t in ("orders", "ghost")]

    result = run_job(control, ids, env)

    assert not result.success  # "ghost" is not in Unity Catalog
    meta = output_metadata(result)
    assert "not found in Unity Catalog" in meta["unreadable_tables"]["sales.ghost"]
    source = yaml.safe_load((models_repo / "models/staging/sales/_sales__sources.yml").read_text())[
        "sources"
    ][0]
    (orders,) = source["tables"]
    assert [(c["name"], c["data_type"]) for c in orders["columns"]] == [
        ("order_id", "bigint"),
        ("Total Amount", "decimal(18,2)"),
        ("tags", "array<string>"),
    ]
    rows = control_rows(control)
    assert rows["sales.orders"]["staging_model_processed"]
    assert not rows["sales.ghost"]["staging_model_processed"]
    (first, *_) = sql_warehouse.submitted()
    assert first["parameters"] == [
        {"name": "schema_name", "value": "sales"},
        {"name": "table_name", "value": "orders"},
    ]


def test_models_repo_resource_takes_its_values_from_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(
        {
            "DATALOADER_HOME": str(home),
            "DATALOADER_MODELS_REMOTE": "upstream",
            "DATALOADER_EXECUTION": "databricks",
        }
    )

    resource = ModelsRepoResource.from_settings(settings)
    repo = resource.repo()

    assert repo.path == home.resolve() / "models_repo"
    assert (repo.branch, repo.remote) == (BRANCH, "upstream")  # the default branch is DataLoader's
    assert repo.lock_dir == home.resolve() / "locks"
    assert Path(resource.lake_root) == home.resolve() / "lake"
    assert resource.execution == "databricks"


# ------------------------------------------------------------------ DatabricksRestResource


def test_statement_polled_until_done_and_all_chunks_read(
    sql_warehouse: SqlWarehouseStandin,
) -> None:
    sql_warehouse.pending_polls = 3
    sql_warehouse.chunk_rows = 2
    sql_warehouse.on_statement(
        r"SELECT id FROM range\(5\)", lambda m, p: (["id"], [[i] for i in range(5)])
    )
    rest = rest_resource(poll_interval_seconds=0.01)

    rows = rest.execute_statement("SELECT id FROM range(5)")

    assert rows == [{"id": str(i)} for i in range(5)]
    statement_gets = sql_warehouse.standin.requests_to("GET", r"/api/2\.0/sql/statements/[^/]+")
    assert len(statement_gets) == 4  # three RUNNING answers, then SUCCEEDED
    chunk_gets = sql_warehouse.standin.requests_to("GET", r".*/result/chunks/\d+")
    assert [r.path.rsplit("/", 1)[1] for r in chunk_gets] == ["1", "2"]


def test_failed_statement_raises_with_warehouse_message_and_no_token(
    sql_warehouse: SqlWarehouseStandin,
) -> None:
    token = sql_warehouse.standin.token

    def leak(match, params):
        sql_warehouse.fail("BAD_REQUEST", f"[INVALID] token was {token}")

    sql_warehouse.on_statement(r"SELECT leak", leak)
    rest = rest_resource()

    with pytest.raises(DatabricksSqlError, match=r"FAILED: BAD_REQUEST: \[INVALID\]") as info:
        rest.execute_statement("SELECT leak")
    assert token not in str(info.value)


def test_statement_running_too_long_is_cancelled(sql_warehouse: SqlWarehouseStandin) -> None:
    sql_warehouse.hang = True
    rest = rest_resource(poll_interval_seconds=0.01, statement_timeout_seconds=0.2)

    with pytest.raises(DatabricksSqlError, match="cancelled"):
        rest.execute_statement("SELECT 1 FROM main.information_schema.columns")
    assert len(sql_warehouse.cancelled) == 1


def test_missing_warehouse_id_is_a_clear_error(
    sql_warehouse: SqlWarehouseStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABRICKS_WAREHOUSE_ID")
    with pytest.raises(DatabricksSqlError, match="DATABRICKS_WAREHOUSE_ID"):
        rest_resource().execute_statement("SELECT 1")


def test_table_missing_from_a_persons_sources_file_is_left_unprocessed_with_a_note(
    control: str, lake_root: Path, models_repo: Path, env: dict[str, str]
) -> None:
    models_repo.mkdir(parents=True)
    git(models_repo, "init", "--quiet", f"--initial-branch={BRANCH}")
    own = models_repo / "models/staging/sales/_sales__sources.yml"
    own.parent.mkdir(parents=True)
    own.write_text("version: 2\nsources:\n  - name: sales\n    tables:\n      - name: orders\n")
    land(lake_root, "orders")
    land(lake_root, "refunds")
    ids = [add_control_row(control, t) for t in ("orders", "refunds")]

    result = run_job(control, ids, env)

    assert not result.success
    meta = output_metadata(result)
    assert meta["processed_tables"] == ["sales.orders"]
    assert (
        "has no entry for source 'sales' table 'refunds'" in meta["blocked_tables"]["sales.refunds"]
    )
    assert meta["changed_files"] == ["models/staging/sales/stg_sales__orders.sql"]
    rows = control_rows(control)
    assert rows["sales.orders"]["staging_model_processed"]
    assert not rows["sales.refunds"]["staging_model_processed"]
    assert rows["sales.refunds"]["last_message"].startswith(
        "loaded | [Landing] staging model not generated:"
    )
