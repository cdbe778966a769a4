"""How a control row becomes the load's source settings (issue 17): connection, binding, refusal.

Pure rules (``dagsters.control.source_connections.resolve_source``) and, at the end, the same
through ``LakebaseClient.resolve_source`` and the constraints of sql/007 on a real database.
"""

from __future__ import annotations

import psycopg
import pytest
from helpers import insert_control_row, make_claimed, make_row
from psycopg.types.json import Jsonb

from dagsters.control.rows import ControlRow
from dagsters.control.source_connections import SourceConnectionError, resolve_source
from dagsters.policy.run_requests import load_params, load_run_tags, source_system
from dagsters.utils.lakebase_client import LakebaseClient

ERP = {
    "connection_name": "erp",
    "db_type": "postgresql",
    "host": "erp-db.internal",
    "port": 5432,
    "database": "erp",
    "user_name": "loader",
    "tls_mode": None,
    "tls_ca_file": None,
    "secret_scope": "kv-main",
    "secret_key": "erp-pg-pass",
    "connect_timeout_seconds": 10,
}


def row(**values) -> ControlRow:
    return make_row(**{"control_key": "erp.invoices", **values})


def test_a_row_naming_a_connection_gets_its_settings_and_tls_by_default():
    resolved = resolve_source(row(connection_name="erp"), connection=ERP)
    assert resolved.db_config_value == {
        "connection": "erp",
        "host": "erp-db.internal",
        "port": 5432,
        "database": "erp",
        "user": "loader",
        "password_secret": "erp-pg-pass",
        "sslmode": "require",
        "connect_timeout": 10,
    }
    assert resolved.db_kv_scope == "kv-main" and resolved.connection_name == "erp"
    off = resolve_source(row(connection_name="erp"), connection={**ERP, "tls_mode": "disable"})
    assert off.db_config_value["sslmode"] == "disable"  # the connection's owner may turn it off


def test_a_connection_row_must_agree_on_db_type_and_keep_its_config_empty():
    with pytest.raises(SourceConnectionError, match="differs from 'postgresql'"):
        resolve_source(row(connection_name="erp", db_type="mysql"), connection=ERP)
    with pytest.raises(SourceConnectionError, match="remove host from db_config_value"):
        resolve_source(row(connection_name="erp", db_config_value={"host": "x"}), connection=ERP)


def test_an_inline_secret_needs_a_binding_to_exactly_that_host_port_and_database():
    inline = {"host": "erp-db.internal", "port": 5432, "database": "erp", "user": "loader"}
    bound = row(db_config_value={**inline, "password_secret": "erp-pg-pass"}, db_kv_scope="kv-main")
    resolved = resolve_source(bound, connection=None, bindings=[ERP])
    assert resolved.db_config_value["sslmode"] == "require"
    assert resolved.connection_name == "erp"
    for change in ({"host": "evil.example.com"}, {"port": 6543}, {"database": "hr"}):
        moved = row(
            db_config_value={**inline, **change, "password_secret": "erp-pg-pass"},
            db_kv_scope="kv-main",
        )
        with pytest.raises(SourceConnectionError, match="is not bound to postgresql") as refused:
            resolve_source(moved, connection=None, bindings=[ERP])
        assert "connection_name" in str(refused.value)  # how to fix it
    with pytest.raises(SourceConnectionError, match="weaker than 'require'"):
        resolve_source(
            row(
                db_config_value={**inline, "password_secret": "erp-pg-pass", "sslmode": "prefer"},
                db_kv_scope="kv-main",
            ),
            connection=None,
            bindings=[ERP],
        )


def test_an_inline_secret_binding_matches_user_and_database_exactly():
    # Issue 22: the user was ignored, and service_name (which Oracle and the Spark engine's JDBC
    # URL prefer) was matched while PostgreSQL's driver connects to database.
    inline = {"host": "erp-db.internal", "port": 5432, "database": "erp", "user": "loader"}
    for change in (
        {"user": "postgres"},
        {"user": None},
        {"user": "LOADER"},
        {"database": "hr", "service_name": "erp"},
        {"database": "erp", "service_name": "hr"},
        {"database": None, "service_name": "hr"},
    ):
        config = {k: v for k, v in {**inline, **change}.items() if v is not None}
        moved = row(
            db_config_value={**config, "password_secret": "erp-pg-pass"}, db_kv_scope="kv-main"
        )
        with pytest.raises(SourceConnectionError, match="is not bound to postgresql"):
            resolve_source(moved, connection=None, bindings=[ERP])
    same = row(
        db_config_value={**inline, "service_name": "erp", "password_secret": "erp-pg-pass"},
        db_kv_scope="kv-main",
    )
    assert resolve_source(same, connection=None, bindings=[ERP]).connection_name == "erp"
    oracle = {**ERP, "db_type": "oracle", "port": 1521, "database": "ERPPDB"}
    by_service = row(
        db_type="oracle",
        db_config_value={
            "host": "erp-db.internal",
            "port": 1521,
            "service_name": "ERPPDB",
            "user": "loader",
            "password_secret": "erp-pg-pass",
        },
        db_kv_scope="kv-main",
    )
    assert resolve_source(by_service, connection=None, bindings=[oracle]).connection_name == "erp"


def test_an_inline_row_cannot_replace_the_connections_certificate():
    pinned = {**ERP, "tls_mode": "verify-full", "tls_ca_file": "/etc/ssl/erp-ca.pem"}
    inline = {
        "host": "erp-db.internal",
        "port": 5432,
        "database": "erp",
        "user": "loader",
        "password_secret": "erp-pg-pass",
    }
    for swap in ("system", "/tmp/attacker-ca.pem"):
        for connection in (pinned, ERP):  # a pinned CA, or none at all
            with pytest.raises(SourceConnectionError, match="replaces the certificate"):
                resolve_source(
                    row(
                        db_config_value={**inline, "sslmode": "verify-full", "sslrootcert": swap},
                        db_kv_scope="kv-main",
                    ),
                    connection=None,
                    bindings=[connection],
                )
    kept = resolve_source(
        row(
            db_config_value={**inline, "sslrootcert": "/etc/ssl/erp-ca.pem"}, db_kv_scope="kv-main"
        ),
        connection=None,
        bindings=[pinned],
    )
    assert kept.db_config_value["sslmode"] == "verify-full"
    assert kept.db_config_value["sslrootcert"] == "/etc/ssl/erp-ca.pem"
    with pytest.raises(SourceConnectionError, match="weaker than 'verify-full'"):
        resolve_source(
            row(db_config_value={**inline, "sslmode": "require"}, db_kv_scope="kv-main"),
            connection=None,
            bindings=[pinned],
        )


def test_inline_rows_without_a_secret_keep_working_and_get_tls_off_loopback():
    local = row(db_config_value={"host": "/tmp/sock", "port": 5432, "database": "d"})
    assert resolve_source(local, connection=None).db_config_value == {
        "host": "/tmp/sock",
        "port": 5432,
        "database": "d",
    }
    remote = row(db_config_value={"host": "db.example.com", "database": "d"})
    assert resolve_source(remote, connection=None).db_config_value["sslmode"] == "require"
    with pytest.raises(SourceConnectionError, match="db_config_value key 'options'"):
        resolve_source(row(db_config_value={"host": "h", "options": "-c x=y"}), connection=None)


def test_load_params_carry_the_resolved_source_and_the_source_system_is_the_connection():
    resolved = resolve_source(row(connection_name="erp"), connection=ERP)
    params = load_params(row(connection_name="erp"), resolved, metadata_id=1)
    assert params["db_config_value"]["host"] == "erp-db.internal"
    assert params["db_kv_scope"] == "kv-main"
    assert source_system(row(connection_name="erp")) == "connection_erp"
    tags = load_run_tags(make_claimed(1, control_key="erp.invoices", connection_name="erp"))
    assert tags["dataloader/source_system"] == "connection_erp"
    inline = row(db_config_value={"host": "db1", "port": 5432})
    assert source_system(inline) == "postgresql_db1_5432"  # unchanged for inline rows


def test_the_client_resolves_from_the_database_and_the_schema_refuses_mixed_rows(control_db, db):
    db.execute(
        "INSERT INTO source_connection (connection_name, db_type, host, port, database,"
        " user_name, secret_scope, secret_key) VALUES ('erp', 'postgresql', 'erp-db.internal',"
        " 5432, 'erp', 'loader', 'kv-main', 'erp-pg-pass')"
    )
    base = {
        "source_table_name": "invoices",
        "destination_catalog": "bronze",
        "destination_schema_name": "erp",
        "destination_table_name": "invoices",
        "db_type": "postgresql",
    }
    insert_control_row(
        db, {**base, "control_key": "a", "destination_table_name": "a", "connection_name": "erp"}
    )
    inline = {"host": "erp-db.internal", "port": 5432, "database": "erp", "user": "loader"}
    insert_control_row(
        db,
        {
            **base,
            "control_key": "b",
            "destination_table_name": "b",
            "db_config_value": Jsonb({**inline, "password_secret": "erp-pg-pass"}),
            "db_kv_scope": "kv-main",
        },
    )
    with LakebaseClient(control_db) as client:
        a = client.resolve_source(client.get_table_details("a"))
        b = client.resolve_source(client.get_table_details("b"))
    assert a.db_config_value["host"] == b.db_config_value["host"] == "erp-db.internal"
    assert b.connection_name == "erp"
    with pytest.raises(psycopg.errors.CheckViolation, match="connection_rows_keep_host"):
        insert_control_row(
            db,
            {
                **base,
                "control_key": "c",
                "destination_table_name": "c",
                "connection_name": "erp",
                "db_config_value": Jsonb({"host": "evil"}),
            },
        )
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="must_name_a_source_connection"):
        insert_control_row(
            db,
            {**base, "control_key": "d", "destination_table_name": "d", "connection_name": "nope"},
        )
    with pytest.raises(psycopg.errors.CheckViolation, match="tls_mode"):
        db.execute("UPDATE source_connection SET tls_mode = 'off'")
