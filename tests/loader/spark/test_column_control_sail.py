"""Column control and the schema contract (sql/017) on the Spark engine, executed on Sail and
compared with the Arrow engine for the same source (tests/loader/spark/test_spark_on_sail.py's ``Both``: the
same PostgreSQL table loaded by ``run_arrow_load`` into local Delta and by ``run_spark_load`` on
Sail's Delta; the rows of both destinations must be equal).

- ``columns_exclude`` / ``columns_hash``: the excluded column is in neither destination; the hashed
  ones (text, decimal, timestamp) hold the same HMAC in both, equal to the HMAC of the value's
  canonical text (load.columns.canonical_text, docs/loader.md).
- ``schema_change``: ``freeze`` fails both engines at step ``reconcile schema`` naming the added
  column, and neither destination changes; ``discard_new`` leaves the column out of both;
  ``evolve`` adds it to both and keeps a dropped one NULL for new rows.
- A property test (hypothesis): the HMAC of integers, decimals, dates, timestamps (with and
  without zone), text and NULL is the same from both engines' hash code and equal to the HMAC of
  the documented canonical text.

What Sail lacks is a strict xfail naming the gap (sail_spark.SAIL_GAPS): the comment statements.
The column-control record rides in each write's own userMetadata option, which Sail keeps, so a
second load with the same lists is no rebuild here too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sail_spark import SAIL_GAPS
from test_spark_on_sail import Both, sail, t  # noqa: F401 - sail: the module's Sail fixture

from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.engines.spark.comments import parse_described
from databricks_scripts.load import columns as lc
from databricks_scripts.load.params import parse_load_spec

KEY = b"column-control-key-0123456789"
UTC = dt.UTC
D = decimal.Decimal
COLUMNS = [
    ("id", "int"),
    ("email", "text"),
    ("ssn", "text"),
    ("amount", "numeric(12,2)"),
    ("ts", "timestamp"),
]


def _hmac(text: str) -> str:
    return hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()


def _both(source_db, sail, tmp_path, **params) -> Both:  # noqa: F811 - the fixture's value
    both = Both(source_db, sail, tmp_path, COLUMNS, **params)
    both.hash_key = KEY
    both.sql(
        f"INSERT INTO {both.table} VALUES (1,'a@x.org','111',1.50,%s),"
        "(2,'b@x.org',NULL,-0.05,%s),(3,'a@x.org','333',NULL,%s),(4,NULL,'444',12.00,NULL)",
        (t(1, 10), t(2), t(2)),
    )
    return both


def _column(rows: list[tuple], name: str) -> list[Any]:
    return [dict(r).get(name, "absent") for r in sorted(rows, key=lambda r: dict(r)["id"])]


def test_exclude_and_hash_give_the_same_rows_on_both_engines(source_db, sail, tmp_path):  # noqa: F811
    both = _both(
        source_db,
        sail,
        tmp_path,
        load_strategy="merge",
        merge_keys=["id"],
        columns_exclude=["ssn"],
        columns_hash=["email", "amount", "ts"],
    )
    rows = both.check(*both.load())
    assert "absent" in _column(rows, "ssn")  # in neither destination (check compared them)
    assert all("ssn" not in dict(r) for r in rows)
    assert _column(rows, "email") == [_hmac("a@x.org"), _hmac("b@x.org"), _hmac("a@x.org"), None]
    assert _column(rows, "amount") == [_hmac("1.50"), _hmac("-0.05"), None, _hmac("12.00")]
    ts = _column(rows, "ts")
    assert ts[:3] == [
        _hmac(f"2024-01-0{d}T{h}:00:00.000000") for d, h in ((1, 10), (2, "00"), (2, "00"))
    ]
    assert ts[3] is None


def test_a_second_load_with_the_same_lists_is_no_rebuild_on_spark(source_db, sail, tmp_path):  # noqa: F811
    both = _both(source_db, sail, tmp_path, load_strategy="merge", merge_keys=["id"])
    both.params["columns_hash"] = ["email"]
    both.check(*both.load())
    both.sql(f"UPDATE {both.table} SET email = 'c@x.org' WHERE id = 2")
    arrow, spark = both.load()
    assert arrow.applied_strategy == "merge"
    assert spark.applied_strategy == "merge", spark.applied_strategy


def test_freeze_fails_both_engines_naming_the_added_column_and_writes_nothing(
    source_db,
    sail,  # noqa: F811
    tmp_path,
):
    both = _both(
        source_db, sail, tmp_path, load_strategy="merge", merge_keys=["id"], schema_change="freeze"
    )
    before = both.check(*both.load())
    both.add_column("extra", "text")
    both.sql(f"INSERT INTO {both.table} (id, email, extra) VALUES (5, 'e@x.org', 'x')")
    arrow, spark = both.load_each()
    for refused in (arrow, spark):
        assert isinstance(refused, la.LoadStepError), refused
        assert refused.step == "reconcile schema", refused.step
        text = str(refused)
        assert "schema_change is 'freeze'" in text and "added column 'extra'" in text
    assert both.rows(str(both.arrow_path)) == before
    assert both.rows(both.sail.location(both.spark_target)) == before


def test_discard_new_leaves_the_column_out_and_evolve_takes_it(source_db, sail, tmp_path):  # noqa: F811
    both = _both(
        source_db,
        sail,
        tmp_path,
        load_strategy="merge",
        merge_keys=["id"],
        schema_change="discard_new",
    )
    both.check(*both.load())
    both.add_column("extra", "text")
    both.sql(f"INSERT INTO {both.table} (id, email, extra) VALUES (5, 'e@x.org', 'x')")
    rows = both.check(*both.load())
    assert all("extra" not in dict(r) for r in rows) and len(rows) == 5
    both.params["schema_change"] = "evolve"
    both.sql(f"UPDATE {both.table} SET extra = 'y' WHERE id = 1")
    rows = both.check(*both.load())
    assert _column(rows, "extra")[:2] == ["y", None]


# ---- comments: a Unity Catalog source's comments on the Spark engine ------------------------------

COMMENTS = ("People we know", {"name": "Given name"})


def _commented_load(sail) -> tuple[Any, str]:  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    source = f"`spark_catalog`.`default`.`people_{tag}`"
    sail.sql(
        f"CREATE TABLE {source} (id INT, name STRING COMMENT 'Given name') USING DELTA"
        " COMMENT 'People we know'"
    ).collect()
    sail.sql(f"INSERT INTO {source} VALUES (1, 'ann'), (2, 'bob')").collect()
    spec = parse_load_spec(
        {
            "source_catalog": "spark_catalog",
            "source_schema_name": "default",
            "source_table_name": f"people_{tag}",
            "destination_catalog": "spark_catalog",
            "destination_schema_name": "default",
            "destination_table_name": f"people_dst_{tag}",
            "db_type": "databricks",
            "load_strategy": "full",
            "metadata_id": 1,
        }
    )
    result = lsp.run_spark_load(spec, None, log=print, spark=sail)
    return result, f"`spark_catalog`.`default`.`people_dst_{tag}`"


def test_spark_reads_a_unity_catalog_sources_comments_for_the_asset(sail):  # noqa: F811
    result, _ = _commented_load(sail)
    assert result.comments == COMMENTS  # -> the asset's TableSchema and source_comment


@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason=f"not executed on Sail: {SAIL_GAPS['comments']}"
)
def test_spark_writes_the_comments_into_the_created_table(sail):  # noqa: F811
    _, target = _commented_load(sail)
    described = sail.sql(f"DESCRIBE TABLE EXTENDED {target}").collect()
    assert parse_described([r.asDict() for r in described]) == COMMENTS


# ---- one canonical text per type: both engines hash a value alike --------------------------------

ROW_TYPES = pa.schema(
    [
        ("id", pa.int64()),
        ("i", pa.int64()),
        ("d", pa.decimal128(12, 3)),
        ("big", pa.decimal128(38, 10)),
        ("day", pa.date32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("ntz", pa.timestamp("us")),
        ("txt", pa.string()),
    ]
)
SPARK_DDL = (
    "id bigint, i bigint, d decimal(12,3), big decimal(38,10), day date, ts timestamp,"
    " ntz timestamp_ntz, txt string"
)
HASHED = ROW_TYPES.names[1:]


def _canonical(value: Any) -> str | None:
    """The documented canonical text, written out independently of load.columns."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}"
    if isinstance(value, dt.date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if isinstance(value, D):
        sign, digits, exponent = value.as_tuple()
        text = "".join(map(str, digits)).rjust(-exponent + 1, "0")
        whole, fraction = text[: len(text) + exponent], text[len(text) + exponent :]
        return ("-" if sign and value != 0 else "") + whole + ("." + fraction if fraction else "")
    return str(value)


def _maybe(strategy):
    return st.one_of(st.none(), strategy)


ROWS = st.lists(
    st.tuples(
        _maybe(st.integers(-(2**63), 2**63 - 1)),
        _maybe(st.decimals(-(10**9) + 1, 10**9 - 1, places=3, allow_nan=False)),
        _maybe(st.decimals(-(10**27) + 1, 10**27 - 1, places=10, allow_nan=False)),
        _maybe(st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))),
        _maybe(
            st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1), timezones=st.just(UTC))
        ),
        _maybe(st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 1, 1))),
        _maybe(st.text(max_size=20)),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=ROWS)
def test_both_engines_hash_every_type_to_the_hmac_of_its_canonical_text(sail, rows):  # noqa: F811
    rows = [(n, *r) for n, r in enumerate(rows)]
    batch = pa.RecordBatch.from_pylist(
        [dict(zip(ROW_TYPES.names, r, strict=True)) for r in rows], schema=ROW_TYPES
    )
    arrow = lc.hash_batch(batch, HASHED, KEY).to_pydict()
    frame = sail.createDataFrame(rows, SPARK_DDL)
    for name in HASHED:
        frame = frame.withColumn(name, lc.spark_hash_column(name, KEY, dict(frame.dtypes)[name]))
    spark = [r.asDict() for r in frame.orderBy("id").collect()]
    for name in HASHED:
        want = [None if v is None else _hmac(_canonical(v)) for v in batch.column(name).to_pylist()]
        assert arrow[name] == want, name
        assert [r[name] for r in spark] == want, name
