"""Only documented connection keys reach a driver; PostgreSQL sessions pin search_path (issue 17).

The attack from the issue, on the real embedded PostgreSQL: a source user defines ``*`` for
numeric in a schema of their own and puts that schema first on the search_path; the loader's
scaled NUMERIC read ``("amount" * 100::numeric)`` then ran the user's function once per row.
"""

from __future__ import annotations

import decimal

import psycopg
import pyarrow as pa
import pytest
from helpers import pg_config

from databricks_scripts.engines.spark.engine import jdbc_options
from databricks_scripts.load import params as lp
from databricks_scripts.sources import readers as ls
from databricks_scripts.sources.connections import (
    mysql_connect_kwargs,
    oracle_connect_kwargs,
    sqlserver_connect_kwargs,
)

EVIL = """
CREATE SCHEMA evil;
CREATE TABLE evil.calls (n bigint);
INSERT INTO evil.calls VALUES (0);
CREATE FUNCTION evil.mul(a numeric, b numeric) RETURNS numeric LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE evil.calls SET n = n + 1;
    RETURN pg_catalog.numeric_mul(a, b);
END $$;
CREATE OPERATOR evil.* (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.mul);
CREATE TABLE public.amounts (id int PRIMARY KEY, amount numeric(10, 2));
INSERT INTO public.amounts SELECT g, g * 1.25 FROM generate_series(1, 40) g;
"""


def spec_for(source_db: str, **config) -> lp.LoadSpec:
    return lp.parse_load_spec(
        {
            "control_key": "t.amounts",
            "source_schema_name": "public",
            "source_table_name": "amounts",
            "destination_catalog": "lake",
            "destination_schema_name": "raw",
            "destination_table_name": "amounts",
            "db_type": "postgresql",
            "db_config_value": {**pg_config(source_db), **config},
            "load_strategy": "full",
        }
    )


def calls(source_db: str) -> int:
    with psycopg.connect(source_db) as conn:
        return conn.execute("SELECT n FROM evil.calls").fetchone()[0]


def test_a_source_users_operator_never_runs_in_the_loaders_session(source_db):
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(EVIL)
        dbname = conn.info.dbname
        # The database's own default now puts the user's schema first, as the row's "options" did.
        conn.execute(f'ALTER DATABASE "{dbname}" SET search_path = evil, pg_catalog, public')
    with psycopg.connect(source_db) as conn:  # the attack works on an unprotected session
        conn.execute('SELECT ("amount" * 100::numeric)::int8 FROM public.amounts').fetchall()
    assert calls(source_db) == 40

    reader = ls.open_source(spec_for(source_db), None, batch_bytes=1 << 20, batch_rows=100)
    try:
        _query, scaled = reader.read_query(incremental=False)
        assert scaled == {"amount": (10, 2)}  # the scaled read, with the operator, was used
        schema, batches = reader.batches(None)
        table = pa.Table.from_batches(list(batches), schema).sort_by("id")
    finally:
        reader.close()
    assert calls(source_db) == 40  # not one more call
    assert table.column("amount")[0].as_py() == decimal.Decimal("1.25")
    assert table.num_rows == 40


@pytest.mark.parametrize("key", ["options", "passfile", "sslkey", "service", "application_name"])
def test_a_key_outside_the_allow_list_is_refused_by_name(source_db, key):
    with pytest.raises(lp.LoadParamsError, match=f"db_config_value key '{key}' is not allowed"):
        spec_for(source_db, **{key: "-c search_path=evil,pg_catalog"})


def test_tls_defaults_to_require_off_loopback_on_every_driver():
    remote = lp.check_connection_config({"host": "db.example.com", "port": 5432, "user": "u"})
    assert remote["sslmode"] == "require"
    for host in ("127.0.0.1", "localhost", "::1", "/var/run/postgresql"):
        assert "sslmode" not in lp.check_connection_config({"host": host})
    assert ls.postgres_conninfo(remote, "pw").count("sslmode='require'") == 1

    my = mysql_connect_kwargs({"host": "db", "sslmode": "require"}, "pw")
    assert my["ssl"].verify_mode == 0 and not my["ssl"].check_hostname  # encrypted, required
    assert mysql_connect_kwargs({"host": "db", "sslmode": "disable"}, "pw")["ssl_disabled"]
    full = mysql_connect_kwargs({"host": "db", "sslmode": "verify-full"}, "pw")["ssl"]
    assert full.check_hostname
    assert sqlserver_connect_kwargs({"host": "db", "sslmode": "require"}, "pw")["encryption"] == (
        "require"
    )
    ora = oracle_connect_kwargs({"host": "db", "sslmode": "verify-full", "database": "S"}, "pw")
    assert ora["protocol"] == "tcps" and ora["ssl_server_dn_match"] is True


class _Spec:
    def __init__(self, db_type: str, **cfg):
        self.db_type = db_type
        self.db_config_value = lp.check_connection_config({"host": "db.example.com", **cfg})
        self.source_catalog, self.source_schema_name, self.source_table_name = "c", "s", "t"


def test_spark_jdbc_options_carry_the_tls_mode():
    assert jdbc_options(_Spec("postgresql"), "pw")["sslmode"] == "require"
    assert jdbc_options(_Spec("mysql"), "pw")["sslMode"] == "REQUIRED"
    assert jdbc_options(_Spec("mysql", sslmode="verify-full"), "pw")["sslMode"] == (
        "VERIFY_IDENTITY"
    )
    assert jdbc_options(_Spec("sqlserver"), "pw")["encrypt"] == "true"
    assert jdbc_options(_Spec("oracle", database="S"), "pw")["url"].startswith(
        "jdbc:oracle:thin:@tcps://"
    )
    options = jdbc_options(_Spec("postgresql", connect_timeout=7), "pw")
    assert options["connectTimeout"] == "7" and "options" not in options
