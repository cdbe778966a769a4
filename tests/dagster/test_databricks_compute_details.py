"""Serverless and cluster details that differ on a real workspace (issue 12, items 7 and 8).

- The scripts read secrets through ``databricks.sdk.runtime.dbutils`` (every kind of compute),
  here the SDK's own dbutils against the stand-in's ``secrets/get``.
- Serverless: ``environment_version`` (not the deprecated ``client``) and the pinned dependencies
  (test_databricks_e2e's retry analysis on serverless); every JDBC source refused there (no plain
  JDBC reads): by the code location before anything is submitted, and by the script as well;
  a source_connection whose ``foreign_catalog`` names the database's Unity Catalog foreign catalog
  (Lakehouse Federation, sql/019) is read through it instead, so its rows run on serverless.
- Classic: ``dagster-pipes`` (and ``openai`` for the retry script) pinned at the orchestrator's
  versions; a wheel in a volume for workspaces without PyPI egress.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from databricks_fixtures import claim_and_materialize, destination_rows, standin  # noqa: F401
from databricks_standin import DatabricksStandin, databricks_standin, event_text  # noqa: F401
from helpers import add_control_row, control_row, insert_control_row, pg_config
from psycopg.types.json import Jsonb

from dagsters.control.source_connections import SourceConnectionError
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.runners.databricks import pinned
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.dataloader_pipe import choose_engine
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.script_env import ScriptEnv

REPO = Path(__file__).resolve().parents[2]
READ_SECRET = """
import json, sys
sys.path.insert(0, sys.argv[1])
from databricks_scripts.dataloader_pipe import _dbutils_secret_getter
from databricks_scripts.script_env import ScriptEnv
get = _dbutils_secret_getter(ScriptEnv.from_environ())
try:
    print(json.dumps({"value": get("dl-sources", sys.argv[2])}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


def _read_secret(stand_in: DatabricksStandin, key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATALOADER_SECRET")}
    env.update(stand_in.env(), DATABRICKS_RUNTIME_VERSION="15.4.x-scala2.12")
    proc = subprocess.run(
        [sys.executable, "-c", READ_SECRET, str(REPO), key],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_secrets_are_read_through_the_sdks_runtime_dbutils(standin):  # noqa: F811
    standin.add_secret("dl-sources", "orders-password", "s3cr3t-value")

    assert _read_secret(standin, "orders-password") == {"value": "s3cr3t-value"}
    [call] = standin.requests_to("GET", r"/api/2\.0/secrets/get")
    assert call.query == {"scope": "dl-sources", "key": "orders-password"}
    missing = _read_secret(standin, "nope")
    assert "Failed to get secret nope for scope dl-sources" in missing["error"]


def _spec(db_type: str):
    return parse_load_spec(
        {
            "source_schema_name": "s",
            "source_table_name": "t",
            "destination_catalog": "main",
            "destination_schema_name": "raw",
            "destination_table_name": "t",
            "db_type": db_type,
            "db_config_value": {"host": "db.example.com", "database": "d", "user": "u"},
            "load_strategy": "full",
        }
    )


@pytest.mark.parametrize("db_type", ["postgresql", "mysql", "oracle", "sqlserver"])
def test_serverless_refuses_jdbc_sources_in_the_script_too(db_type):
    with pytest.raises(ValueError, match=f"a {db_type} source cannot be read from serverless"):
        choose_engine(_spec(db_type), ScriptEnv(databricks_runtime="client.2.5"))
    # Classic compute reads them with spark.read.format("jdbc").
    assert choose_engine(_spec(db_type), ScriptEnv(databricks_runtime="15.4.x-scala2.12")) == (
        "spark"
    )
    assert choose_engine(_spec("databricks"), ScriptEnv(databricks_runtime="client.2.5")) == (
        "spark"
    )


def test_a_jdbc_row_on_serverless_is_refused_before_anything_is_submitted(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    add_control_row(db, source_db, "pg.orders", "orders")
    result, _ = claim_and_materialize(control_db, instance, "pg.orders", "serverless")

    assert not result.success
    assert standin.runs == {}  # no compute started
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Failed" and row["last_failure_kind"] == "bad_config"
    message = row["last_message"]
    assert message.startswith("pg.orders: source refused: its postgresql source would be read")
    assert "serverless" in message and "Fix: create a Unity Catalog connection" in message
    assert "db_type 'databricks'" in message and "DATABRICKS_CLUSTER_ID" in message
    # On classic compute the same row loads (test_databricks_e2e.py).


def _federated(db_type: str, schema: str | None = "s"):
    config = {"host": "db.example.com", "database": "d", "user": "u", "foreign_catalog": "uc_src"}
    return parse_load_spec(
        {
            "source_table_name": "t",
            "destination_catalog": "main",
            "source_schema_name": schema,
            "destination_schema_name": "raw",
            "destination_table_name": "t",
            "db_type": db_type,
            "db_config_value": config,
            "load_strategy": "full",
        }
    )


@pytest.mark.parametrize("db_type", ["postgresql", "mysql", "oracle", "sqlserver"])
def test_a_foreign_catalog_is_read_through_unity_catalog_on_serverless(db_type):
    serverless = ScriptEnv(databricks_runtime="client.2.5")
    assert choose_engine(_federated(db_type), serverless) == "spark"
    assert _federated(db_type).foreign_table == ("uc_src", "s", "t")
    assert _spec(db_type).foreign_table is None  # no foreign catalog: JDBC, refused above


def test_a_mysql_foreign_catalog_names_the_connections_database_as_the_schema():
    # A MySQL foreign catalog mirrors the server: its schemas are the server's databases.
    assert _federated("mysql", schema=None).foreign_table == ("uc_src", "d", "t")


def test_a_row_of_a_federated_connection_runs_on_serverless(
    standin,  # noqa: F811
    control_db,
    source_db,
    source,
    lake_root,
    db,
    instance,
):
    config = pg_config(source_db)
    db.execute(
        "INSERT INTO source_connection (connection_name, db_type, host, port, database,"
        " user_name, foreign_catalog) VALUES ('pg_fed', 'postgresql', %s, %s, %s, %s, 'uc_pg')",
        (config["host"], config["port"], config["database"], config["user"]),
    )
    insert_control_row(
        db,
        {
            "control_key": "pg.orders",
            "source_schema_name": "public",
            "source_table_name": "orders",
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": "orders",
            "db_type": "postgresql",
            "connection_name": "pg_fed",
            "load_strategy": "incremental",
            "incremental_column": "updated_at",
            "schedule_interval": "1 hour",
        },
    )
    result, _ = claim_and_materialize(control_db, instance, "pg.orders", "serverless")

    # Submitted to serverless (the stand-in's compute loads with the Arrow engine, straight from
    # the host; on Databricks the Spark engine reads uc_pg.public.orders: test_spark_federation_sail).
    assert result.success, control_row(db, "pg.orders")["last_message"]
    assert len(standin.runs) == 1
    row = control_row(db, "pg.orders")
    assert row["last_status"] == "Succeeded"
    [(n,)] = source.execute("SELECT count(*) FROM orders").fetchall()
    assert destination_rows(lake_root) == n > 0


def test_only_a_connection_admin_names_a_foreign_catalog(control_db, source_db, db):
    add_control_row(
        db,
        source_db,
        "pg.inline",
        "orders",
        db_config_value=Jsonb({**pg_config(source_db), "foreign_catalog": "uc_other"}),
    )
    with (
        LakebaseClient(control_db) as client,
        pytest.raises(SourceConnectionError, match="set by connection admins"),
    ):
        client.resolve_source(client.get_table_details("pg.inline"))
    with pytest.raises(Exception, match="foreign_catalog_must_be_a_plain_name"):
        db.execute(
            "INSERT INTO source_connection (connection_name, db_type, host, foreign_catalog)"
            " VALUES ('bad', 'postgresql', 'h', 'uc; DROP')"
        )


def test_classic_libraries_are_pinned_or_taken_from_a_volume_wheel():
    import dagster_pipes  # noqa: F401 - installed here, so the pin names its version

    pipes = pinned("dagster-pipes")
    assert pipes.startswith("dagster-pipes==") and pipes.split("==")[1][0].isdigit()
    assert pinned("openai").startswith("openai==")
    runner = PipesDatabricksResource(execution="databricks", cluster_id="c").databricks_runner()
    assert runner.task("dataloader_pipe.py")["libraries"] == [{"pypi": {"package": pipes}}]
    wheel = "/Volumes/main/dataloader/wheels/dagster_pipes-1.13.27-py3-none-any.whl"
    offline = PipesDatabricksResource(
        execution="databricks", cluster_id="c", libraries=[wheel, "openai==1.40.0"]
    ).databricks_runner()
    assert offline.task("dataloader_retry_pipe.py")["libraries"] == [
        {"whl": wheel},
        {"pypi": {"package": "openai==1.40.0"}},
    ]
