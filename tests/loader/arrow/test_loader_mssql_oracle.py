"""SQL Server and Oracle sources: exact Arrow types from driver metadata, exact batches, numeric watermarks."""

import datetime as dt
import decimal
import uuid

import oracledb
import pyarrow as pa
import pytest

from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.load import params as lp
from databricks_scripts.load import types as lt
from databricks_scripts.load import watermark as lw
from databricks_scripts.sources import readers as ls
from databricks_scripts.sources import types_mssql_oracle as lmo

D = decimal.Decimal
UTC = dt.UTC
NUMERIC_TEXT = lt.NUMERIC_TEXT_METADATA


# ---- Oracle: cursor.description -> Arrow -------------------------------------------------------


def _ora(name, type_code, precision=None, scale=None, size=None):
    # (name, type_code, display_size, internal_size, precision, scale, null_ok), as oracledb gives
    return (name, type_code, size, size, precision, scale, True)


@pytest.mark.parametrize(
    ("desc", "field"),
    [
        (_ora("ID", oracledb.DB_TYPE_NUMBER, 10, 0), pa.field("ID", pa.int64())),
        (_ora("BIG", oracledb.DB_TYPE_NUMBER, 18, 0), pa.field("BIG", pa.int64())),
        (_ora("HUGE", oracledb.DB_TYPE_NUMBER, 19, 0), pa.field("HUGE", pa.decimal128(19, 0))),
        (
            _ora("INTEGER_COL", oracledb.DB_TYPE_NUMBER, 38, 0),
            pa.field("INTEGER_COL", pa.decimal128(38, 0)),
        ),
        (_ora("AMT", oracledb.DB_TYPE_NUMBER, 12, 2), pa.field("AMT", pa.decimal128(12, 2))),
        (
            _ora("HUNDREDS", oracledb.DB_TYPE_NUMBER, 5, -2),
            pa.field("HUNDREDS", pa.decimal128(7, 0)),
        ),
        (_ora("TINY", oracledb.DB_TYPE_NUMBER, 2, 5), pa.field("TINY", pa.decimal128(5, 5))),
        (
            _ora("N", oracledb.DB_TYPE_NUMBER, 0, -127),
            pa.field("N", pa.string(), metadata=NUMERIC_TEXT),
        ),
        (
            _ora("F", oracledb.DB_TYPE_NUMBER, 126, -127),
            pa.field("F", pa.string(), metadata=NUMERIC_TEXT),
        ),
        (_ora("BF", oracledb.DB_TYPE_BINARY_FLOAT), pa.field("BF", pa.float32())),
        (_ora("BD", oracledb.DB_TYPE_BINARY_DOUBLE), pa.field("BD", pa.float64())),
        (
            _ora("D", oracledb.DB_TYPE_DATE),
            pa.field("D", pa.timestamp("us"), metadata=lmo.ORACLE_DATE_METADATA),
        ),
        (_ora("TS", oracledb.DB_TYPE_TIMESTAMP, 0, 6), pa.field("TS", pa.timestamp("us"))),
        (
            _ora("TZ", oracledb.DB_TYPE_TIMESTAMP_TZ, 0, 6),
            pa.field("TZ", pa.timestamp("us", "UTC")),
        ),
        (
            _ora("LTZ", oracledb.DB_TYPE_TIMESTAMP_LTZ, 0, 9),
            pa.field("LTZ", pa.timestamp("us", "UTC")),
        ),
        (_ora("V", oracledb.DB_TYPE_VARCHAR, size=100), pa.field("V", pa.string())),
        (_ora("NV", oracledb.DB_TYPE_NVARCHAR, size=50), pa.field("NV", pa.string())),
        (_ora("C", oracledb.DB_TYPE_CLOB), pa.field("C", pa.string())),
        (_ora("R", oracledb.DB_TYPE_RAW, size=16), pa.field("R", pa.binary())),
        (_ora("B", oracledb.DB_TYPE_BLOB), pa.field("B", pa.binary())),
    ],
)
def test_oracle_description_maps_to_exact_arrow_types(desc, field):
    got = lmo.oracle_field(desc)
    assert got.equals(field, check_metadata=True), (got, field)


def test_oracle_unsupported_type_is_refused_naming_the_column():
    with pytest.raises(lmo.UnsupportedColumnTypeError, match="'GEOM'.*DB_TYPE_OBJECT"):
        lmo.oracle_field(_ora("GEOM", oracledb.DB_TYPE_OBJECT))


def test_oracle_select_reads_tz_columns_in_utc_and_binds_the_watermark():
    schema = pa.schema(
        [
            lmo.oracle_field(_ora("ID", oracledb.DB_TYPE_NUMBER, 10, 0)),
            lmo.oracle_field(_ora("UPD", oracledb.DB_TYPE_TIMESTAMP_TZ, 0, 9)),
        ]
    )
    text, params = ls.oracle_read('"S"."T"', schema, None, None)
    assert text == 'SELECT "ID", SYS_EXTRACT_UTC("UPD") AS "UPD" FROM "S"."T"' and params == ()
    text, params = ls.oracle_read('"S"."T"', schema, "ID", 9)
    assert text.endswith('WHERE "ID" > :1') and params == (9,)
    bound = dt.datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    text, params = ls.oracle_read('"S"."T"', schema, "UPD", bound)
    assert text.endswith(
        "WHERE \"UPD\" >= FROM_TZ(TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF6'), 'UTC')"
        " + INTERVAL '0.000001' SECOND"
    )
    assert params == ("2024-01-01 10:00:00.000005",)
    dated = pa.schema([lmo.oracle_field(_ora("D", oracledb.DB_TYPE_DATE))])
    text, params = ls.oracle_read("T", dated, "D", dt.datetime(2024, 1, 1, 10, 0, 5, 500000))
    assert text == 'SELECT "D" FROM T WHERE "D" > TO_DATE(:1, \'YYYY-MM-DD HH24:MI:SS\')'
    assert params == ("2024-01-01 10:00:05",)


# ---- SQL Server: sys.dm_exec_describe_first_result_set -> Arrow --------------------------------


@pytest.mark.parametrize(
    ("row", "t"),
    [
        (("t1", "tinyint", 3, 0, True), pa.int16()),
        (("s", "smallint", 5, 0, True), pa.int16()),
        (("i", "int", 10, 0, False), pa.int32()),
        (("b", "bigint", 19, 0, True), pa.int64()),
        (("flag", "bit", 1, 0, True), pa.bool_()),
        (("amt", "decimal(12,2)", 12, 2, True), pa.decimal128(12, 2)),
        (("n", "numeric(38,10)", 38, 10, True), pa.decimal128(38, 10)),
        (("m", "money", 19, 4, True), pa.decimal128(19, 4)),
        (("sm", "smallmoney", 10, 4, True), pa.decimal128(10, 4)),
        (("f", "float", 53, 0, True), pa.float64()),
        (("r", "real", 24, 0, True), pa.float32()),
        (("d", "date", 10, 0, True), pa.date32()),
        (("dt", "datetime", 23, 3, True), pa.timestamp("us")),
        (("dt2", "datetime2(7)", 27, 7, True), pa.timestamp("us")),
        (("sdt", "smalldatetime", 16, 0, True), pa.timestamp("us")),
        (("dto", "datetimeoffset(7)", 34, 7, True), pa.timestamp("us", "UTC")),
        (("v", "varchar(50)", 0, 0, True), pa.string()),
        (("nv", "nvarchar(max)", 0, 0, True), pa.string()),
        (("c", "nchar(10)", 0, 0, True), pa.string()),
        (("x", "xml", 0, 0, True), pa.string()),
        (("g", "uniqueidentifier", 0, 0, True), pa.string()),
        (("tx", "ntext", 0, 0, True), pa.string()),
        (("vb", "varbinary(max)", 0, 0, True), pa.binary()),
        (("bn", "binary(16)", 0, 0, True), pa.binary()),
        (("img", "image", 0, 0, True), pa.binary()),
    ],
)
def test_sqlserver_describe_rows_map_to_exact_arrow_types(row, t):
    field = lmo.sqlserver_field(row)
    assert field.name == row[0] and field.type.equals(t)


def test_sqlserver_describe_result_errors_and_unsupported_types_are_refused():
    rows = [
        ("id", "int", 10, 0, False, None, None),
        ("amt", "decimal(9,2)", 9, 2, True, None, None),
    ]
    schema = ls.sqlserver_schema_from_description(rows)
    assert schema == pa.schema([("id", pa.int32()), ("amt", pa.decimal128(9, 2))])
    err = [(None, None, None, None, None, 208, "Invalid object name 'dbo.nope'.")]
    with pytest.raises(ValueError, match="Invalid object name"):
        ls.sqlserver_schema_from_description(err)
    with pytest.raises(lmo.UnsupportedColumnTypeError, match="'shape'.*geography"):
        lmo.sqlserver_field(("shape", "geography", 0, 0, True))
    import pymssql._mssql  # the statement pymssql sends: the probe text as one N'' literal

    sent = pymssql._mssql.substitute_params(
        ls.sqlserver_describe_query(), ("SELECT TOP 0 * FROM [d].[dbo].[it's]",)
    )
    assert b"sys.dm_exec_describe_first_result_set(N'SELECT TOP 0 * FROM [d].[dbo].[it''s]'" in sent


def test_sqlserver_timestamp_cursor_reads_above_the_truncated_watermark():
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("upd", pa.timestamp("us")),
            ("dto", pa.timestamp("us", "UTC")),
            ("d", pa.date32()),
        ]
    )
    text, params = ls.sqlserver_read(
        "[dbo].[t]", schema, "upd", dt.datetime(2024, 1, 1, 10, 0, 0, 123456)
    )
    assert text == (
        "SELECT * FROM [dbo].[t] WHERE [upd] >= DATEADD(microsecond, 1, CAST(%s AS datetime2(7)))"
    )
    assert params == ("2024-01-01 10:00:00.123456",)
    _, params = ls.sqlserver_read("[t]", schema, "dto", dt.datetime(2024, 1, 1, 10, tzinfo=UTC))
    assert params == ("2024-01-01 10:00:00.000000 +00:00",)
    assert ls.sqlserver_read("[t]", schema, "id", 9) == ("SELECT * FROM [t] WHERE [id] > %s", (9,))
    assert ls.sqlserver_read("[t]", schema, "d", dt.date(2024, 2, 29))[1] == ("2024-02-29",)
    assert ls.sqlserver_read("[t]", schema, "id", None) == ("SELECT * FROM [t]", ())
    # pymssql replaces each %s itself (no %-formatting): a % in a name reaches the server as is
    import pymssql._mssql

    text, params = ls.sqlserver_read("[5%]", schema, "id", 1)
    assert pymssql._mssql.substitute_params(text, params) == b"SELECT * FROM [5%] WHERE [id] > 1"


# ---- driver-shaped rows -> exact batches ----------------------------------------------------


def test_sqlserver_shaped_rows_convert_exactly():
    schema = ls.sqlserver_schema_from_description(
        [
            ("id", "bigint", 19, 0, False, None, None),
            ("flag", "bit", 1, 0, True, None, None),
            ("amt", "decimal(12,2)", 12, 2, True, None, None),
            ("cash", "money", 19, 4, True, None, None),
            ("upd", "datetime2(7)", 27, 7, True, None, None),
            ("dto", "datetimeoffset(7)", 34, 7, True, None, None),
            ("d", "date", 10, 0, True, None, None),
            ("g", "uniqueidentifier", 0, 0, True, None, None),
            ("raw", "varbinary(max)", 0, 0, True, None, None),
            ("name", "nvarchar(20)", 0, 0, True, None, None),
        ]
    )
    plus2 = dt.timezone(dt.timedelta(hours=2))
    gid = uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")
    rows = [  # what pymssql returns
        (
            9,
            True,
            D("1234567890.12"),
            D("922337203685477.5807"),
            dt.datetime(2024, 1, 1, 10, 0, 0, 123456),
            dt.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=plus2),
            dt.date(2024, 2, 29),
            gid,
            b"\x00\xff",
            "Zoë ✓",
        ),
        (10, False, None, D("-1.0000"), None, None, None, None, None, None),
    ]
    batch = lmo.rows_to_exact_batch(rows, schema)
    assert batch.schema == schema
    got = batch.to_pylist()
    assert got[0] == {
        "id": 9,
        "flag": True,
        "amt": D("1234567890.12"),
        "cash": D("922337203685477.5807"),
        "upd": dt.datetime(2024, 1, 1, 10, 0, 0, 123456),
        "dto": dt.datetime(2024, 1, 1, 10, 0, 0, 1, tzinfo=UTC),
        "d": dt.date(2024, 2, 29),
        "g": str(gid),
        "raw": b"\x00\xff",
        "name": "Zoë ✓",
    }
    assert got[1]["amt"] is None and got[1]["cash"] == D("-1") and got[1]["flag"] is False


def test_oracle_shaped_rows_convert_exactly_and_unconstrained_number_stays_exact_text():
    schema = pa.schema(
        [
            lmo.oracle_field(_ora("ID", oracledb.DB_TYPE_NUMBER, 10, 0)),
            lmo.oracle_field(_ora("AMT", oracledb.DB_TYPE_NUMBER, 12, 2)),
            lmo.oracle_field(_ora("N", oracledb.DB_TYPE_NUMBER, 0, -127)),
            lmo.oracle_field(_ora("D", oracledb.DB_TYPE_DATE)),
            lmo.oracle_field(_ora("TZ", oracledb.DB_TYPE_TIMESTAMP_TZ, 0, 6)),
            lmo.oracle_field(_ora("BD", oracledb.DB_TYPE_BINARY_DOUBLE)),
            lmo.oracle_field(_ora("R", oracledb.DB_TYPE_RAW, size=4)),
        ]
    )
    rows = [  # NUMBER as Decimal (outputtypehandler); TZ read through SYS_EXTRACT_UTC: naive UTC
        (
            D("9"),
            D("0.10"),
            D("1E+40"),
            dt.datetime(2024, 1, 1, 23, 59, 59),
            dt.datetime(2024, 1, 1, 10, 0, 0, 999999),
            0.1,
            b"\x01",
        ),
        (
            D("10"),
            D("-5"),
            D("0.000000000000000000000000000000000000000001"),
            None,
            None,
            None,
            None,
        ),
    ]
    batch = lmo.rows_to_exact_batch(rows, schema)
    got = batch.to_pylist()
    assert [r["ID"] for r in got] == [9, 10] and batch.schema.field("ID").type == pa.int64()
    assert got[0]["AMT"] == D("0.10") and got[1]["AMT"] == D("-5.00")
    assert got[0]["N"] == "1" + "0" * 40  # never exponent form
    assert got[1]["N"] == "0." + "0" * 41 + "1"
    assert got[0]["TZ"] == dt.datetime(2024, 1, 1, 10, 0, 0, 999999, tzinfo=UTC)
    assert got[0]["BD"] == 0.1 and got[0]["R"] == b"\x01"


@pytest.mark.parametrize(
    ("t", "value"),
    [
        (pa.decimal128(5, 2), D("1.234")),  # more scale than the column: would round
        (pa.decimal128(5, 2), D("1234.5")),  # too many digits
        (pa.int64(), D("1.5")),  # fraction into an integer
        (pa.int16(), 40000),  # out of range
        (pa.int64(), True),  # a bool is not a number here
        (pa.timestamp("us"), dt.datetime(2024, 1, 1, tzinfo=UTC)),  # zone into a zone-less column
        (pa.date32(), dt.datetime(2024, 1, 1, 10)),  # time of day into a date
        (pa.decimal128(38, 0), D("NaN")),
    ],
)
def test_a_value_that_does_not_fit_fails_naming_the_column(t, value):
    with pytest.raises(ValueError, match="column 'c'"):
        lmo.column_from_values([None, value], pa.field("c", t))


# ---- watermarks ------------------------------------------------------------------------------


def test_integer_and_number_watermarks_compare_numerically_not_as_text():
    ids = lmo.column_from_values(
        [D("9"), D("10"), D("2")], lmo.oracle_field(_ora("ID", oracledb.DB_TYPE_NUMBER, 10, 0))
    )
    assert lw.encode_watermark(lw.batch_max(ids)) == "10"
    assert lw.decode_watermark_for("9", pa.field("ID", pa.int64())) < lw.decode_watermark_for(
        "10", pa.field("ID", pa.int64())
    )
    n = lmo.oracle_field(_ora("N", oracledb.DB_TYPE_NUMBER, 0, -127))
    assert lt.is_numeric_text(n)
    col = lmo.column_from_values([D("9"), D("10"), D("9.5")], n)
    assert lw.encode_watermark(lw.batch_max(col, numeric_text=True)) == "10"
    assert lw.decode_watermark_for("10", n) == D("10")
    with pytest.raises(lw.WatermarkError):
        lw.decode_watermark_for("1; DROP TABLE x", n)
    tz = lmo.column_from_values(
        [dt.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
        lmo.sqlserver_field(("dto", "datetimeoffset(7)", 34, 7, True)),
    )
    assert lw.encode_watermark(lw.batch_max(tz)) == "2024-01-01T10:00:00.000001+00:00"


# ---- end to end through the Arrow engine with a driver-shaped stand-in reader ------------------


class _SqlServerShapedReader:
    """Serves pymssql-shaped rows for a described table, filtered like ``sqlserver_read``."""

    def __init__(self, describe_rows, rows):
        self._schema = ls.sqlserver_schema_from_description(describe_rows)
        self.rows = rows

    def schema(self):
        return self._schema

    def batches(self, lower_bound):
        rows = self.rows
        if lower_bound is not None:
            rows = [r for r in rows if r[0] is not None and r[0] > lower_bound]
        batches = [
            lmo.rows_to_exact_batch(rows[i : i + 2], self._schema) for i in range(0, len(rows), 2)
        ]
        return self._schema, iter(batches)


def test_incremental_integer_cursor_does_not_reload_rows_after_9_and_10(tmp_path):
    describe = [
        ("id", "int", 10, 0, False, None, None),
        ("amt", "decimal(12,2)", 12, 2, True, None, None),
    ]
    reader = _SqlServerShapedReader(describe, [(i, D(f"{i}.50")) for i in range(1, 10)])
    params = {
        "source_catalog": "sales",
        "source_schema_name": "dbo",
        "source_table_name": "orders",
        "destination_catalog": "c",
        "destination_schema_name": "s",
        "destination_table_name": "orders",
        "db_type": "sqlserver",
        "db_config_value": {"host": "h", "port": 1433, "database": "sales", "user": "u"},
        "db_kv_scope": "kv",
        "load_strategy": "incremental",
        "incremental_column": "id",
    }
    dest = tmp_path / "orders"

    def load(watermark):
        spec = lp.parse_load_spec({**params, "incremental_value": watermark})
        return la.run_arrow_load(spec, reader, dest, log=lambda _m: None)

    first = load(None)
    assert first.watermark_after == "9" and first.rows_written == 9
    reader.rows.append((10, D("10.50")))
    second = load("9")
    assert second.watermark_after == "10" and second.rows_written == 1
    third = load("10")  # '9' > '10' as text would re-read and append rows here
    assert third.watermark_after == "10" and third.rows_written == 0

    from deltalake import DeltaTable

    table = DeltaTable(str(dest)).to_pyarrow_table()
    assert table.schema.field("id").type == pa.int32()
    assert table.schema.field("amt").type == pa.decimal128(12, 2)
    assert sorted(table.column("id").to_pylist()) == list(range(1, 11))
