"""Column control and the schema contract, part by part (sql/017): the rules the end-to-end tests in
test_column_control.py rely on, plus the Spark engine's hash and contract on a local SparkSession."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import pyarrow as pa
import pytest

from databricks_scripts.engines.spark import columns as lsc
from databricks_scripts.load import columns as lc
from databricks_scripts.load.params import LoadParamsError, parse_load_spec
from databricks_scripts.load.sql import MYSQL, select_source
from databricks_scripts.load.types import SchemaContractError, plan_schema

KEY = b"0123456789abcdef-key"

DEST = pa.schema([("id", pa.int64()), ("name", pa.string()), ("n", pa.int64())])


def _params(**kw):
    return {
        "source_schema_name": "s",
        "source_table_name": "t",
        "destination_catalog": "c",
        "destination_schema_name": "d",
        "destination_table_name": "t",
        "db_type": "postgresql",
        "db_config_value": {},
        "load_strategy": "merge",
        "merge_keys": ["id"],
        **kw,
    }


def test_freeze_names_every_added_dropped_and_retyped_column():
    source = pa.schema([("id", pa.int64()), ("n", pa.int32()), ("extra", pa.string())])
    with pytest.raises(SchemaContractError) as err:
        plan_schema(source, DEST, "freeze")
    text = str(err.value)
    assert "added column 'extra'" in text and "dropped column 'name'" in text
    assert "retyped column 'n' (int64 -> int32)" in text and "Nothing was written" in text
    assert plan_schema(DEST, DEST, "freeze").added_columns == ()


def test_evolve_widens_and_keeps_dropped_columns_and_discard_new_leaves_new_ones_out():
    source = pa.schema([("id", pa.int64()), ("n", pa.int32()), ("extra", pa.string())])
    plan = plan_schema(source, DEST, "evolve")
    assert plan.added_columns == ("extra",) and plan.dropped_columns == ("name",)
    assert plan.write_schema.field("n").type == pa.int64()  # int -> bigint kept
    plan = plan_schema(source, DEST, "discard_new")
    assert plan.added_columns == () and "extra" not in plan.write_schema.names


def test_params_refuse_keys_and_cursor_in_the_lists_and_unknown_contracts():
    with pytest.raises(LoadParamsError, match="'ID' is a merge key"):
        parse_load_spec(_params(columns_hash=["ID"]))
    with pytest.raises(LoadParamsError, match="incremental_column"):
        parse_load_spec(_params(incremental_column="ts", columns_exclude=["ts"]))
    with pytest.raises(LoadParamsError, match="schema_change 'loose'"):
        parse_load_spec(_params(schema_change="loose"))
    spec = parse_load_spec(_params(columns_exclude=["ssn"], columns_hash=["email"]))
    assert spec.columns_exclude == ("ssn",) and spec.schema_change == "evolve"


def test_excluded_columns_are_left_out_of_the_select_and_a_typo_is_refused():
    probed = pa.schema([("id", pa.int32()), ("SSN", pa.string()), ("name", pa.string())])
    kept = lc.kept_schema(probed, ["ssn"])
    assert kept.names == ["id", "name"]
    listed = ", ".join(MYSQL.quote(n) for n in kept.names)
    assert select_source(MYSQL, "`s`.`t`", select_list=listed) == "SELECT `id`, `name` FROM `s`.`t`"
    with pytest.raises(lc.ColumnControlError, match="'snn', which the source table does not"):
        lc.kept_schema(probed, ["snn"])


def test_hash_is_hmac_sha256_of_the_values_text_and_null_stays_null():
    batch = pa.record_batch(
        [pa.array([1, 2, 3]), pa.array(["a@x", None, "a@x"]), pa.array([10, 20, None])],
        names=["id", "email", "n"],
    )
    out = lc.hash_batch(batch, ["email", "n"], KEY)
    expected = hmac.new(KEY, b"a@x", hashlib.sha256).hexdigest()
    assert out.column("email").to_pylist() == [expected, None, expected]
    assert out.column("n").to_pylist()[0] == hmac.new(KEY, b"10", hashlib.sha256).hexdigest()
    assert out.column("n").to_pylist()[2] is None and out.column("id") == batch.column("id")


def test_canonical_text_is_plain_and_zone_free():
    import datetime as dt
    from decimal import Decimal

    small = pa.array([Decimal("0.0000001"), Decimal("-12.5000000"), None], pa.decimal128(10, 7))
    assert lc.canonical_text(small) == ["0.0000001", "-12.5000000", None]  # never 1E-7
    when = dt.datetime(1969, 12, 31, 23, 59, 59, 5)
    aware = pa.array([when.replace(tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC"))
    naive = pa.array([when], pa.timestamp("us"))
    assert lc.canonical_text(aware) == lc.canonical_text(naive) == ["1969-12-31T23:59:59.000005"]
    assert lc.canonical_text(pa.array([dt.date(999, 1, 2)])) == ["0999-01-02"]


def test_a_changed_list_or_key_is_a_rebuild_and_a_table_without_records_is_none():
    spec = parse_load_spec(_params(columns_hash=["email"]))
    spec_k = spec.__class__(**{**spec.__dict__, "hash_key_id": lc.key_id(KEY)})
    same = [{lc.KEY_COLUMN_CONTROL: lc.column_control_text(spec_k)}]
    assert lc.changed_column_control(spec_k, lc.recorded_column_control(same)) is None
    other = spec_k.__class__(**{**spec_k.__dict__, "hash_key_id": lc.key_id(b"another-key-0000")})
    assert "hash key changed" in lc.changed_column_control(other, lc.recorded_column_control(same))
    legacy = lc.recorded_column_control([{"dataloader.metadata_id": "4"}])
    assert "columns_hash was [none], now [email]" in lc.changed_column_control(spec_k, legacy)
    plain = parse_load_spec(_params())
    assert lc.changed_column_control(plain, legacy) is None
    # A table hashed before the canonical text (its record has no "text") is rebuilt once.
    before = json.loads(lc.column_control_text(spec_k))
    del before["text"]
    old = lc.recorded_column_control([{lc.KEY_COLUMN_CONTROL: json.dumps(before)}])
    assert "text hashed for non-text values changed" in lc.changed_column_control(spec_k, old)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("java is not installed: the local SparkSession needs a JVM")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("dataloader-column-control")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("wh")))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_hash_equals_the_arrow_hash_and_excluded_columns_are_dropped(spark):
    df = spark.createDataFrame(
        [(1, "a@x", "111", bytearray(b"\x00\x01")), (2, None, "222", None)],
        "id int, email string, ssn string, raw binary",
    )
    spec = parse_load_spec(_params(columns_exclude=["SSN"], columns_hash=["email", "raw"]))
    out = lsc.controlled_frame(df, spec, KEY).orderBy("id").collect()
    assert out[0].asDict().keys() == {"id", "email", "raw"}
    arrow = lc.hash_batch(
        pa.record_batch([pa.array(["a@x", None]), pa.array([b"\x00\x01", None])], ["email", "raw"]),
        ["email", "raw"],
        KEY,
    )
    assert [r["email"] for r in out] == arrow.column("email").to_pylist()
    assert [r["raw"] for r in out] == arrow.column("raw").to_pylist()
    # a key longer than SHA-256's block is hashed first, as HMAC says
    long_key = b"k" * 100
    [row] = lsc.controlled_frame(df.limit(1), spec, long_key).collect()
    assert row["email"] == hmac.new(long_key, b"a@x", hashlib.sha256).hexdigest()


def test_spark_contract_freezes_discards_and_notes_dropped_columns():
    target = [("id", "bigint"), ("name", "string")]
    source = [("id", "bigint"), ("extra", "string")]
    added = [("extra", "string")]
    frozen = parse_load_spec(_params(schema_change="freeze"))
    with pytest.raises(SchemaContractError, match="added column 'extra'.*dropped column 'name'"):
        lsc.contract_changes(frozen, source, target, added, [])
    discard = parse_load_spec(_params(schema_change="discard_new"))
    kept, notes = lsc.contract_changes(discard, source, target, list(added), [])
    assert kept == [] and "not loaded" in notes[0] and "no longer has column(s) name" in notes[1]


class _History:
    """DESCRIBE HISTORY rows as a SparkSession would return them (newest first)."""

    def __init__(self, *user_metadata):
        from types import SimpleNamespace

        self.rows = [SimpleNamespace(asDict=lambda m=m: {"userMetadata": m}) for m in user_metadata]

    def sql(self, _statement):
        from types import SimpleNamespace

        return SimpleNamespace(collect=lambda: self.rows)


def test_spark_rebuilds_when_the_last_commit_recorded_other_lists():
    spec = parse_load_spec(_params(columns_exclude=["ssn"]))
    same = json.dumps({lc.KEY_COLUMN_CONTROL: lc.column_control_text(spec)})
    assert lsc.rebuild_if_changed(_History(same), spec, "t", True, print) == (spec, "")
    legacy = json.dumps({"dataloader.metadata_id": "3"})
    rebuilt, note = lsc.rebuild_if_changed(_History(None, legacy), spec, "t", True, print)
    assert (
        rebuilt.force_full_reload
        and rebuilt.rebuild_reason == "columns_exclude or columns_hash changed"
    )
    assert "columns_exclude was [none], now [ssn]" in note
    assert lsc.rebuild_if_changed(_History(legacy), spec, "t", False, print) == (spec, "")


def test_spark_comment_statements_run_on_spark_and_read_back(spark):
    """The statements the Spark engine gives a created table (Sail refuses them: see
    test_column_control_sail.py), executed on a local SparkSession (a parquet table)."""
    from databricks_scripts.engines.spark.comments import parse_described, write_comments

    spark.sql("CREATE TABLE commented USING parquet AS SELECT 1 AS id, 'a' AS name").collect()
    comments = ("It's \\ people", {"name": "Given 'name'", "gone": "not in the table"})
    logged: list[str] = []
    write_comments(spark, "`commented`", comments, ["id", "name"], logged.append)
    rows = [r.asDict() for r in spark.sql("DESCRIBE TABLE EXTENDED `commented`").collect()]
    assert parse_described(rows) == ("It's \\ people", {"name": "Given 'name'"}), logged
    write_comments(spark, "`no_such_table`", comments, ["name"], logged.append)
    assert logged and "source comment not written" in logged[-1]  # logged, the load goes on
