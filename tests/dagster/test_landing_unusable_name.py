"""One table whose dbt file name a file system refuses is noted on its row; the batch goes on.

Issue 16, item 4 (landing): a 250-character destination_table_name gave a staging file name over
255 bytes and the whole landing batch failed on every interval. Real parts: Delta tables on disk,
the real git repository, the control database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from helpers import lakebase_for
from psycopg.rows import dict_row

from dagsters.jobs.landing_table_git_job import landing_table_git_job
from dagsters.resources.databricks_rest import DatabricksRestResource
from dagsters.resources.models_repo import ModelsRepoResource
from dagsters.settings import load_settings


@pytest.fixture
def control(control_db: str) -> Iterator[str]:
    yield control_db
    lakebase_for(control_db).get_client().close()


@pytest.fixture
def env(tmp_path: Path, lake_root: Path) -> dict[str, str]:
    return {"DATALOADER_HOME": str(tmp_path / "home"), "DATALOADER_LAKE_ROOT": str(lake_root)}


@pytest.fixture
def models_repo(env: dict[str, str]) -> Path:
    return Path(env["DATALOADER_HOME"]) / "models_repo"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def land(lake_root: Path, table: str) -> None:
    write_deltalake(str(lake_root / "main" / "sales" / table), pa.table({"id": [1, 2]}))


def key(table: str) -> str:
    """The row's control_key: at most 200 characters (sql/012), whatever the table's name."""
    return f"sales.{table}"[:200]


def add_control_row(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, load_strategy,"
            " last_status, last_message) VALUES (%s, %s, 'main', 'sales', %s, 'postgresql',"
            " 'full', 'Succeeded', 'Loaded 2 rows') RETURNING config_id",
            (key(table), table, table),
        ).fetchone()[0]


def control_rows(conninfo: str) -> dict[str, dict]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM table_control").fetchall()
    return {r["control_key"]: r for r in rows}


def run_job(conninfo: str, config_ids: list[int], env: dict[str, str]):
    return landing_table_git_job.execute_in_process(
        run_config={"ops": {"landing_table_git_op": {"config": {"config_ids": config_ids}}}},
        resources={
            "lakebase": lakebase_for(conninfo),
            "databricks_rest": DatabricksRestResource.from_settings(load_settings(os.environ)),
            "models_repo": ModelsRepoResource.from_settings(load_settings(env)),
        },
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


LONG = "t" * 250


def test_a_table_with_an_unusable_file_name_is_skipped_and_noted(
    control: str, lake_root: Path, models_repo: Path, env: dict[str, str]
) -> None:
    land(lake_root, "orders")
    land(lake_root, LONG)  # a directory name of 250 bytes is fine; stg_sales__<it>.sql is not
    ids = [add_control_row(control, t) for t in ("orders", LONG)]

    result = run_job(control, ids, env)

    assert not result.success  # the skipped table fails the run so someone looks
    meta = output_metadata(result)
    assert meta["processed_tables"] == ["sales.orders"]
    assert "over the 255 a file system allows" in meta["blocked_tables"][key(LONG)]
    assert "models/staging/sales/stg_sales__orders.sql" in git(
        models_repo, "ls-files", "models/staging/sales"
    )
    rows = control_rows(control)
    assert rows["sales.orders"]["staging_model_processed"] is True
    long_row = rows[key(LONG)]
    assert long_row["staging_model_processed"] is False
    assert long_row["last_status"] == "Succeeded"
    assert "[Landing]" in long_row["last_message"]
    assert "shorten destination_table_name" in long_row["last_message"]
