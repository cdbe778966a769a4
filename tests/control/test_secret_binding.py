"""A load never sends a secret to a host it is not bound to, and needs TLS off loopback (issue 17).

The real load asset, local runner and loader script, against fake PostgreSQL and MySQL servers
that record every startup packet / handshake and any password they are sent in clear text
(``tests/fake_db_servers.py``). The "attack" is the one from the issue: a control row that points
at a server of one's own choosing, names another team's secret, and turns TLS off. Each file also
runs the legitimate case against the same fake server, so the recorder is shown to catch a
password when one is sent.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from fake_db_servers import FakeMySQL, FakePostgres, non_loopback_address
from helpers import claim_due, history, insert_control_row, lakebase_for, pg_config
from psycopg.types.json import Jsonb

from dagsters.assets.dataloader_pipes_asset import build_load_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy.run_requests import load_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.load.params import secret_env_var

SCOPE = "kv-prod"
KEY = "erp-pg-pass"


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """Another team's production password, readable by the loading identity."""
    value = f"Pr0d-{uuid.uuid4().hex}"
    monkeypatch.setenv(secret_env_var(SCOPE, KEY), value)
    return value


def add_connection(db: psycopg.Connection, name: str, db_type: str, **columns) -> None:
    values = {"connection_name": name, "db_type": db_type, **columns}
    db.execute(
        f"INSERT INTO source_connection ({', '.join(values)})"
        f" VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()),
    )


def add_row(db: psycopg.Connection, key: str, db_type: str, **columns) -> None:
    insert_control_row(
        db,
        {
            "control_key": key,
            "source_schema_name": "public",
            "source_table_name": "orders",
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": key.replace(".", "_"),
            "db_type": db_type,
            "load_strategy": "full",
            "schedule_interval": "1 hour",
            "next_load_date_time": None,
            **columns,
        },
    )


def load(control_db: str, instance: dg.DagsterInstance, key: str, lake_root: Path) -> None:
    """Claim the row like master_sensor and run its partition through the local runner."""
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE table_control SET next_load_date_time = now() WHERE control_key = %s", (key,)
        )
    with LakebaseClient(control_db) as client:
        [claimed] = [r for r in claim_due(client, 10) if r.control_key == key]
    instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
    dg.materialize(
        [build_load_asset(load_settings())],
        partition_key=key,
        run_config=load_run_config(claimed),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource(
                execution="local", lake_root=str(lake_root)
            ),
        },
        instance=instance,
        raise_on_error=False,
    )


def outcome(db: psycopg.Connection, key: str) -> tuple[str, str]:
    row = db.execute(
        "SELECT last_status, last_message FROM table_control WHERE control_key = %s", (key,)
    ).fetchone()
    return row["last_status"], row["last_message"] or ""


# ---- PostgreSQL ----------------------------------------------------------------------------------


def test_postgres_row_naming_another_hosts_secret_sends_nothing(
    control_db, db, source_db, secret, lake_root, instance
):
    real = pg_config(source_db)
    add_connection(
        db,
        "erp",
        "postgresql",
        host=real["host"],
        port=real["port"],
        database=real["database"],
        user_name=real["user"],
        secret_scope=SCOPE,
        secret_key=KEY,
    )
    with FakePostgres() as fake:
        attack = {
            "host": "127.0.0.1",
            "port": fake.port,
            "database": real["database"],
            "user": "loader",
            "password_secret": KEY,
            "sslmode": "disable",
        }
        add_row(db, "attack.pg", "postgresql", db_config_value=Jsonb(attack), db_kv_scope=SCOPE)
        load(control_db, instance, "attack.pg", lake_root)

        status, message = outcome(db, "attack.pg")
        assert status == "Failed"
        assert f"secret '{KEY}' of scope '{SCOPE}' is not bound to postgresql 127.0.0.1" in message
        assert "connection_name" in message  # says how to fix it
        assert history(db, "attack.pg")[-1]["message"] == message
        assert fake.settle() == []  # not even a connection attempt

        # The same fake server, bound by a connection admin (TLS off on loopback): now the loader
        # does send the password there, and the recorder sees it.
        add_connection(
            db,
            "fake",
            "postgresql",
            host="127.0.0.1",
            port=fake.port,
            database="src",
            user_name="loader",
            tls_mode="disable",
            secret_scope=SCOPE,
            secret_key=KEY,
        )
        add_row(db, "bound.pg", "postgresql", connection_name="fake")
        load(control_db, instance, "bound.pg", lake_root)
        [seen] = fake.settle()
    assert outcome(db, "bound.pg")[0] == "Failed"
    assert seen.password == secret
    assert seen.startup["user"] == "loader" and seen.startup["database"] == "src"
    # The pinned search_path travels in the startup packet (no row can set options).
    assert seen.startup["options"] == "-c search_path=pg_catalog,public"


def test_postgres_connection_requiring_tls_never_sends_the_password_in_clear(
    control_db, db, secret, lake_root, instance
):
    with FakePostgres() as fake:
        add_connection(
            db,
            "tls",
            "postgresql",
            host="127.0.0.1",
            port=fake.port,
            database="src",
            user_name="loader",
            tls_mode="require",
            secret_scope=SCOPE,
            secret_key=KEY,
        )
        add_row(db, "tls.pg", "postgresql", connection_name="tls")
        load(control_db, instance, "tls.pg", lake_root)
        recorded = fake.settle()
    status, message = outcome(db, "tls.pg")
    assert status == "Failed" and "SSL" in message
    assert recorded and all(r.ssl_requested for r in recorded)
    assert all(r.password is None and not r.startup for r in recorded)


def test_postgres_non_loopback_host_gets_tls_by_default_and_a_row_cannot_turn_it_off(
    control_db, db, secret, lake_root, instance
):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve the fake server on")
    with FakePostgres(host=address) as fake:
        add_connection(
            db,
            "remote",
            "postgresql",
            host=address,
            port=fake.port,
            database="src",
            user_name="loader",
            secret_scope=SCOPE,
            secret_key=KEY,
        )  # tls_mode NULL: the default
        add_row(db, "remote.pg", "postgresql", connection_name="remote")
        load(control_db, instance, "remote.pg", lake_root)
        recorded = fake.settle()
        assert recorded and all(r.ssl_requested and r.password is None for r in recorded)

        # An inline row for the same host that asks for no TLS is refused before connecting.
        inline = {
            "host": address,
            "port": fake.port,
            "database": "src",
            "user": "loader",
            "password_secret": KEY,
            "sslmode": "disable",
        }
        add_row(db, "inline.pg", "postgresql", db_config_value=Jsonb(inline), db_kv_scope=SCOPE)
        load(control_db, instance, "inline.pg", lake_root)
        assert len(fake.settle()) == len(recorded)
    status, message = outcome(db, "inline.pg")
    assert status == "Failed"
    assert "sslmode 'disable' in db_config_value is weaker than 'require'" in message


# ---- MySQL ---------------------------------------------------------------------------------------


def test_mysql_row_naming_another_hosts_secret_sends_nothing(
    control_db, db, secret, lake_root, instance
):
    with FakeMySQL() as fake:
        add_connection(
            db,
            "erp-my",
            "mysql",
            host="db-erp.internal",
            port=3306,
            database="erp",
            user_name="loader",
            secret_scope=SCOPE,
            secret_key=KEY,
        )
        attack = {
            "host": "127.0.0.1",
            "port": fake.port,
            "database": "erp",
            "user": "loader",
            "password_secret": KEY,
        }
        add_row(db, "attack.my", "mysql", db_config_value=Jsonb(attack), db_kv_scope=SCOPE)
        load(control_db, instance, "attack.my", lake_root)
        status, message = outcome(db, "attack.my")
        assert status == "Failed" and "is not bound to mysql 127.0.0.1" in message
        assert fake.settle() == []

        add_connection(
            db,
            "fake-my",
            "mysql",
            host="127.0.0.1",
            port=fake.port,
            database="erp",
            user_name="loader",
            tls_mode="disable",
            secret_scope=SCOPE,
            secret_key=KEY,
        )
        add_row(db, "bound.my", "mysql", connection_name="fake-my")
        load(control_db, instance, "bound.my", lake_root)
        [seen] = fake.settle()
    assert seen.handshake_user == "loader" and seen.password == secret


def test_mysql_connection_requiring_tls_stops_before_the_handshake_response(
    control_db, db, secret, lake_root, instance
):
    with FakeMySQL() as fake:
        add_connection(
            db,
            "tls-my",
            "mysql",
            host="127.0.0.1",
            port=fake.port,
            database="erp",
            user_name="loader",
            tls_mode="require",
            secret_scope=SCOPE,
            secret_key=KEY,
        )
        add_row(db, "tls.my", "mysql", connection_name="tls-my")
        load(control_db, instance, "tls.my", lake_root)
        recorded = fake.settle()
    status, message = outcome(db, "tls.my")
    assert status == "Failed" and "SSL is required" in message
    assert len(recorded) == 1
    assert recorded[0].handshake_flags is None and recorded[0].password is None
