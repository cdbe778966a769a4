"""Loader fast paths are exact: NUMERIC(p<=18) read as scaled int8, lazy look-back window read."""

import collections
import datetime as dt
import decimal

import psycopg
import pyarrow as pa
import pytest
from helpers import pg_config

from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.load import params as lp
from databricks_scripts.load import types as lt
from databricks_scripts.sources import readers as ls

UTC = dt.UTC


def _pg_numeric(name: str, precision: int | None, scale: int = 0) -> pa.Field:
    typmod = -1 if precision is None else ((precision << 16) | scale) + 4
    meta = {b"POSTGRESQL:type": b"numeric", b"POSTGRESQL:typmod": str(typmod).encode()}
    return pa.field(name, pa.string(), metadata=meta)


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [(12, 2, (12, 2)), (18, 0, (18, 0)), (18, 18, (18, 18)), (19, 2, None), (38, 10, None)],
)
def test_only_numerics_that_fit_int8_take_the_scaled_path(precision, scale, expected):
    assert lt.pg_numeric_as_scaled_int8(_pg_numeric("n", precision, scale)) == expected


def test_unconstrained_numeric_and_other_types_keep_their_path():
    assert lt.pg_numeric_as_scaled_int8(_pg_numeric("n", None)) is None
    assert lt.pg_numeric_as_scaled_int8(pa.field("n", pa.int64())) is None


def test_decimal_from_unscaled_keeps_sign_nulls_and_offset():
    arr = pa.array([7, 12345, -1, None, -999_999_999_999_999_999], pa.int64()).slice(1)
    out = lt.decimal_from_unscaled(arr, 18, 2)
    assert out.type == pa.decimal128(18, 2)
    assert out.to_pylist() == [
        decimal.Decimal("123.45"),
        decimal.Decimal("-0.01"),
        None,
        decimal.Decimal("-9999999999999999.99"),
    ]


NUMERIC_DDL = (
    "CREATE TABLE nums (id int, a numeric(12,2), b numeric(18,0), c numeric(18,18),"
    " d numeric(5,5), big numeric(38,10), free numeric, ts timestamptz)"
)
NUMERIC_ROWS = (
    "INSERT INTO nums VALUES"
    " (1, 9999999999.99, 999999999999999999, 0.999999999999999999, -0.99999,"
    "  1234567890123456789012345678.0123456789, 3.14, '2024-01-01 00:00:00+00'),"
    " (2, -9999999999.99, -999999999999999999, -0.000000000000000001, 0.00001,"
    "  -1, 0, '2024-01-02 00:00:00.000001+00'),"
    " (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL),"
    " (4, 0, 0, 0, 0, 0, 1e-30, '2024-01-03 00:00:00+00')"
)


def _spec(source_db: str, table: str, **overrides) -> lp.LoadSpec:
    params = {
        "control_key": f"test.{table}",
        "source_schema_name": "public",
        "source_table_name": table,
        "destination_catalog": "lake",
        "destination_schema_name": "landing",
        "destination_table_name": table,
        "db_type": "postgresql",
        "db_config_value": pg_config(source_db),
        "load_strategy": "full",
        **overrides,
    }
    return lp.parse_load_spec(params)


def _read_all(reader: ls.SourceReader, lower=None) -> pa.Table:
    schema, batches = reader.batches(lower)
    return pa.Table.from_batches(list(batches), schema)


def test_postgres_numeric_columns_arrive_exact_through_the_scaled_read(source_db):
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(NUMERIC_DDL)
        conn.execute(NUMERIC_ROWS)
        expected = conn.execute("SELECT id, a, b, c, d FROM nums ORDER BY id").fetchall()
    reader = ls.open_source(_spec(source_db, "nums"), None, batch_bytes=1 << 20, batch_rows=100)
    try:
        query, scaled = reader.read_query(incremental=False)
        assert scaled == {"a": (12, 2), "b": (18, 0), "c": (18, 18), "d": (5, 5)}
        assert (
            '("a" OPERATOR(pg_catalog.*) 100::pg_catalog.numeric)::pg_catalog.int8 AS "a"' in query
        )
        assert '"b"::pg_catalog.int8 AS "b"' in query
        assert '"big", "free", "ts"' in query  # wider and unconstrained NUMERIC: as they are
        table = _read_all(reader).sort_by("id")
    finally:
        reader.close()
    assert table.schema.field("a").type == pa.decimal128(12, 2)
    assert table.schema.field("c").type == pa.decimal128(18, 18)
    got = [tuple(r.values()) for r in table.select(["id", "a", "b", "c", "d"]).to_pylist()]
    assert got == [tuple(r) for r in expected]
    cast = lt.cast_batch(table.to_batches()[0], lt.delta_schema_for(reader.schema()))
    assert cast.schema.field("big").type == pa.decimal128(38, 10)


def test_scaled_numeric_cursor_filters_on_the_source_column(source_db):
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE seqs (id int, seq numeric(10,2))")
        conn.execute("INSERT INTO seqs VALUES (1, 1.50), (2, 2.25), (3, 10.00), (4, NULL)")
    spec = _spec(source_db, "seqs", load_strategy="incremental", incremental_column="seq")
    reader = ls.open_source(spec, None, batch_bytes=1 << 20, batch_rows=100)
    try:
        query, _ = reader.read_query(incremental=True)
        assert query.endswith('WHERE "seq" OPERATOR(pg_catalog.>) $1')
        table = _read_all(reader, decimal.Decimal("2.25")).sort_by("id")
    finally:
        reader.close()
    assert table.column("seq").to_pylist() == [decimal.Decimal("10.00")]


def test_lookback_window_is_read_only_when_a_source_row_falls_inside_it():
    watermark = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)
    schema = pa.schema([("id", pa.int32()), ("ts", pa.timestamp("us", tz="UTC"))])
    calls = []

    def load_existing():
        calls.append(1)
        return collections.Counter([(1, dt.datetime(2024, 1, 1, 11, tzinfo=UTC))])

    def run(rows):
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
        out = la._drop_rows_already_loaded(
            iter([batch]),
            cursor="ts",
            watermark=watermark,
            load_existing=load_existing,
            numeric_text=False,
        )
        return [r["id"] for b in out for r in b.to_pylist()]

    new_only = [{"id": 2, "ts": dt.datetime(2024, 1, 1, 13, tzinfo=UTC)}]
    assert run(new_only) == [2] and calls == []  # all rows new: destination never read

    late = [
        {"id": 1, "ts": dt.datetime(2024, 1, 1, 11, tzinfo=UTC)},  # already loaded
        {"id": 3, "ts": dt.datetime(2024, 1, 1, 11, 30, tzinfo=UTC)},  # late, not loaded yet
        {"id": 4, "ts": dt.datetime(2024, 1, 1, 12, 0, 1, tzinfo=UTC)},
    ]
    assert run(late) == [3, 4] and calls == [1]


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [(3, -2, pa.decimal128(5, 0)), (2, 5, pa.decimal128(5, 5)), (12, 2, pa.decimal128(12, 2))],
)
def test_postgres_15_negative_and_large_scales_map_to_exact_decimals(precision, scale, expected):
    typmod = ((precision << 16) | (scale & 0x7FF)) + 4
    meta = {b"POSTGRESQL:type": b"numeric", b"POSTGRESQL:typmod": str(typmod).encode()}
    field = pa.field("n", pa.string(), metadata=meta)
    assert lt.delta_type_for(field) == expected
    fits = 0 <= scale <= precision
    assert lt.pg_numeric_as_scaled_int8(field) == ((precision, scale) if fits else None)


def test_negative_scale_numeric_loads_exactly(source_db):
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE rounded (id int, n numeric(3,-2), f numeric(2,5))")
        conn.execute("INSERT INTO rounded VALUES (1, 99900, 0.00099), (2, -12300, -0.00001)")
    reader = ls.open_source(_spec(source_db, "rounded"), None, batch_bytes=1 << 20, batch_rows=10)
    try:
        table = _read_all(reader).sort_by("id")
        target = lt.delta_schema_for(reader.schema())
    finally:
        reader.close()
    rows = lt.cast_batch(table.to_batches()[0], target).to_pylist()
    assert [(r["n"], r["f"]) for r in rows] == [
        (decimal.Decimal(99900), decimal.Decimal("0.00099")),
        (decimal.Decimal(-12300), decimal.Decimal("-0.00001")),
    ]
