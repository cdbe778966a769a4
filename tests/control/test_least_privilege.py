"""Least privilege that holds (issue 22, sql/011): operator and service logins stay what they are.

Real PostgreSQL (the embedded server). Every attack runs as a fresh LOGIN that is a member of one
group role only, against a control database migrated by either its superuser or, as on Lakebase,
a non-superuser owner with CREATEROLE. Each attack is the one that worked before sql/011.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dagsters.local.migrate import apply_migrations

GROUPS = ("dataloader_service", "dataloader_operator", "dataloader_connection_admin")
PINNED = "search_path=pg_catalog, public, pg_temp"

CONNECTION = (
    "INSERT INTO source_connection (connection_name, db_type, host, port, database, user_name,"
    " secret_scope, secret_key) VALUES (%s, 'postgresql', 'erp-db.internal', 5432, 'erp',"
    " 'loader', 'kv-main', 'erp-pg-pass')"
)
ROW = (
    "INSERT INTO table_control (control_key, source_schema_name, source_table_name,"
    " destination_catalog, destination_schema_name, destination_table_name, db_type,"
    " connection_name, schedule_interval, next_load_date_time)"
    " VALUES (%s, 'billing', %s, 'bronze', 'erp', %s, 'postgresql', 'erp', '1 hour', now())"
)


@dataclass(frozen=True)
class ControlDb:
    owner: str  # conninfo of the user that migrated (and owns) the database
    superuser: str  # conninfo of the server's superuser on the same database
    logins: dict[str, str]  # group role -> conninfo of a login that is a member of only that one


def _user(conninfo: str) -> str:
    return conninfo_to_dict(conninfo)["user"]


@pytest.fixture(params=["superuser_owner", "createrole_owner"])
def owned(request, embedded_pg, control_db) -> Iterator[ControlDb]:
    """A control database migrated by the superuser, or by a non-superuser CREATEROLE owner.

    ``control_db`` (migrated by the superuser) is requested first so the group roles exist, as
    they do on a server where an administrator created them.
    """
    tag = uuid.uuid4().hex[:8]
    admin = embedded_pg.conninfo("postgres")
    names = {group: f"{group.split('_', 1)[1]}_{tag}" for group in GROUPS}
    owner_role = dbname = None
    with psycopg.connect(admin, autocommit=True) as conn:
        for group, name in names.items():
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(group)
                )
            )
        # The operator's team (created below, as the platform team would) writes under bronze*.
        if request.param == "createrole_owner":
            owner_role, dbname = f"owner_{tag}", f"control_owned_{tag}"
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner_role))
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner_role)
                )
            )
    if dbname:
        base = embedded_pg.conninfo(dbname)
        owner = make_conninfo(base, user=owner_role)
        assert "011_least_privilege.sql" in apply_migrations(owner)
    else:
        base = owner = control_db
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dataloader_team (team_name, member_role) VALUES ('erp-team', %s)",
            (names["dataloader_operator"],),
        )
        conn.execute(
            "INSERT INTO dataloader_team_destination VALUES ('erp-team', 'bronze', NULL),"
            " ('erp-team', 'bronze2', NULL)"
        )
    try:
        yield ControlDb(
            owner=owner,
            superuser=make_conninfo(base, user="postgres"),
            logins={g: make_conninfo(base, user=n) for g, n in names.items()},
        )
    finally:
        if not dbname:  # whatever a login was granted in the shared control_db goes first
            with psycopg.connect(make_conninfo(base, user="postgres"), autocommit=True) as conn:
                for name in names.values():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with psycopg.connect(admin, autocommit=True) as conn:
            if dbname:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname))
                )
            for name in [*names.values(), *([owner_role] if owner_role else [])]:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _seed(db: ControlDb) -> None:
    """One connection and one control row, written as the roles that own them."""
    with psycopg.connect(db.logins["dataloader_connection_admin"], autocommit=True) as conn:
        conn.execute(CONNECTION, ("erp",))
        conn.execute("INSERT INTO dataloader_team_connection VALUES ('erp-team', 'erp')")
    with psycopg.connect(db.logins["dataloader_operator"], autocommit=True) as conn:
        conn.execute(ROW, ("erp.invoices", "invoices", "invoices"))


# A trigger on the attacker's own temporary control_keys_state. Before sql/011 the SECURITY
# DEFINER counter bump updated that table (pg_temp is searched first unless named), so this ran
# as the owner: superuser for the ALTER ROLE; any owner for the rest.
PAYLOAD = """
CREATE FUNCTION pg_temp.payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        DELETE FROM public.control_audit;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        EXECUTE format('GRANT SELECT, UPDATE ON public.source_connection TO %I', session_user);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        UPDATE public.source_connection SET host = 'attacker.example.com', tls_mode = 'disable';
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN NULL;
END;
$$
"""


def _plant_temp_counter(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE TEMP TABLE control_keys_state (singleton boolean, version bigint,"
        " changed_at timestamptz)"
    )
    conn.execute("INSERT INTO pg_temp.control_keys_state VALUES (true, 1, now())")
    conn.execute(PAYLOAD)
    conn.execute(
        "CREATE TRIGGER payload AFTER UPDATE ON pg_temp.control_keys_state"
        " FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.payload()"
    )


def _state(db: ControlDb, login: str) -> dict:
    with psycopg.connect(db.superuser, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = %(me)s) AS superuser,"
            " has_table_privilege(%(me)s, 'public.source_connection', 'UPDATE') AS may_update,"
            " has_table_privilege(%(me)s, 'public.source_connection', 'SELECT') AS may_read,"
            " (SELECT array_agg(host || '/' || coalesce(tls_mode, '-')) FROM source_connection)"
            "   AS hosts,"
            " (SELECT count(*) FROM control_audit) AS audit_rows,"
            " (SELECT version FROM public.control_keys_state) AS version",
            {"me": _user(login)},
        ).fetchone()


@pytest.mark.parametrize(
    ("group", "trigger_statement"),
    [
        ("dataloader_operator", ROW % ("'erp.payments'", "'payments'", "'payments'")),
        ("dataloader_service", "UPDATE table_control SET control_key = control_key"),
    ],
)
def test_a_temp_table_cannot_turn_a_login_into_its_owner(owned, group, trigger_statement):
    _seed(owned)
    login = owned.logins[group]
    before = _state(owned, login)
    assert before["audit_rows"] >= 2 and before["hosts"] == ["erp-db.internal/-"]
    with psycopg.connect(login, autocommit=True) as conn:
        _plant_temp_counter(conn)
        conn.execute(trigger_statement)
        temp_version = conn.execute("SELECT version FROM pg_temp.control_keys_state").fetchone()
    after = _state(owned, login)
    assert after["superuser"] is False
    assert after["may_update"] is False and after["may_read"] == before["may_read"]
    assert after["hosts"] == ["erp-db.internal/-"]
    assert after["audit_rows"] >= before["audit_rows"]
    # The bump went to the real counter, not to the attacker's table.
    assert after["version"] == before["version"] + 1
    assert temp_version == (1,)


@pytest.mark.parametrize(
    ("group", "statement"),
    [
        (
            "dataloader_operator",
            (
                "INSERT INTO table_control (control_key, source_table_name,"
                " destination_catalog, destination_schema_name, destination_table_name, db_type,"
                " connection_name, schedule_cron, schedule_timezone) VALUES ('erp.mars', 'mars',"
                " 'bronze', 'erp', 'mars', 'postgresql', 'erp', '0 * * * *', 'Mars/Olympus')"
            ),
        ),
        ("dataloader_operator", "UPDATE table_control SET schedule_timezone = 'UTC+3'"),
        ("dataloader_service", "UPDATE table_control SET schedule_timezone = 'Mars/Olympus'"),
    ],
)
def test_a_temp_zone_list_does_not_let_an_unknown_zone_in(owned, group, statement):
    _seed(owned)
    with psycopg.connect(owned.logins[group], autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE dataloader_time_zone_names (name text PRIMARY KEY)")
        conn.execute(
            "INSERT INTO pg_temp.dataloader_time_zone_names VALUES ('Mars/Olympus'), ('UTC+3')"
        )
        with pytest.raises(errors.CheckViolation, match="schedule_timezone"):
            conn.execute(statement)
    with psycopg.connect(owned.superuser) as conn:
        assert conn.execute(
            "SELECT array_agg(DISTINCT schedule_timezone) FROM table_control"
        ).fetchone()[0] == ["UTC"]


def test_the_service_cannot_add_a_zone_to_the_list(owned):
    with (
        psycopg.connect(owned.logins["dataloader_service"], autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("INSERT INTO dataloader_time_zone_names VALUES ('Mars/Olympus')")


def test_no_login_may_create_objects_in_public(owned):
    for group in GROUPS:
        with (
            psycopg.connect(owned.logins[group], autocommit=True) as conn,
            pytest.raises(errors.InsufficientPrivilege),
        ):
            conn.execute(
                "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'"
            )


# Our tables and functions: every reference to one inside a function body must name its schema.
_OURS = re.compile(
    r"(?<![\w.'\"%])(table_control|historical_metadata|control_keys_state|source_connection"
    r"|control_audit|dataloader_time_zone_names|dataloader_team[a-z_]*)\b(?!\s*\()"
    r"|(?<![\w.'\"%])(dataloader_[a-z_]+\s*\()"
)

_LITERAL = re.compile(r"'(?:[^']|'')*'")


def test_every_function_of_ours_pins_search_path_with_pg_temp_last_and_qualifies_names(owned):
    with psycopg.connect(owned.owner, row_factory=dict_row) as conn:
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text AS name, p.proconfig, p.prosrc, p.prosecdef"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_depend d"
            "   WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
            " ORDER BY 1"
        ).fetchall()
    names = {f["name"].split("(")[0] for f in functions}
    assert {
        "dataloader_bump_control_keys_version",
        "dataloader_audit_change",
        "dataloader_is_valid_timezone",
        "dataloader_apply_grants",
    } <= names
    unpinned = [f["name"] for f in functions if PINNED not in (f["proconfig"] or [])]
    assert unpinned == []
    code = {f["name"]: _LITERAL.sub("''", f["prosrc"]) for f in functions}
    unqualified = {
        name: sorted({m.group(1) or m.group(2) for m in _OURS.finditer(src)})
        for name, src in code.items()
        if _OURS.search(src)
    }
    assert unqualified == {}


# ---- audit ------------------------------------------------------------------------------------

# A different, valid value for every column of table_control; a column added later without a
# value here fails test_every_column_of_table_control_is_audited, which is the point: someone
# looks at whether it is audited (it is, by default) and at who may write it.
NEW_VALUES = {
    "control_key": "erp.invoices2",
    "source_catalog": "erp2",
    "source_schema_name": "billing2",
    "source_table_name": "invoices2",
    "destination_catalog": "bronze2",
    "destination_schema_name": "erp2",
    "destination_table_name": "invoices2",
    "db_type": "mysql",
    "db_config_value": Jsonb({"note": "moved"}),
    "db_kv_scope": "kv-other",
    "incremental_column": "updated_at",
    "load_strategy": "incremental",
    "incremental_value": "2020-01-01T00:00:00+00:00",
    "merge_keys": ["invoice_id"],
    "lookback_window": "5 minutes",
    "is_active": False,
    "schedule_interval": None,
    "schedule_cron": "0 * * * *",
    "schedule_timezone": "Europe/Amsterdam",
    "next_load_date_time": "2031-01-01T00:00:00+00:00",
    "force_full_reload": True,
    "last_status": "Failed",
    "last_status_date_time": "2031-01-01T00:00:00+00:00",
    "last_load_date_time": "2031-01-01T00:00:00+00:00",
    "last_dagster_run": "run-x",
    "last_databricks_run": "dbx-x",
    "last_message": "rewound by hand",
    "last_metadata_id": 424242,
    "retry_count": 2,
    "needs_review": True,
    "retry_analysis_requested_at": "2031-01-01T00:00:00+00:00",
    "staging_model_processed": True,
    "created_at": "2031-01-01T00:00:00+00:00",
    "connection_name": "erp2",
    "delete_detection": "hard",
    "delete_max_fraction": 0.25,
    "jdbc_partition_column": "invoice_id",
    "jdbc_num_partitions": 4,
    "verify_depth": "keys",
    "last_failure_kind": "bad_config",
    "last_failure_code": "sqlstate:57014",
    "columns_exclude": ["ssn"],
    "columns_hash": ["email"],
    "schema_change": "freeze",
}
NOT_EDITABLE = {"config_id", "updated_at"}  # identity; set by the touch trigger on every edit
STATE = {
    "incremental_value",
    "next_load_date_time",
    "last_status",
    "last_status_date_time",
    "last_load_date_time",
    "last_dagster_run",
    "last_databricks_run",
    "last_message",
    "last_metadata_id",
    "retry_count",
    "retry_analysis_requested_at",
    "staging_model_processed",
    "last_failure_kind",
    "last_failure_code",
}


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
    ]


def _audited_columns(conn: psycopg.Connection, since: int) -> set[str]:
    rows = conn.execute(
        "SELECT new_values FROM control_audit WHERE audit_id > %s AND action = 'UPDATE'", (since,)
    ).fetchall()
    return {k for (values,) in rows for k in values}


def _last_audit_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(audit_id), 0) FROM control_audit").fetchone()[0]


def test_every_column_of_table_control_is_audited_for_operators(owned):
    _seed(owned)
    with psycopg.connect(owned.logins["dataloader_connection_admin"], autocommit=True) as conn:
        conn.execute(CONNECTION, ("erp2",))
        conn.execute("INSERT INTO dataloader_team_connection VALUES ('erp-team', 'erp2')")
    with psycopg.connect(owned.superuser, autocommit=True) as conn:
        columns = _columns(conn, "table_control")
    missing = set(columns) - set(NEW_VALUES) - NOT_EDITABLE
    assert not missing, f"new table_control column(s) {missing}: give a value in NEW_VALUES"
    with (
        psycopg.connect(owned.logins["dataloader_operator"], autocommit=True) as op,
        psycopg.connect(owned.superuser, autocommit=True) as su,
    ):
        since = _last_audit_id(su)
        for column, value in NEW_VALUES.items():  # this order passes the CHECKs at each step
            op.execute(
                sql.SQL("UPDATE table_control SET {} = %s").format(sql.Identifier(column)),
                (value,),
            )
        audited = _audited_columns(su, since)
    assert audited == set(columns) - NOT_EDITABLE


def test_the_code_locations_state_updates_are_not_recorded_but_its_edits_are(owned):
    _seed(owned)
    with (
        psycopg.connect(owned.logins["dataloader_service"], autocommit=True) as svc,
        psycopg.connect(owned.superuser, autocommit=True) as su,
    ):
        since = _last_audit_id(su)
        for column in sorted(STATE):
            svc.execute(
                sql.SQL("UPDATE table_control SET {} = %s").format(sql.Identifier(column)),
                (NEW_VALUES[column],),
            )
        assert _audited_columns(su, since) == set()
        svc.execute("UPDATE table_control SET force_full_reload = true, needs_review = true")
        assert _audited_columns(su, since) == {"force_full_reload", "needs_review"}


def test_an_operator_rewinding_a_watermark_is_recorded(owned):
    _seed(owned)
    with psycopg.connect(owned.superuser, autocommit=True) as su:
        su.execute("UPDATE table_control SET incremental_value = '2024-06-01T00:00:00+00:00'")
        since = _last_audit_id(su)
    operator = owned.logins["dataloader_operator"]
    with psycopg.connect(operator, autocommit=True) as op:
        op.execute("UPDATE table_control SET incremental_value = '2020-01-01', retry_count = 0")
    with psycopg.connect(owned.superuser, row_factory=dict_row) as su:
        [entry] = su.execute(
            "SELECT changed_by, old_values, new_values FROM control_audit WHERE audit_id > %s",
            (since,),
        ).fetchall()
    assert entry["changed_by"] == _user(operator)
    assert entry["old_values"] == {"incremental_value": "2024-06-01T00:00:00+00:00"}
    assert entry["new_values"] == {"incremental_value": "2020-01-01"}


def test_every_column_of_source_connection_is_audited(owned):
    _seed(owned)
    values = {
        "connection_name": "erp-renamed",
        "db_type": "mysql",
        "host": "erp-db2.internal",
        "port": 3306,
        "database": "erp2",
        "user_name": "loader2",
        "tls_mode": "verify-full",
        "tls_ca_file": "/etc/ssl/erp.pem",
        "secret_scope": "kv-2",
        "secret_key": "erp-2",
        "hash_secret_scope": "kv-2",
        "hash_secret_key": "pii-2",
        "connect_timeout_seconds": 7,
        "description": "moved",
        "foreign_catalog": "uc_erp2",
        "created_at": "2031-01-01T00:00:00+00:00",
    }
    admin = owned.logins["dataloader_connection_admin"]
    with psycopg.connect(owned.superuser, autocommit=True) as su:
        columns = _columns(su, "source_connection")
        since = _last_audit_id(su)
    missing = set(columns) - set(values) - {"updated_at"}
    assert not missing, f"new source_connection column(s) {missing}: give a value here"
    with psycopg.connect(admin, autocommit=True) as conn:
        for column in columns:
            if column == "updated_at":
                continue
            conn.execute(
                sql.SQL("UPDATE source_connection SET {} = %s").format(sql.Identifier(column)),
                (values[column],),
            )
    with psycopg.connect(owned.superuser, autocommit=True) as su:
        audited = _audited_columns(su, since)
        [inserted] = su.execute(
            "SELECT new_values FROM control_audit WHERE table_name = 'source_connection'"
            " AND action = 'INSERT'"
        ).fetchone()
    assert audited == set(columns) - {"updated_at"}
    assert set(inserted) == set(columns) - {"updated_at"}


def test_secret_names_in_the_audit_are_for_connection_admins_only(owned):
    _seed(owned)
    with psycopg.connect(owned.logins["dataloader_connection_admin"], autocommit=True) as conn:
        conn.execute("UPDATE source_connection SET secret_key = 'erp-pg-pass-2'")
    seen = {}
    for group in GROUPS:
        with psycopg.connect(owned.logins[group], row_factory=dict_row) as conn:
            seen[group] = conn.execute(
                "SELECT action, old_values, new_values FROM v_control_audit"
                " WHERE table_name = 'source_connection' ORDER BY audit_id"
            ).fetchall()
    admin_view = seen["dataloader_connection_admin"]
    assert admin_view[0]["new_values"]["secret_scope"] == "kv-main"
    assert admin_view[1]["new_values"] == {"secret_key": "erp-pg-pass-2"}
    operator_view = seen["dataloader_operator"]
    text = repr(operator_view)
    for name in ("kv-main", "erp-pg-pass", "erp-pg-pass-2"):
        assert name not in text
    assert operator_view[1]["new_values"] == {"secret_key": "(hidden: connection admins only)"}
    assert operator_view[0]["new_values"]["host"] == "erp-db.internal"  # the rest stays


@pytest.mark.parametrize(
    "config",
    [
        {"host": "db1.internal", "PASSWORD": "hunter2"},
        {"host": "db1.internal", "Password": "hunter2"},
        {"host": "db1.internal", "pwd": "hunter2"},
        {"host": "db1.internal", "sslpassword": "hunter2"},
        {"host": "db1.internal", "client_secret": "hunter2"},
        {"host": "db1.internal", "Access_Token": "hunter2"},
        {"host": "db1.internal", "API_KEY": "hunter2"},
        {"host": "db1.internal", "PASSWORD_SECRET": "erp-pg-pass"},
        {"host": "db1.internal", "options": {"password": "hunter2"}},
        {"host": "db1.internal", "extra": [{"Token": "hunter2"}]},
    ],
)
def test_a_key_naming_a_password_secret_or_token_is_refused_in_any_case(owned, config):
    with (
        psycopg.connect(owned.logins["dataloader_operator"], autocommit=True) as conn,
        pytest.raises(
            errors.CheckViolation,
            match="db_config_value_must_not_name_a_password_secret_or_token_key",
        ),
    ):
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, db_config_value)"
            " VALUES ('a.b', 'b', 'bronze', 'r', 'b', 'postgresql', %s)",
            (Jsonb(config),),
        )


def test_the_secrets_name_is_still_accepted(owned):
    _seed(owned)  # the team holds connection erp, which binds kv-main/erp-pg-pass
    with psycopg.connect(owned.logins["dataloader_operator"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, db_config_value,"
            " db_kv_scope) VALUES ('a.b', 'b', 'bronze', 'r', 'b', 'postgresql', %s, 'kv-main')",
            (Jsonb({"host": "db1.internal", "password_secret": "erp-pg-pass"}),),
        )


# ---- teams ------------------------------------------------------------------------------------

HR_CONNECTION = (
    "INSERT INTO source_connection (connection_name, db_type, host, port, database, user_name,"
    " secret_scope, secret_key) VALUES ('hr', 'postgresql', 'hr-db.internal', 5432, 'hr',"
    " 'loader', 'kv-main', 'hr-pg-pass')"
)


def _insert(
    conninfo: str,
    key: str,
    catalog: str,
    schema: str,
    connection: str | None,
    config: dict | None = None,
    scope: str | None = None,
    table: str | None = None,
) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type, connection_name,"
            " db_config_value, db_kv_scope) VALUES (%s, 't', %s, %s, %s, 'postgresql', %s, %s, %s)",
            (
                key,
                catalog,
                schema,
                table or key.replace(".", "_"),
                connection,
                Jsonb(config or {}),
                scope,
            ),
        )


@pytest.fixture
def hr_team(owned, embedded_pg) -> Iterator[str]:
    """A second team, 'hr-team', whose role is a group; its operator is a member of that group.

    Yields the hr operator's conninfo. hr-team holds connection 'hr' and destination silver.hr.
    """
    tag = uuid.uuid4().hex[:8]
    group, login = f"hr_group_{tag}", f"hr_op_{tag}"
    admin = embedded_pg.conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE dataloader_operator, {}").format(
                sql.Identifier(login), sql.Identifier(group)
            )
        )
    _seed(owned)
    with psycopg.connect(owned.owner, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dataloader_team (team_name, member_role) VALUES ('hr-team', %s)", (group,)
        )
        conn.execute("INSERT INTO dataloader_team_destination VALUES ('hr-team', 'silver', 'hr')")
    with psycopg.connect(owned.logins["dataloader_connection_admin"], autocommit=True) as conn:
        conn.execute(HR_CONNECTION)
        conn.execute("INSERT INTO dataloader_team_connection VALUES ('hr-team', 'hr')")
    try:
        yield make_conninfo(owned.owner, user=login)
    finally:
        with psycopg.connect(make_conninfo(owned.owner, user="postgres"), autocommit=True) as c:
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(login)))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(group)))


def test_a_row_names_only_its_teams_connections_and_writes_only_under_its_prefixes(owned, hr_team):
    erp = owned.logins["dataloader_operator"]
    _insert(hr_team, "hr.staff", "silver", "hr", "hr")  # the hr team, through its group role
    refused = [
        ("erp.hr1", "bronze", "erp", "hr", None, None),  # another team's connection
        ("erp.hr2", "silver", "hr", "erp", None, None),  # another team's destination
        ("erp.hr3", "gold", "x", "erp", None, None),  # nobody's destination
        # inline, with the secret another team's connection binds
        (
            "erp.hr4",
            "bronze",
            "erp",
            None,
            {
                "host": "hr-db.internal",
                "database": "hr",
                "user": "loader",
                "password_secret": "hr-pg-pass",
            },
            "kv-main",
        ),
    ]
    for key, catalog, schema, connection, config, scope in refused:
        with pytest.raises(errors.InsufficientPrivilege, match="no team of"):
            _insert(erp, key, catalog, schema, connection, config, scope)
    _insert(erp, "erp.trust", "bronze", "erp", None, {"host": "/tmp", "database": "d"})
    _insert(
        erp,
        "erp.bound",
        "BRONZE",
        "Erp",
        None,
        {
            "host": "erp-db.internal",
            "database": "erp",
            "user": "loader",
            "password_secret": "erp-pg-pass",
        },
        "kv-main",
    )
    with psycopg.connect(erp, autocommit=True) as conn:
        for change in ("connection_name = 'hr'", "destination_catalog = 'silver'"):
            with pytest.raises(errors.InsufficientPrivilege, match="no team of"):
                conn.execute(
                    f"UPDATE table_control SET {change} WHERE control_key = 'erp.invoices'"
                )
        # Another team's row: not writable (row-level security filters it), still readable.
        touched = conn.execute(
            "UPDATE table_control SET is_active = false, connection_name = 'erp'"
            " WHERE control_key = 'hr.staff'"
        ).rowcount
        assert touched == 0
        assert conn.execute(
            "SELECT is_active, connection_name FROM table_control WHERE control_key = 'hr.staff'"
        ).fetchone() == (True, "hr")
        assert conn.execute("SELECT team_name, connections FROM v_my_teams").fetchall() == [
            ("erp-team", ["erp"])
        ]
    with (
        psycopg.connect(hr_team, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege, match="connection 'erp'"),
    ):
        conn.execute(
            "UPDATE table_control SET connection_name = 'erp' WHERE control_key = 'hr.staff'"
        )


def test_only_the_platform_team_and_connection_admins_write_teams(owned):
    team_tables = ("dataloader_team", "dataloader_team_connection", "dataloader_team_destination")
    for group in ("dataloader_operator", "dataloader_service"):
        for table in team_tables:
            with (
                psycopg.connect(owned.logins[group], autocommit=True) as conn,
                pytest.raises(errors.InsufficientPrivilege),
            ):
                conn.execute(f"DELETE FROM {table}")
    admin = owned.logins["dataloader_connection_admin"]
    for table in ("dataloader_team", "dataloader_team_destination"):
        with (
            psycopg.connect(admin, autocommit=True) as conn,
            pytest.raises(errors.InsufficientPrivilege),
        ):
            conn.execute(f"DELETE FROM {table}")


def test_an_operator_in_no_team_writes_nothing(owned, embedded_pg):
    _seed(owned)
    tag = uuid.uuid4().hex[:8]
    admin = embedded_pg.conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE dataloader_operator").format(
                sql.Identifier(f"loner_{tag}")
            )
        )
    try:
        loner = make_conninfo(owned.owner, user=f"loner_{tag}")
        with pytest.raises(errors.InsufficientPrivilege):
            _insert(loner, "x.y", "bronze", "erp", "erp")
        with psycopg.connect(loner, autocommit=True) as conn:
            assert conn.execute("UPDATE table_control SET is_active = false").rowcount == 0
            assert conn.execute("SELECT count(*) FROM table_control").fetchone() == (1,)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(f"loner_{tag}")))


def test_one_destination_belongs_to_one_row_whatever_its_case(owned):
    _seed(owned)  # erp.invoices -> bronze.erp.invoices
    with pytest.raises(errors.UniqueViolation, match="destination_must_belong_to_one_row"):
        _insert(
            owned.logins["dataloader_operator"],
            "erp.copy",
            "BRONZE",
            "Erp",
            "erp",
            table="INVOICES",
        )
    with (
        psycopg.connect(owned.superuser, autocommit=True) as conn,
        pytest.raises(errors.UniqueViolation, match="destination_must_belong_to_one_row"),
    ):
        conn.execute(
            "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
            " destination_schema_name, destination_table_name, db_type)"
            " VALUES ('erp.copy2', 't', 'bronze', 'ERP', 'Invoices', 'postgresql')"
        )


def test_the_migration_names_rows_that_share_a_destination(source_db, tmp_path):
    from dagsters.local.migrate import SQL_DIR, MigrationError

    for path in sorted(SQL_DIR.glob("[0-9]*.sql")):
        if path.name < "011":
            (tmp_path / path.name).write_text(path.read_text())
    apply_migrations(source_db, tmp_path)
    with psycopg.connect(source_db, autocommit=True) as conn:
        for key, table in (("a.one", "T"), ("a.two", "t"), ("a.three", "other")):
            conn.execute(
                "INSERT INTO table_control (control_key, source_table_name, destination_catalog,"
                " destination_schema_name, destination_table_name, db_type)"
                " VALUES (%s, 't', 'lake', 'raw', %s, 'postgresql')",
                (key, table),
            )
    (tmp_path / "011_least_privilege.sql").write_text(
        (SQL_DIR / "011_least_privilege.sql").read_text()
    )
    with pytest.raises(
        MigrationError, match=r"share a destination: lake\.raw\.T \(a\.one, a\.two\)"
    ):
        apply_migrations(source_db, tmp_path)
