"""Least-privilege roles (sql/007): each grant and each refusal, and the audit trail (issue 17).

On the embedded PostgreSQL (its postgres user is a superuser, so the migration creates the roles).
Each test logs in as fresh LOGIN roles that are members of one group role each, as a person or a
service principal would be on Lakebase.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import SOME_SOURCE, claim_due
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from dagsters.utils.lakebase_client import LakebaseClient

GROUPS = ("dataloader_service", "dataloader_operator", "dataloader_connection_admin")


@pytest.fixture
def logins(control_db: str) -> Iterator[dict[str, str]]:
    """group role -> conninfo of a new login that is a member of only that group."""
    tag = uuid.uuid4().hex[:8]
    names = {group: f"{group.split('_', 1)[1]}_{tag}" for group in GROUPS}
    with psycopg.connect(control_db, autocommit=True) as conn:
        for group, name in names.items():
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(group)
                )
            )
        # The platform team (the owner): the operator's team may write under bronze.*.
        conn.execute(
            "INSERT INTO dataloader_team (team_name, member_role) VALUES ('erp-team', %s)",
            (names["dataloader_operator"],),
        )
        conn.execute("INSERT INTO dataloader_team_destination VALUES ('erp-team', 'bronze', NULL)")
    yield {group: make_conninfo(control_db, user=name) for group, name in names.items()}
    with psycopg.connect(control_db, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def add_connection(admin: str, name: str = "erp") -> bool:
    """The connection admin adds a connection and grants it to the operator's team."""
    return can(admin, CONNECTION, (name,)) and can(
        admin, "INSERT INTO dataloader_team_connection VALUES ('erp-team', %s)", (name,)
    )


def can(conninfo: str, statement: str, params: tuple = ()) -> bool:
    """True when ``statement`` runs; False when refused for lack of privilege."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            conn.execute(statement, params)
        except errors.InsufficientPrivilege:
            return False
    return True


CONNECTION = (
    "INSERT INTO source_connection (connection_name, db_type, host, port, database, user_name,"
    " secret_scope, secret_key) VALUES (%s, 'postgresql', 'erp-db.internal', 5432, 'erp',"
    " 'loader', 'kv-main', 'erp-pg-pass')"
)
ROW = (
    "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
    " destination_catalog, destination_schema_name, destination_table_name, db_type,"
    " connection_name, schedule_interval, next_load_date_time)"
    " VALUES (%s, 'billing', 'invoices', 'bronze', 'erp', 'invoices', 'postgresql', %s,"
    " '1 hour', now())"
)


def test_operator_edits_rows_and_reads_views_but_not_connections_history_or_audit(logins):
    admin, operator = logins["dataloader_connection_admin"], logins["dataloader_operator"]
    assert add_connection(admin)
    assert can(operator, ROW, ("erp.invoices", "erp"))  # add, naming a connection
    assert can(operator, "UPDATE table_control SET is_active = false")  # pause
    assert can(operator, "UPDATE table_control SET schedule_interval = '2 hours'")  # edit
    for view in ("v_table_status", "v_load_history", "v_control_audit", "v_source_connections"):
        assert can(operator, f"SELECT * FROM {view}"), view
    for refused in (
        "SELECT * FROM source_connection",
        "SELECT secret_key FROM source_connection",
        "UPDATE source_connection SET host = 'evil.example.com'",
        "SELECT * FROM historical_metadata",
        "SELECT * FROM control_audit",
        "DELETE FROM control_audit",
        "INSERT INTO control_audit (table_name, row_key, action, changed_by) VALUES ('x', 'x', 'x', 'x')",
        "DELETE FROM table_control",
    ):
        assert not can(operator, refused), refused
    with psycopg.connect(operator) as conn:
        columns = [
            d.name for d in conn.execute("SELECT * FROM v_source_connections LIMIT 0").description
        ]
    assert not {"secret_scope", "secret_key"} & set(columns)


def test_connection_admin_manages_connections_only(logins):
    admin = logins["dataloader_connection_admin"]
    assert add_connection(admin)
    assert can(admin, "UPDATE source_connection SET secret_key = 'erp-pg-pass-2'")  # rotation
    assert can(admin, "SELECT * FROM v_control_audit")
    assert not can(admin, ROW, ("erp.invoices", "erp"))
    assert not can(admin, "UPDATE table_control SET is_active = false")
    assert not can(admin, "SELECT * FROM historical_metadata")


def test_service_role_runs_the_control_loop_but_cannot_edit_connections(logins):
    admin, service = logins["dataloader_connection_admin"], logins["dataloader_service"]
    assert add_connection(admin)
    assert can(logins["dataloader_operator"], ROW, ("erp.invoices", "erp"))
    assert not can(service, "UPDATE source_connection SET host = 'evil.example.com'")
    assert not can(
        service,
        "INSERT INTO source_connection (connection_name, db_type, host) VALUES ('x', 'mysql', 'h')",
    )
    assert not can(service, "DELETE FROM table_control")
    assert not can(service, "SELECT * FROM control_audit")
    # The real client, logged in as the service: claim, resolve the source, record the attempt.
    with LakebaseClient(service) as client:
        [claimed] = claim_due(client, 10)
        resolved = client.resolve_source(claimed)
        assert resolved.db_config_value["host"] == "erp-db.internal"
        assert resolved.db_config_value["sslmode"] == "require"
        assert resolved.db_kv_scope == "kv-main"
        assert client.get_table_details("erp.invoices").last_status == "Queued"


def test_audit_records_who_changed_configuration_but_not_status_updates(logins, db):
    admin, operator = logins["dataloader_connection_admin"], logins["dataloader_operator"]
    operator_login = psycopg.conninfo.conninfo_to_dict(operator)["user"]
    admin_login = psycopg.conninfo.conninfo_to_dict(admin)["user"]
    assert add_connection(admin)
    assert can(operator, ROW, ("erp.invoices", "erp"))
    assert can(
        operator, "UPDATE table_control SET schedule_interval = '2 hours', is_active = false"
    )
    assert can(admin, "UPDATE source_connection SET host = 'erp-db2.internal'")
    before = db.execute("SELECT count(*) AS n FROM control_audit").fetchone()["n"]
    # The loader's own status, watermark and run-link updates are not configuration changes.
    db.execute(
        "UPDATE table_control SET last_status = 'Queued', last_message = 'x',"
        " incremental_value = '5', last_dagster_run = 'r'"
    )
    assert db.execute("SELECT count(*) AS n FROM control_audit").fetchone()["n"] == before

    trail = db.execute(
        "SELECT changed_by, table_name, row_key, action, old_values, new_values"
        " FROM v_control_audit WHERE table_name IN ('source_connection', 'table_control')"
        " ORDER BY audit_id"
    ).fetchall()
    assert [(t["changed_by"], t["table_name"], t["action"]) for t in trail] == [
        (admin_login, "source_connection", "INSERT"),
        (operator_login, "table_control", "INSERT"),
        (operator_login, "table_control", "UPDATE"),
        (admin_login, "source_connection", "UPDATE"),
    ]
    edit = trail[2]
    assert edit["row_key"] == "erp.invoices"
    assert edit["old_values"] == {"schedule_interval": "01:00:00", "is_active": True}
    assert edit["new_values"] == {"schedule_interval": "02:00:00", "is_active": False}
    assert trail[3]["old_values"] == {"host": "erp-db.internal"}
    assert trail[3]["new_values"] == {"host": "erp-db2.internal"}


def test_audit_keeps_inline_configs_but_never_a_password_shaped_key(db):
    # A password-shaped key is refused by the CHECK (sql/011, in any case); the audit trail's own
    # stripping stays as a second line: the function it uses drops such keys at any depth.
    with pytest.raises(errors.CheckViolation):
        db.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, db_config_value)"
            " VALUES ('a.b', 'b', 'l', 'r', 'b', 'postgresql', %s)",
            (Jsonb({**SOME_SOURCE, "pwd": "hunter2-not-allowed"}),),
        )
    db.execute(
        "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
        " destination_schema_name, destination_table_name, db_type, db_config_value)"
        " VALUES ('a.b', 'b', 'l', 'r', 'b', 'postgresql', %s)",
        (Jsonb(SOME_SOURCE),),
    )
    [entry] = db.execute("SELECT new_values FROM control_audit").fetchall()
    assert entry["new_values"]["db_config_value"]["host"] == SOME_SOURCE["host"]
    [stripped] = (
        db.execute(
            "SELECT public.dataloader_without_secret_shaped_keys(%s) AS s",
            (Jsonb({**SOME_SOURCE, "PWD": "x", "password_secret": "name", "o": [{"Token": "y"}]}),),
        )
        .fetchone()
        .values()
    )
    assert stripped == {**SOME_SOURCE, "password_secret": "name", "o": [{}]}


def test_grants_can_be_reapplied_and_are_rerunnable(control_db):
    with psycopg.connect(control_db, autocommit=True) as conn:
        conn.execute("SELECT dataloader_apply_grants()")
        conn.execute("SELECT dataloader_apply_grants()")


def test_a_migrating_user_without_createrole_migrates_and_grants_to_existing_roles(
    embedded_pg, control_db
):
    # As on Lakebase: the migrating identity owns the database but is no superuser. The roles
    # exist already (control_db was migrated by the superuser, which created them).
    from dagsters.local.migrate import apply_migrations

    tag = uuid.uuid4().hex[:8]
    owner, dbname = f"migrator_{tag}", f"control_owned_{tag}"
    admin = embedded_pg.conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    try:
        conninfo = make_conninfo(embedded_pg.conninfo(dbname), user=owner)
        assert "007_source_connections_roles_audit.sql" in apply_migrations(conninfo)
        with psycopg.connect(conninfo) as conn:
            granted = conn.execute(
                "SELECT has_table_privilege('dataloader_operator', 'table_control', 'INSERT'),"
                " has_table_privilege('dataloader_operator', 'source_connection', 'SELECT'),"
                " has_table_privilege('dataloader_service', 'source_connection', 'UPDATE')"
            ).fetchone()
        assert granted == (True, False, False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))
