"""Source passwords, the Databricks token and the AI key never reach the event log, run, rows or errors.

Real password-protected sources (PostgreSQL with scram for one role; MariaDB when it runs on
127.0.0.1:3306), the real load asset and scripts, a real Dagster instance on disk. Each run (a
success, a wrong password, a wrong database, and a source whose error text echoes the password as
a leaky driver would) is searched for the secret in every event (all types, messages, metadata,
serialized errors and stacks), the run's config and tags, every file the instance wrote (event
log and run storage, compute logs), the captured stdout/stderr and Python logs, every column of the
control row and of all history rows, and the exception raised to the caller.
"""

from __future__ import annotations

import json
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import psycopg
import pytest
from dagster_shared.serdes import serialize_value
from databricks_standin import VOLUME, DatabricksStandin, arrow_runtime, databricks_standin
from helpers import claim_due, evaluate, lakebase_for, start_password_enforcing_server
from openai_standin import OpenAIStandIn, good_answer, openai_standin
from psycopg import sql

from dagsters.assets.dataloader_pipes_asset import build_load_asset, build_retry_asset
from dagsters.local.embedded_lakebase import (
    EmbeddedServer,
    stop_embedded_server,
)
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import LOAD_ASSET, RETRY_ASSET, load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.settings import Settings, load_settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.load.params import secret_env_var

__all__ = ["databricks_standin", "openai_standin"]  # fixtures, imported so pytest finds them here

ROLE = "loader_secret_role"
SCOPE = "kv-audit"
KEY = "src_password"
REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "databricks_scripts"
WORKSPACE_SCRIPTS = "/Workspace/Shared/dataloader/databricks_scripts"
CLUSTER = "0101-000000-standin"


def distinctive(prefix: str) -> tuple[str, str]:
    """A password with characters every encoding changes, and its unique core (found in any form)."""
    core = uuid.uuid4().hex
    return f"{prefix}$ecret-{core}'@/", core


def forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), json.dumps(secret)[1:-1]]


# -- where a secret could end up -------------------------------------------------------------------


def run_texts(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Everything Dagster kept about one run, as text per place."""
    texts: dict[str, str] = {}
    for i, entry in enumerate(instance.all_logs(run_id)):
        kind = entry.dagster_event.event_type_value if entry.dagster_event else "log"
        parts = [entry.user_message or "", serialize_value(entry)]
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        error = getattr(data, "error", None)
        if error is not None:
            parts.append(error.to_string())
        texts[f"event {i} {kind}"] = "\n".join(parts)
    run = instance.get_run_by_id(run_id)
    assert run is not None
    texts["run config"] = json.dumps(run.run_config, default=str)
    texts["run tags"] = json.dumps(run.tags, default=str)
    texts["run record"] = serialize_value(run)
    return texts


def instance_files(root: Path) -> dict[str, str]:
    """Every file the instance wrote: sqlite event/run storage, compute logs, schedules."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            found[f"file {path.relative_to(root)}"] = path.read_bytes().decode("utf-8", "replace")
    assert found, f"the instance wrote nothing under {root}"
    return found


def db_rows(control_db: str) -> dict[str, str]:
    with psycopg.connect(control_db) as conn:
        rows = {}
        for table in ("table_control", "historical_metadata"):
            for (text,) in conn.execute(
                sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(sql.Identifier(table))
            ):
                rows[f"{table} row {text[:40]}"] = text
        return rows


def assert_absent(places: dict[str, str], *needles: str) -> None:
    assert places, "nothing was searched"
    leaks = [
        (where, needle)
        for where, text in places.items()
        for needle in needles
        if needle and needle in text
    ]
    assert not leaks, f"secret found in: {[w for w, _ in leaks]}"


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_pg(tmp_path_factory) -> Iterator[EmbeddedServer]:
    """A separate embedded PostgreSQL where ROLE must give its scram password (others: trust).

    The embedded server initialises with trust auth; the hba line for ROLE placed first makes PostgreSQL
    check that role's password, so a wrong password really fails.
    """
    pgdata = tmp_path_factory.mktemp("secrets_pg") / "pgdata"
    server = start_password_enforcing_server(pgdata, ROLE, "src")
    with psycopg.connect(server.conninfo("src"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.orders (order_id int PRIMARY KEY, updated_at timestamptz NOT NULL)"
        )
        conn.execute(
            "INSERT INTO public.orders SELECT g, timestamptz '2024-01-01' + g * interval '1 hour'"
            " FROM generate_series(1, 5) g"
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(ROLE)
            )
        )
    yield server
    stop_embedded_server(pgdata)


@pytest.fixture
def pg_secret(password_pg: EmbeddedServer) -> tuple[str, str]:
    """A fresh distinctive password for ROLE, and a view whose error echoes it like a leaky driver."""
    secret, core = distinctive("Sup3r")
    echoed = (
        f"driver echo: {secret} | host='h' password='{secret}' | "
        f"postgresql://{ROLE}:{quote(secret, safe='')}@h/src"
    )
    with psycopg.connect(password_pg.conninfo("src"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(secret))
        )
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION leak() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN"
                " RAISE EXCEPTION '%', {}; END $f$"
            ).format(sql.Literal(echoed))
        )
        conn.execute(
            "CREATE OR REPLACE VIEW public.leaky AS"
            " SELECT leak() AS order_id, now() AS updated_at FROM public.orders"
        )
        conn.execute(sql.SQL("GRANT SELECT ON public.leaky TO {}").format(sql.Identifier(ROLE)))
    with psycopg.connect(
        psycopg.conninfo.make_conninfo(password_pg.conninfo("src"), user=ROLE), password=secret
    ):
        pass  # the right password works...
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            psycopg.conninfo.make_conninfo(password_pg.conninfo("src"), user=ROLE), password="x"
        )  # ...and a wrong one really is refused
    return secret, core


@pytest.fixture
def instance_dir(tmp_path: Path) -> Path:
    return tmp_path / "dagster_home"


@pytest.fixture
def instance(instance_dir: Path) -> Iterator[dg.DagsterInstance]:
    instance_dir.mkdir()
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        yield instance


def add_row(db: psycopg.Connection, key: str, table: str, db_type: str, config: dict) -> None:
    schema = config.pop("schema", "public")
    # The secret is bound to this host/port/database by a source_connection (issue 17).
    db.execute(
        "INSERT INTO source_connection (connection_name, db_type, host, port, database,"
        " user_name, secret_scope, secret_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (key, db_type, config["host"], config["port"], config["database"], config["user"])
        + (SCOPE, KEY),
    )
    db.execute(
        "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
        " destination_catalog, destination_schema_name, destination_table_name, db_type,"
        " connection_name, load_strategy, schedule_interval, next_load_date_time)"
        " VALUES (%s, %s, %s, 'lake', 'raw', %s, %s, %s, 'full', '1 hour',"
        " now() + interval '1 day')",  # due only when a test makes it due (materialize)
        (key, schema, table, key.replace(".", "_"), db_type, key),
    )


def materialize(control_db: str, instance: dg.DagsterInstance, key: str, pipes) -> str:
    """Make the row due, claim it like master_sensor, run its partition; returns the run id."""
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,)
        )
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    result = dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={"lakebase": lakebase_for(control_db), "pipes_databricks": pipes},
        instance=instance,
        raise_on_error=False,
    )
    return result.run_id


def reraised(control_db: str, instance: dg.DagsterInstance, key: str, pipes) -> BaseException:
    """Rerun the load from the UI (control_key only) with raise_on_error: what a caller sees."""
    with pytest.raises(Exception) as caught:
        dg.materialize(
            [build_load_asset(load_settings())],
            partition_key=key,
            run_config={"ops": {LOAD_ASSET: {"config": {"control_key": key}}}},
            resources={"lakebase": lakebase_for(control_db), "pipes_databricks": pipes},
            instance=instance,
        )
    return caught.value


def status(db: psycopg.Connection, key: str) -> dict:
    return db.execute(
        "SELECT last_status, last_message FROM table_control WHERE control_key = %s", (key,)
    ).fetchone()


def everywhere(instance, instance_dir, control_db, capfd, caplog) -> dict[str, str]:
    """Every place a secret could land, as text, for every run the instance knows."""
    places: dict[str, str] = {}
    for run_id in instance.get_run_ids():
        places.update({f"{run_id[:8]} {k}": v for k, v in run_texts(instance, run_id).items()})
    places.update(instance_files(instance_dir))
    places.update(db_rows(control_db))
    out, err = capfd.readouterr()
    places["captured stdout"] = out
    places["captured stderr"] = err
    places["python logs"] = caplog.text
    return places


# dagster-pipes serializes an exception's __context__ even after ``raise ... from None`` (it
# ignores __suppress_context__); the loader therefore raises its redacted error outside the
# ``except`` that caught the driver error. These checks are strict everywhere, including the
# ENGINE_EVENT that carries the Pipes "closed" exception and the compute logs.


def assert_secret_absent(places: dict[str, str], *needles: str) -> None:
    """No secret (in any of its encoded forms) in any of the places searched."""
    leaked = sorted({where for where, text in places.items() for n in needles if n and n in text})
    assert not leaked, f"secret found in: {leaked}"


def local_pipes(lake_root: Path) -> PipesDatabricksResource:
    return PipesDatabricksResource(execution="local", lake_root=str(lake_root))


# -- PostgreSQL: no MariaDB needed -----------------------------------------------------------------


def pg_config(server: EmbeddedServer) -> dict:
    return {"host": server.socket_dir, "port": server.port, "database": "src", "user": ROLE}


def test_postgres_password_never_leaves_redacted(
    password_pg,
    pg_secret,
    control_db,
    db,
    lake_root,
    instance,
    instance_dir,
    monkeypatch,
    capfd,
    caplog,
):
    secret, core = pg_secret
    wrong, wrong_core = distinctive("Wr0ng")
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    pipes = local_pipes(lake_root)
    add_row(db, "pg.ok", "orders", "postgresql", pg_config(password_pg))
    add_row(db, "pg.nodb", "orders", "postgresql", {**pg_config(password_pg), "database": "nope"})

    materialize(control_db, instance, "pg.ok", pipes)
    assert status(db, "pg.ok")["last_status"] == "Succeeded"  # the right password was used

    materialize(control_db, instance, "pg.nodb", pipes)
    assert status(db, "pg.nodb")["last_status"] == "Failed"
    assert '"nope"' in status(db, "pg.nodb")["last_message"]
    nodb_exc = reraised(control_db, instance, "pg.nodb", pipes)

    monkeypatch.setenv(secret_env_var(SCOPE, KEY), wrong)  # a wrong password in play
    materialize(control_db, instance, "pg.ok", pipes)
    failed = status(db, "pg.ok")
    assert failed["last_status"] == "Failed"
    assert "password authentication failed" in failed["last_message"]
    wrong_exc = reraised(control_db, instance, "pg.ok", pipes)

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    places["exception (wrong database)"] = exception_text(nodb_exc)
    places["exception (wrong password)"] = exception_text(wrong_exc)
    assert "DATALOADER_ERROR" in places["captured stderr"]  # the script's stderr was searched
    assert any("compute_logs" in k for k in places)  # and so were the compute logs
    assert_absent(places, core, wrong_core, *forms(secret), *forms(wrong))


def test_postgres_driver_echoing_the_password_is_masked(
    password_pg,
    pg_secret,
    control_db,
    db,
    lake_root,
    instance,
    instance_dir,
    monkeypatch,
    capfd,
    caplog,
):
    secret, core = pg_secret
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    pipes = local_pipes(lake_root)
    add_row(db, "pg.echo", "leaky", "postgresql", pg_config(password_pg))

    materialize(control_db, instance, "pg.echo", pipes)
    echo = status(db, "pg.echo")
    assert echo["last_status"] == "Failed"
    assert "driver echo: ***" in echo["last_message"]  # the driver's text arrived, masked
    assert "password='***'" in echo["last_message"] and f"{ROLE}:***@h/src" in echo["last_message"]
    echo_exc = reraised(control_db, instance, "pg.echo", pipes)
    assert "driver echo: ***" in str(echo_exc)

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    places["exception"] = exception_text(echo_exc)
    assert_secret_absent(places, core, *forms(secret))


# -- MariaDB: a real password-protected MySQL-protocol source -------------------------------------


@pytest.fixture
def mariadb() -> Iterator[tuple[dict, str, str]]:
    """A MariaDB user with a distinctive password, a table it reads and a view that echoes it."""
    pymysql = pytest.importorskip("pymysql")
    try:
        root = pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB on 127.0.0.1:3306 (root, no password, db test) unreachable: {exc}")
    secret, core = distinctive("Sup3r")
    tag = uuid.uuid4().hex[:10]
    user, table = f"dl_sec_{tag}", f"sec_orders_{tag}"
    echoed = f"driver echo: {secret} password={secret}"
    with root.cursor() as cur:
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s", (secret,))
            cur.execute(f"GRANT SELECT, EXECUTE ON test.* TO '{user}'@'{host}'")
        cur.execute(f"CREATE TABLE {table} (order_id int PRIMARY KEY, updated_at datetime)")
        cur.execute(f"INSERT INTO {table} VALUES (1, '2024-01-01'), (2, '2024-01-02')")
        cur.execute(
            f"CREATE FUNCTION leak_{tag}() RETURNS int NOT DETERMINISTIC BEGIN"
            f" SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = %s; RETURN 1; END",
            (echoed,),
        )
        cur.execute(
            f"CREATE SQL SECURITY INVOKER VIEW leaky_{tag} AS"
            f" SELECT leak_{tag}() AS order_id, updated_at FROM {table}"
        )
    config = {"host": "127.0.0.1", "port": 3306, "database": "test", "user": user, "schema": "test"}
    try:
        yield {**config, "table": table, "view": f"leaky_{tag}"}, secret, core
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP VIEW IF EXISTS leaky_{tag}")
            cur.execute(f"DROP FUNCTION IF EXISTS leak_{tag}")
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        root.close()


def test_mariadb_password_never_leaves_redacted(
    mariadb, control_db, db, lake_root, instance, instance_dir, monkeypatch, capfd, caplog
):
    source, secret, core = mariadb
    wrong, wrong_core = distinctive("Wr0ng")
    table = source.pop("table")
    source.pop("view")
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    pipes = local_pipes(lake_root)
    add_row(db, "my.ok", table, "mysql", dict(source))
    add_row(db, "my.nodb", table, "mysql", {**source, "database": "no_such_db"})

    materialize(control_db, instance, "my.ok", pipes)
    assert status(db, "my.ok")["last_status"] == "Succeeded"  # the right password was used

    materialize(control_db, instance, "my.nodb", pipes)
    nodb = status(db, "my.nodb")
    assert nodb["last_status"] == "Failed" and "no_such_db" in nodb["last_message"]
    nodb_exc = reraised(control_db, instance, "my.nodb", pipes)

    monkeypatch.setenv(secret_env_var(SCOPE, KEY), wrong)  # a wrong password in play
    materialize(control_db, instance, "my.ok", pipes)
    failed = status(db, "my.ok")
    assert failed["last_status"] == "Failed" and "Access denied" in failed["last_message"]
    wrong_exc = reraised(control_db, instance, "my.ok", pipes)

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    places["exception (wrong database)"] = exception_text(nodb_exc)
    places["exception (wrong password)"] = exception_text(wrong_exc)
    assert_absent(places, core, wrong_core, *forms(secret), *forms(wrong))


def test_mariadb_driver_echoing_the_password_is_masked(
    mariadb, control_db, db, lake_root, instance, instance_dir, monkeypatch, capfd, caplog
):
    source, secret, core = mariadb
    source.pop("table")
    view = source.pop("view")
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    add_row(db, "my.echo", view, "mysql", dict(source))

    materialize(control_db, instance, "my.echo", local_pipes(lake_root))
    echo = status(db, "my.echo")
    assert echo["last_status"] == "Failed"
    assert "driver echo: *** password=***" in echo["last_message"], echo["last_message"]

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    assert_secret_absent(places, core, *forms(secret))


# -- Databricks backend: the workspace token, and the source password on the "cluster" ------------


@pytest.fixture
def standin(
    databricks_standin: DatabricksStandin, lake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> DatabricksStandin:
    databricks_standin.deploy(REPO_SCRIPTS, WORKSPACE_SCRIPTS)
    # The run sees only a cluster's environment (no Spark in the stand-in: its runtime loads
    # with the Arrow engine into the test's lake); secrets come from the workspace's scope.
    databricks_standin.runtime_env.update(arrow_runtime(lake_root))
    for name, value in databricks_standin.env().items():
        monkeypatch.setenv(name, value)
    return databricks_standin


def test_databricks_token_and_source_password_stay_out_of_dagster(
    standin,
    password_pg,
    pg_secret,
    control_db,
    db,
    lake_root,
    instance,
    instance_dir,
    monkeypatch,
    capfd,
    caplog,
):
    secret, core = pg_secret
    # As on Databricks: the password is in the workspace's secret scope, read on the cluster
    # through dbutils.secrets; the code location does not hold it (nothing of its environment
    # reaches the cluster anyway), so only the script can mask it.
    standin.add_secret(SCOPE, KEY, secret)
    monkeypatch.delenv(secret_env_var(SCOPE, KEY), raising=False)
    pipes = PipesDatabricksResource(
        execution="databricks",
        scripts_path=WORKSPACE_SCRIPTS,
        cluster_id=CLUSTER,
        volume_path=VOLUME,
        poll_interval_seconds=0.2,
    )
    add_row(db, "dbx.ok", "orders", "postgresql", pg_config(password_pg))
    add_row(db, "dbx.echo", "leaky", "postgresql", pg_config(password_pg))

    materialize(control_db, instance, "dbx.ok", pipes)
    assert status(db, "dbx.ok")["last_status"] == "Succeeded"
    materialize(control_db, instance, "dbx.echo", pipes)
    echo = status(db, "dbx.echo")
    assert echo["last_status"] == "Failed" and "driver echo: ***" in echo["last_message"]
    assert len(standin.runs) == 2, "the loads did not run on the stand-in"
    secret_reads = standin.requests_to("GET", r"/api/2\.0/secrets/get")
    assert [(r.query["scope"], r.query["key"], r.status) for r in secret_reads] == [
        (SCOPE, KEY, 200)
    ] * 2
    for run in standin.runs.values():
        assert not any(name.startswith("DATALOADER_SECRET__") for name in run.env)

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    # The cluster's own driver logs (what a person reads in the Databricks UI) too.
    for run in standin.runs.values():
        places[f"databricks run {run.run_id} stdout"] = run.stdout
        places[f"databricks run {run.run_id} stderr"] = run.stderr
    assert_absent(places, standin.token)  # the workspace token: nowhere, strictly
    assert_secret_absent(places, core, *forms(secret))


# -- retry analysis: what goes to the model, and what comes back ----------------------------------


def test_retry_analysis_sends_and_stores_no_secret(
    openai_standin: OpenAIStandIn,
    password_pg,
    pg_secret,
    control_db,
    db,
    instance,
    instance_dir,
    monkeypatch,
    capfd,
    caplog,
):
    secret, core = pg_secret
    api_key = f"sk-audit-{uuid.uuid4().hex}"
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), secret)
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    monkeypatch.setenv("DATALOADER_AI_API_KEY", api_key)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # A failure recorded by something that did not redact (an older version, a person with psql),
    # and a model that echoes both the password and its own key back.
    add_row(db, "pg.retry", "orders", "postgresql", pg_config(password_pg))
    raw = f"could not connect: password {secret} rejected (key {api_key})"
    metadata_id = db.execute(
        "INSERT INTO historical_metadata (config_id, control_key, status, message, ended_at)"
        " SELECT config_id, control_key, 'Failed', %s, now() FROM table_control"
        " WHERE control_key = 'pg.retry' RETURNING metadata_id",
        (raw,),
    ).fetchone()["metadata_id"]
    db.execute(
        "UPDATE table_control SET last_status = 'Failed', last_status_date_time = now(),"
        " last_message = %s, last_metadata_id = %s WHERE control_key = 'pg.retry'",
        (raw, metadata_id),
    )
    openai_standin.queue(
        good_answer("Requires Review", 0.95, f"Password {secret} with key {api_key} is wrong.")
    )

    lakebase = lakebase_for(control_db)
    requested = evaluate(build_failed_monitor(Settings()), instance, {"lakebase": lakebase})
    [request] = requested.run_requests
    instance.add_dynamic_partitions(PARTITIONS_NAME, [request.partition_key])
    result = dg.materialize(
        [build_retry_asset(load_settings())],
        partition_key=request.partition_key,
        run_config=request.run_config,
        resources={"lakebase": lakebase, "pipes_databricks": PipesDatabricksResource()},
        instance=instance,
    )

    [sent] = openai_standin.requests
    assert "could not connect" in sent.raw  # the failure was described to the model...
    assert_absent({"model request body": sent.raw}, core, *forms(secret), api_key)
    # ...and the key went only where it belongs, the Authorization header.
    assert openai_standin.all_sent_text().count(api_key) == 1
    [mat] = result.asset_materializations_for_node(RETRY_ASSET)
    assert mat.metadata["decider"].value == "gpt-standin"
    row = db.execute(
        "SELECT needs_review, last_message FROM table_control WHERE control_key = 'pg.retry'"
    ).fetchone()
    assert row["needs_review"] and row["last_message"].startswith("[AI Analysis - Requires Review]")

    places = everywhere(instance, instance_dir, control_db, capfd, caplog)
    # The planted history message is the one place the secret may stay (we put it there); the
    # decision written next to it must not repeat it.
    places = {k: v for k, v in places.items() if not k.startswith("historical_metadata")}
    decision = db.execute(
        "SELECT retry_decision, retry_reason, retry_decider FROM historical_metadata"
        " WHERE metadata_id = %s",
        (metadata_id,),
    ).fetchone()
    assert decision["retry_decision"] == "Requires Review"
    places["history decision"] = json.dumps(decision)
    assert_absent(places, core, *forms(secret), api_key)
