"""Loader pure parts: identifier quoting, SQL/Spark statements, type mapping, watermark text, params."""

import dataclasses
import datetime as dt
import decimal
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from databricks_scripts import contract
from databricks_scripts.load import params as lp
from databricks_scripts.load import sql as sq
from databricks_scripts.load import types as lt
from databricks_scripts.load import watermark as lw
from databricks_scripts.pipes_io import choose_pipes_io, dbfs_local_path
from databricks_scripts.script_env import ScriptEnv
from databricks_scripts.sources import readers as ls

UTC = dt.UTC


# ---- identifiers and statements ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "name", "quoted"),
    [
        (sq.POSTGRESQL, 'a"b; DROP TABLE x', '"a""b; DROP TABLE x"'),
        (sq.MYSQL, "a`b c", "`a``b c`"),
        (sq.SQLSERVER, "a]b[c", "[a]]b[c]"),
        (sq.ORACLE, 'x"y', '"x""y"'),
        (sq.SPARK, "we`ird", "`we``ird`"),
    ],
)
def test_identifiers_are_quoted_with_the_dialects_own_quotes(dialect, name, quoted):
    assert dialect.quote(name) == quoted


@pytest.mark.parametrize("name", ["", "a\x00b", "line\nbreak", "x" * 64])
def test_unsafe_identifiers_are_refused(name):
    with pytest.raises(sq.UnsafeIdentifierError):
        sq.POSTGRESQL.quote(name)


@pytest.mark.parametrize("dialect", [sq.MYSQL, sq.SQLSERVER])
def test_percent_in_names_is_refused_where_the_driver_uses_percent_placeholders(dialect):
    with pytest.raises(sq.UnsafeIdentifierError, match="placeholder"):
        dialect.quote("discount_%s")
    assert sq.POSTGRESQL.quote("discount_%s") == '"discount_%s"'


def test_source_select_binds_the_watermark_as_a_parameter():
    table = sq.qualified_name(sq.POSTGRESQL, "public", "t")
    assert sq.select_source(sq.POSTGRESQL, table, cursor="updated at") == (
        'SELECT * FROM "public"."t" WHERE "updated at" OPERATOR(pg_catalog.>) $1'
    )
    assert sq.select_source(sq.MYSQL, "`db`.`t`", cursor="c").endswith("`c` > %s")
    assert sq.select_source(sq.ORACLE, '"S"."T"', cursor="C").endswith('"C" > :1')
    assert sq.select_source(sq.SQLSERVER, "[t]", limit_zero=True) == "SELECT TOP 0 * FROM [t]"
    assert sq.source_table_parts("sqlserver", "db", "dbo", "t") == ("db", "dbo", "t")
    assert sq.source_table_parts("postgresql", "ignored", "public", "t") == ("public", "t")


def test_spark_statements():
    target = sq.spark_table("main", "landing", "or`ders")
    assert target == "`main`.`landing`.`or``ders`"
    merge = sq.spark_merge(target, "dl_src", ["id", "line no"], ["id", "line no", "qty"])
    assert merge == (
        "MERGE INTO `main`.`landing`.`or``ders` AS t USING `dl_src` AS s "
        "ON t.`id` = s.`id` AND t.`line no` = s.`line no` "
        "WHEN MATCHED THEN UPDATE SET t.`id` = s.`id`, t.`line no` = s.`line no`, "
        "t.`qty` = s.`qty` "
        "WHEN NOT MATCHED THEN INSERT (`id`, `line no`, `qty`) VALUES (s.`id`, s.`line no`, s.`qty`)"
    )
    append = sq.spark_append_new_rows(target, "dl_src", ["id", "ts"], "ts", with_lookback=True)
    assert ":watermark" in append and ":lower_bound" in append and "EXCEPT ALL" in append
    assert sq.spark_append_new_rows(target, "v", ["a"], "a", with_lookback=False) == (
        f"INSERT INTO {target} (`a`) SELECT `a` FROM `v`"
    )
    assert sq.spark_create_table_as(target, "v", replace=True).startswith(
        f"CREATE OR REPLACE TABLE {target} USING DELTA AS SELECT"
    )
    assert sq.spark_insert_overwrite(target, "v", ["a"]) == (
        f"INSERT OVERWRITE TABLE {target} (`a`) SELECT `a` FROM `v`"
    )
    assert sq.spark_add_columns(target, [("new col", "DECIMAL(12,2)")]) == (
        f"ALTER TABLE {target} ADD COLUMNS (`new col` DECIMAL(12,2))"
    )
    assert sq.delta_merge_predicate(['k"1']) == 't."k""1" = s."k""1"'


# ---- types and schema evolution -------------------------------------------------------------


def _pg_numeric(name: str, typmod: int) -> pa.Field:
    meta = {b"POSTGRESQL:type": b"numeric", b"POSTGRESQL:typmod": str(typmod).encode()}
    return pa.field(name, pa.string(), metadata=meta)


def test_numeric_typmod_maps_to_decimal_and_unconstrained_stays_text():
    assert lt.delta_type_for(_pg_numeric("n", ((12 << 16) | 2) + 4)) == pa.decimal128(12, 2)
    assert lt.delta_type_for(_pg_numeric("n", -1)) == pa.string()
    assert lt.delta_type_for(_pg_numeric("n", ((50 << 16) | 2) + 4)) == pa.string()
    assert lt.delta_type_for(pa.field("t", pa.timestamp("us", tz="+02:00"))) == pa.timestamp(
        "us", tz="UTC"
    )
    assert lt.delta_type_for(pa.field("t", pa.timestamp("us"))) == pa.timestamp("us")
    assert lt.delta_type_for(pa.field("u", pa.uint64())) == pa.decimal128(20, 0)


def test_cast_is_exact_or_fails():
    batch = pa.record_batch({"n": pa.array(["12345678901.99", None])})
    target = pa.schema([pa.field("n", pa.decimal128(13, 2)), pa.field("extra", pa.string())])
    out = lt.cast_batch(batch, target)
    assert out.column("n").to_pylist() == [decimal.Decimal("12345678901.99"), None]
    assert out.column("extra").null_count == 2
    with pytest.raises(pa.ArrowInvalid):
        lt.cast_batch(batch, pa.schema([pa.field("n", pa.decimal128(5, 2))]))


def test_schema_plan_adds_columns_widens_and_refuses_type_changes():
    dest = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.large_string())])
    src = pa.schema(
        [pa.field("id", pa.int32()), pa.field("name", pa.string()), pa.field("tier", pa.string())]
    )
    plan = lt.plan_schema(src, dest)
    assert plan.added_columns == ("tier",)
    assert plan.write_schema.field("id").type == pa.int64()
    bad = pa.schema([pa.field("id", pa.string())])
    with pytest.raises(lt.IncompatibleSchemaError, match="'id'"):
        lt.plan_schema(bad, dest)


# ---- watermarks -----------------------------------------------------------------------------


def test_watermark_text_round_trips_exactly():
    tz = pa.timestamp("us", tz="UTC")
    value = lw.decode_watermark("2024-03-01T10:00:00.000001+02:00", tz)
    assert value == dt.datetime(2024, 3, 1, 8, 0, 0, 1, tzinfo=UTC)
    assert lw.encode_watermark(value.astimezone(UTC)) == "2024-03-01T08:00:00.000001+00:00"
    naive = lw.decode_watermark("2024-03-01 10:00:00", pa.timestamp("us"))
    assert lw.encode_watermark(naive) == "2024-03-01T10:00:00.000000"
    assert lw.decode_watermark("2024-03-01T10:00:00", tz).tzinfo is UTC  # read as UTC
    with pytest.raises(lw.WatermarkError):
        lw.decode_watermark("2024-03-01T10:00:00+01:00", pa.timestamp("us"))
    assert lw.encode_watermark(decimal.Decimal("1E+3")) == "1000"
    assert lw.encode_watermark(decimal.Decimal("0.10")) == "0.10"
    assert lw.decode_watermark("9007199254740993", pa.int64()) == 9007199254740993
    with pytest.raises(lw.WatermarkError):
        lw.decode_watermark("1; DROP TABLE x", pa.int64())
    assert lw.decode_watermark_for("1.5", _pg_numeric("n", -1)) == decimal.Decimal("1.5")


def test_lookback_and_max():
    wm = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert lw.lookback_lower_bound(wm, 90) == dt.datetime(2024, 1, 1, 11, 58, 30, tzinfo=UTC)
    assert lw.lookback_lower_bound(10, 3600) == 10  # durations do not apply to numbers
    assert lw.batch_max(pa.array(["9.5", "10.25", None]), numeric_text=True) == decimal.Decimal(
        "10.25"
    )
    assert lw.batch_max(pa.array([None], pa.int64())) is None
    assert lw.max_watermark(None, 3) == 3


# ---- parameters, secrets and connections ----------------------------------------------------


def _params(**kw):
    base = {
        "source_schema_name": "public",
        "source_table_name": "t",
        "destination_catalog": "c",
        "destination_schema_name": "s",
        "destination_table_name": "t",
        "db_type": "postgresql",
        "db_config_value": {
            "host": "h",
            "port": 5432,
            "database": "d",
            "user": "u",
            "password_secret": "pg-pass",
        },
        "db_kv_scope": "kv.main",
        "load_strategy": "full",
    }
    base.update(kw)
    return base


def test_secret_comes_from_the_environment_by_scope_and_key():
    spec = lp.parse_load_spec(_params())
    name = lp.secret_env_var("kv.main", "pg-pass")
    assert name == "DATALOADER_SECRET__KV_MAIN__PG_PASS"
    assert lp.resolve_password(spec, environ={name: "pw"}) == "pw"
    assert (
        lp.resolve_password(spec, environ={}, dbutils_get=lambda s, k: f"{s}/{k}")
        == "kv.main/pg-pass"
    )
    with pytest.raises(lp.LoadParamsError, match=name):
        lp.resolve_password(spec, environ={})


def test_params_are_validated():
    with pytest.raises(lp.LoadParamsError, match="password"):
        lp.parse_load_spec(_params(db_config_value={"password": "x"}))
    with pytest.raises(lp.LoadParamsError, match="incremental_column"):
        lp.parse_load_spec(_params(load_strategy="incremental"))
    with pytest.raises(lp.LoadParamsError, match="merge_keys"):
        lp.parse_load_spec(_params(load_strategy="merge"))
    with pytest.raises(lp.LoadParamsError, match="directory"):
        lp.parse_load_spec(_params(destination_table_name="..")).destination_path("/lake")


def test_connection_building_for_every_driver():
    config = {"host": "db.internal", "port": 1433, "database": "sales", "user": "loader"}
    assert ls.sqlserver_connect_kwargs(config, "pw") == {
        "server": "db.internal",
        "port": "1433",
        "user": "loader",
        "database": "sales",
        "charset": "UTF-8",
        "login_timeout": 30,
        "as_dict": False,
        "password": "pw",
    }
    ora = ls.oracle_connect_kwargs({**config, "port": 1521, "database": "ORCLPDB1"}, "pw")
    assert ora == {
        "user": "loader",
        "host": "db.internal",
        "port": 1521,
        "service_name": "ORCLPDB1",
        "password": "pw",
    }
    import oracledb  # the driver accepts exactly these parameters
    import pymssql

    params = oracledb.ConnectParams(**{k: v for k, v in ora.items() if k != "password"})
    assert params.service_name == "ORCLPDB1" and params.port == 1521
    loopback = ls.oracle_connect_kwargs({**config, "host": "127.0.0.1", "port": 1}, "pw")
    with pytest.raises(oracledb.OperationalError, match="DPY-6005"):  # refused, kwargs accepted
        oracledb.connect(**loopback, tcp_connect_timeout=1, retry_count=0)
    with pytest.raises(pymssql.OperationalError):  # refused by the loopback port, not by kwargs
        pymssql.connect(
            **{
                **ls.sqlserver_connect_kwargs({**config, "host": "127.0.0.1", "port": 1}, "pw"),
                "login_timeout": 1,
            }
        )
    conninfo = ls.postgres_conninfo(
        {"host": "/sock dir", "port": 5432, "database": "d", "user": "u", "sslmode": "require"},
        "p'w d",
    )
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(conninfo) == {
        "host": "/sock dir",
        "port": "5432",
        "dbname": "d",
        "user": "u",
        "sslmode": "require",
        "password": "p'w d",
        "options": ls.PG_SESSION_OPTIONS,  # search_path pinned (issue 17)
    }
    my = ls.mysql_connect_kwargs({"host": "127.0.0.1", "database": "test", "user": "root"}, None)
    assert my["port"] == 3306 and "password" not in my


# ---- where Pipes reads its context from -----------------------------------------------------


def test_pipes_io_is_chosen_from_the_bootstrap(tmp_path, monkeypatch):
    from dagster_pipes import encode_param

    ctx = tmp_path / "ctx.json"
    ctx.write_text("{}")
    env = {
        "DAGSTER_PIPES_CONTEXT": encode_param({"path": str(ctx)}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(tmp_path / "m")}),
    }
    for key, value in env.items():  # dagster_pipes' own loaders read the bootstrap from here
        monkeypatch.setenv(key, value)
    local = ScriptEnv()
    assert choose_pipes_io(local, argv=["x"])[3] == "local"

    cli = [
        "x",
        "--dagster-pipes-context",
        encode_param({"path": "/tmp/abc"}),
        "--dagster-pipes-messages",
        encode_param({"path": "/tmp/def"}),
    ]
    monkeypatch.setattr(sys, "argv", cli)
    assert choose_pipes_io(local, argv=cli)[3] == "dbfs (cli)"

    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", encode_param({"path": "/Volumes/c/s/v/tmp/x"}))
    assert choose_pipes_io(local, argv=["x"])[3] == "volumes (env)"

    stand_in = ScriptEnv.from_environ({"DATALOADER_DBFS_ROOT": str(tmp_path / "dbfs")})
    assert dbfs_local_path("dbfs:/tmp/x/context.json", stand_in.dbfs_root) == str(
        tmp_path / "dbfs/tmp/x/context.json"
    )
    (tmp_path / "dbfs/tmp/nc").mkdir(parents=True)
    (tmp_path / "dbfs/tmp/nc/context.json").write_text("{}")
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", encode_param({"path": "/tmp/nc/context.json"}))
    assert choose_pipes_io(stand_in, argv=["x"])[3] == "dbfs (env)"  # new-cluster stand-in
    assert choose_pipes_io(local, argv=["x"])[3] == "local"  # not under the real /dbfs
    on_cluster = ScriptEnv.from_environ({"DATABRICKS_RUNTIME_VERSION": "15.4"})
    assert choose_pipes_io(on_cluster, argv=["x"])[3] == "dbfs (env)"


# ---- the scripts' settings and the wire contract ----------------------------------------------


def test_script_env_reads_every_setting_once_from_the_given_environment(tmp_path):
    env = ScriptEnv.from_environ(
        {
            "DATALOADER_ENGINE": " Spark ",
            "DATABRICKS_RUNTIME_VERSION": "15.4",
            "DATALOADER_HOME": str(tmp_path / "home"),
            "DATALOADER_BATCH_BYTES": "65536",
            "DATALOADER_BATCH_ROWS": "100",
            "DATALOADER_PROGRESS_SECONDS": "0",
            "DATALOADER_VOLUMES_ROOT": str(tmp_path / "vol"),
            "DATALOADER_SECRET__KV__PG": "scope-password",
            "LAKEBASE_PASSWORD": "lake-password",
            "DATALOADER_AI_MODEL": "gpt-test",
            "OPENAI_API_KEY": "sk-openai-test-key",
            "HOME": "/root",
        }
    )
    assert (env.engine, env.on_databricks) == ("spark", True)
    assert env.lake_root == tmp_path / "home" / "lake"
    assert (env.batch_bytes, env.batch_rows, env.progress_seconds) == (65536, 100, 0.0)
    assert (env.dbfs_root, env.volumes_root) == ("/dbfs", str(tmp_path / "vol"))
    assert set(env.secrets) == {"scope-password", "lake-password", "sk-openai-test-key"}
    assert dict(env.source_secrets) == {"DATALOADER_SECRET__KV__PG": "scope-password"}
    assert dict(env.ai_env) == {
        "DATALOADER_AI_MODEL": "gpt-test",
        "OPENAI_API_KEY": "sk-openai-test-key",
    }
    assert "scope-password" not in repr(env) and "sk-openai" not in repr(env)

    lake = ScriptEnv.from_environ({"DATALOADER_LAKE_ROOT": "/x/lake", "DATALOADER_HOME": "/h"})
    assert lake.lake_root == Path("/x/lake") and lake.engine is None and not lake.on_databricks
    odd = ScriptEnv.from_environ({"DATALOADER_BATCH_ROWS": "many"})  # the retry script runs on
    assert odd.batch_rows == 50_000
    with pytest.raises(ValueError, match="DATALOADER_BATCH_ROWS must be a number"):
        odd.check()  # the load script's first step refuses it


def test_script_env_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("DATALOADER_SECRET__KV__PG", "from-the-process")
    assert "from-the-process" in ScriptEnv.from_environ().secrets


def test_no_script_module_but_script_env_reads_the_environment():
    scripts = Path(lp.__file__).parents[1]  # databricks_scripts/ (lp: load/params.py)
    readers = [
        p.name
        for p in sorted(scripts.rglob("*.py"))
        if p.name != "script_env.py"
        and ("os.environ" in p.read_text() or "os.getenv" in p.read_text())
    ]
    assert readers == []


def test_load_spec_has_every_field_of_the_wire_contract():
    assert set(contract.LOAD_PARAM_FIELDS) <= {f.name for f in dataclasses.fields(lp.LoadSpec)}
    spec = lp.parse_load_spec(_params(config_id=7, metadata_id=9))
    assert (spec.config_id, spec.metadata_id) == (7, 9)
    with pytest.raises(lp.LoadParamsError, match="db_type"):
        lp.parse_load_spec(_params(db_type="db2"))
    assert lp.parse_load_spec(_params(db_type=contract.DB_TYPES[-1])).db_type == "databricks"
