"""Deep verification (databricks_scripts/engines/arrow/deep_verify, dataloader__deep_verify_job): every key
and every row's values of the source against the destination, on real sources and Delta tables,
and through the job: drift is a failing ERROR check naming the first differing keys."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from deltalake import DeltaTable
from helpers import add_control_row, lakebase_for
from test_deletes_scd2 import Loads
from test_load_asset import claim_and_materialize
from test_loader_pipe import _mysql_or_skip, execute

from databricks_scripts.engines.arrow.deep_verify import deep_verify
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.sources import readers as ls


def _verify(loads: Loads, reader_class=ls.PostgresReader, **spec_overrides):
    spec = parse_load_spec({**loads.params, **spec_overrides})
    reader = reader_class(spec, None, batch_bytes=1 << 20, batch_rows=1000)
    try:
        return deep_verify(spec, reader, DeltaTable(str(loads.path)), segment_rows=700)
    finally:
        reader.close()


@pytest.mark.parametrize("detection", ["none", "hard"])
def test_deep_verification_names_changed_missing_and_extra_rows(source_db, lake_root, detection):
    execute(
        source_db,
        "CREATE TABLE dv (id bigint PRIMARY KEY, v text, amount numeric(12,2), ts timestamptz)",
    )
    execute(
        source_db,
        "INSERT INTO dv SELECT g, 'v' || g, g / 3.0, timestamptz '2024-01-01' + g * interval '1s'"
        " FROM generate_series(1, 5000) g",
    )
    loads = Loads(
        source_db,
        lake_root,
        "dv",
        load_strategy="merge",
        merge_keys=["id"],
        delete_detection=detection,
    )
    loads.run()
    clean = _verify(loads)
    assert clean.passed, clean.description
    assert clean.facts["ranges"] == 8 and clean.facts["source_rows"] == 5000

    # Behind the loader's back: a changed value, a lost row, a row the source never had.
    table = DeltaTable(str(loads.path))
    table.update(predicate="id = 1234", updates={"v": "'tampered'"})
    table.delete("id = 4321")
    execute(source_db, "DELETE FROM dv WHERE id = 77")  # gone at the source, still loaded
    drift = _verify(loads)

    assert not drift.passed
    assert (drift.facts["changed"], drift.facts["missing"]) == (1, 1)
    assert "id=1234 (changed)" in drift.description and "id=4321 (missing)" in drift.description
    # Without delete detection a key the source deleted legitimately stays in the destination.
    assert drift.facts["extra"] == (1 if detection == "hard" else 0)
    assert ("id=77 (extra)" in drift.description) == (detection == "hard")


def test_deep_verification_on_mariadb(lake_root):
    conn = _mysql_or_skip()
    table = "dl_deep_verify"
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        cur.execute(f"CREATE TABLE `{table}` (id int PRIMARY KEY, v varchar(20), d datetime(6))")
        cur.execute(
            f"INSERT INTO `{table}` SELECT seq, CONCAT('v', seq), "
            "TIMESTAMP('2024-01-01') + INTERVAL seq SECOND FROM seq_1_to_3000"
        )
    try:
        loads = Loads(
            "host=x port=1 dbname=x user=x",
            lake_root,
            table,
            db_type="mysql",
            source_schema_name="test",
            db_config_value={"host": "127.0.0.1", "port": 3306, "database": "test", "user": "root"},
            load_strategy="merge",
            merge_keys=["id"],
        )
        loads.run(source_class=ls.MySQLReader)
        assert _verify(loads, ls.MySQLReader).passed
        with conn.cursor() as cur:
            cur.execute(f"UPDATE `{table}` SET v = 'changed' WHERE id = 2999")
        drift = _verify(loads, ls.MySQLReader)
        assert not drift.passed and "id=2999 (changed)" in drift.description
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        conn.close()


def test_a_table_without_an_integer_key_is_refused_by_name(source_db, lake_root):
    execute(source_db, "CREATE TABLE dvt (code text PRIMARY KEY, v int)")
    execute(source_db, "INSERT INTO dvt VALUES ('a', 1)")
    loads = Loads(source_db, lake_root, "dvt", load_strategy="merge", merge_keys=["code"])
    loads.run()
    with pytest.raises(ValueError, match="'code' is string, not an integer"):
        _verify(loads)


def test_the_deep_verify_job_reports_drift_as_a_failing_error_check(
    control_db, source_db, source, lake_root, db, instance, monkeypatch
):
    from test_load_asset import lakebase_env

    from dagsters.assets.deep_verify import DEEP_CHECK, DEEP_VERIFY_JOB
    from dagsters.definitions import build_definitions
    from dagsters.settings import load_settings

    add_control_row(
        db, source_db, "pg.orders", "orders", load_strategy="merge", merge_keys=["order_id"]
    )
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.orders")
    assert result.success
    lakebase_env(monkeypatch, control_db)
    monkeypatch.setenv("DATALOADER_TABLE_ASSETS_MAX", "10")
    monkeypatch.setenv("DATALOADER_LAKE_ROOT", str(lake_root))
    settings = load_settings(dict(os.environ))
    defs = build_definitions(settings)
    job = defs.resolve_job_def(DEEP_VERIFY_JOB)

    def run() -> dg.AssetCheckEvaluation:
        outcome = job.execute_in_process(
            instance=instance,
            resources={"lakebase": lakebase_for(control_db)},
            raise_on_error=False,
        )
        [evaluation] = [
            e.event_specific_data
            for e in outcome.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert evaluation.check_name == DEEP_CHECK
        return evaluation

    clean = run()
    assert clean.passed, clean.description
    source.execute("UPDATE public.orders SET amount = 0 WHERE order_id = 7")
    drift = run()
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert "order_id=7 (changed)" in drift.description
    row = db.execute("SELECT last_status FROM table_control").fetchone()
    assert row["last_status"] == "Succeeded"  # a verification is not a load: no status change


def test_rows_are_told_apart_by_every_merge_key(source_db, lake_root):
    """A two-column key: ranges follow the first key, rows are matched on both (a check that
    matched on the first key alone called thousands of correct rows 'changed')."""
    execute(
        source_db,
        "CREATE TABLE dvk (order_id int, line_no int, qty int, PRIMARY KEY (order_id, line_no))",
    )
    execute(source_db, "INSERT INTO dvk SELECT g / 10, g % 10, g FROM generate_series(0, 2999) g")
    loads = Loads(
        source_db,
        lake_root,
        "dvk",
        load_strategy="merge",
        merge_keys=["order_id", "line_no"],
        delete_detection="hard",
    )
    loads.run()
    clean = _verify(loads)
    assert clean.passed, clean.description
    DeltaTable(str(loads.path)).update(
        predicate="order_id = 42 AND line_no = 7", updates={"qty": "-1"}
    )
    drift = _verify(loads)
    assert (drift.facts["changed"], drift.facts["missing"], drift.facts["extra"]) == (1, 0, 0)
    assert "order_id=42, line_no=7 (changed)" in drift.description
