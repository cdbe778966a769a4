"""The split probe and the range bounds of a partitioned JDBC read follow each source dialect's own
rules (issue 25, item 2), checked without a server with sqlglot's parsers for those dialects:

- Oracle folds an unquoted alias to upper case, so ``SELECT min(x) AS lo`` comes back as ``LO``
  and ``got["lo"]`` raised ``KeyError``: the probe's aliases are quoted in every dialect.
- Spark's own partition bounds are bare strings (``'2024-01-01 00:00:00.123456'``): Oracle reads
  them through NLS_DATE_FORMAT / NLS_TIMESTAMP_FORMAT, SQL Server's ``datetime`` refuses more than
  three fractional digits. Oracle and SQL Server date/timestamp ranges carry typed literals.

And on a local SparkSession against the real PostgreSQL (which reads the Oracle-style typed
literals too): Spark's ``jdbc(predicates=)`` path the loader takes for them reads every row once.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
import sqlglot
from sqlglot import exp
from sqlglot.dialects.tsql import TSQL
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from test_spark_partitioned_reads import _rows, _spec, pg, spark  # noqa: F401

from databricks_scripts.engines.spark import engine as lsp
from databricks_scripts.engines.spark import partitions as lpp
from databricks_scripts.load.sql import DIALECTS

# Our db_type -> sqlglot's dialect name.
SQLGLOT = {"postgresql": "postgres", "mysql": "mysql", "sqlserver": "tsql", "oracle": "oracle"}
LO, HI = dt.datetime(2024, 1, 1, 0, 0, 0, 1), dt.datetime(2024, 1, 1, 0, 0, 2, 5)


def _output_names(sql: str, db_type: str) -> list[str]:
    """The column names the source reports for ``sql``, by its identifier-folding rule."""
    dialect = SQLGLOT[db_type]
    return normalize_identifiers(
        sqlglot.parse_one(sql, read=dialect), dialect=dialect
    ).named_selects


@pytest.mark.parametrize("db_type", sorted(SQLGLOT))
@pytest.mark.parametrize("count", [True, False])
def test_the_probe_columns_come_back_as_lo_hi_n_in_every_dialect(db_type, count):
    table = DIALECTS[db_type].quote("ORDERS")
    query = lpp.probe_query(db_type, table, "ID", "TS", None, count)
    assert _output_names(query, db_type) == ["lo", "hi", "n"][: 3 if count else 2]


def test_the_folding_check_is_oracles_rule():
    """The check above would have caught the old probe: Oracle folds unquoted names up."""
    old = 'SELECT min("ID") AS lo, max("ID") AS hi, count(*) AS n FROM "ORDERS"'
    assert _output_names(old, "oracle") == ["LO", "HI", "N"]
    assert _output_names(old, "postgresql") == ["lo", "hi", "n"]


# -- typed bound literals ---------------------------------------------------------------------


def _bound(node: exp.Expression) -> dt.date:
    """The value of a typed bound literal, read by the dialect's fixed format; AssertionError for
    a bare string, whose reading would depend on the session."""
    if isinstance(node, exp.StrToTime):  # Oracle TIMESTAMP '...'
        return dt.datetime.strptime(node.this.name, node.args["format"].name)
    if isinstance(node, exp.DateStrToDate):  # Oracle DATE '...'
        return dt.date.fromisoformat(node.this.name)
    if isinstance(node, exp.Convert):  # SQL Server CONVERT(type, '...', style)
        kind = node.this.this
        assert kind in (exp.DataType.Type.DATETIME2, exp.DataType.Type.DATE), node.sql("tsql")
        value = dt.datetime.strptime(
            node.expression.name, TSQL.CONVERT_FORMAT_MAPPING[node.args["style"].name]
        )
        return value.date() if kind == exp.DataType.Type.DATE else value
    raise AssertionError(f"untyped bound literal {node.sql()}")


def _holds(node: exp.Expression, value: dt.date | None) -> bool:
    """SQL truth of a range predicate for one column value (NULL compares unknown: false)."""
    if isinstance(node, exp.Paren):
        return _holds(node.this, value)
    if isinstance(node, exp.Or):
        return _holds(node.this, value) or _holds(node.expression, value)
    if isinstance(node, exp.And):
        return _holds(node.this, value) and _holds(node.expression, value)
    if isinstance(node, exp.Is):
        assert isinstance(node.expression, exp.Null)
        return value is None
    if isinstance(node, exp.LT):
        return value is not None and value < _bound(node.expression)
    if isinstance(node, exp.GTE):
        return value is not None and value >= _bound(node.expression)
    raise AssertionError(f"unexpected predicate {node.sql()}")


def _parsed(db_type, spark_type, lo, hi, partitions) -> list[exp.Expression]:
    predicates = lpp.range_predicates(db_type, "TS", spark_type, lo, hi, partitions)
    return [sqlglot.parse_one(p, read=SQLGLOT[db_type]) for p in predicates]


def test_spark_style_bare_string_bounds_are_refused_by_the_check():
    node = sqlglot.parse_one("\"TS\" < '2024-01-01 00:00:00.123456'", read="oracle")
    with pytest.raises(AssertionError, match="untyped bound literal"):
        _holds(node, LO)


@pytest.mark.parametrize("db_type", ["oracle", "sqlserver"])
def test_timestamp_bounds_are_typed_and_keep_every_microsecond(db_type):
    [first, *_] = _parsed(db_type, "timestamp", LO, HI, 4)
    bound = first.this.expression  # "TS" < <bound> OR "TS" IS NULL
    assert _bound(bound) == LO + (HI - LO) / 4
    assert _bound(bound).microsecond % 1000 != 0  # more digits than SQL Server datetime keeps
    text = lpp.typed_literal(db_type, "timestamp", dt.datetime(2024, 2, 29, 23, 59, 59, 5))
    assert (
        text
        == {
            "oracle": "TIMESTAMP '2024-02-29 23:59:59.000005'",
            "sqlserver": "CONVERT(datetime2, '2024-02-29 23:59:59.000005', 121)",
        }[db_type]
    )


@pytest.mark.parametrize("db_type", ["oracle", "sqlserver"])
def test_date_bounds_are_typed(db_type):
    parsed = _parsed(db_type, "date", dt.date(2024, 1, 1), dt.date(2024, 1, 31), 3)
    assert [_bound(p.find(exp.LT, exp.GTE).expression) for p in parsed] == [
        dt.date(2024, 1, 11),
        dt.date(2024, 1, 11),
        dt.date(2024, 1, 21),
    ]
    assert (
        lpp.typed_literal(db_type, "date", dt.date(2024, 2, 29))
        == {
            "oracle": "DATE '2024-02-29'",
            "sqlserver": "CONVERT(date, '2024-02-29', 23)",
        }[db_type]
    )


@pytest.mark.parametrize("db_type", ["oracle", "sqlserver"])
@pytest.mark.parametrize("partitions", [2, 3, 7])
def test_every_value_and_null_falls_in_exactly_one_range(db_type, partitions):
    parsed = _parsed(db_type, "timestamp", LO, HI, partitions)
    assert len(parsed) == partitions
    bounds = sorted({_bound(b.expression) for p in parsed for b in p.find_all(exp.LT, exp.GTE)})
    one_us = dt.timedelta(microseconds=1)
    values = [None, LO - dt.timedelta(days=400), LO, HI, HI + dt.timedelta(days=400)]
    values += [b + d for b in bounds for d in (-one_us, dt.timedelta(0), one_us)]
    for value in values:
        assert sum(_holds(p, value) for p in parsed) == 1, value
    days = _parsed(db_type, "date", dt.date(2024, 1, 1), dt.date(2024, 1, 2), 8)
    assert len(days) == 2  # one inner bound fits between two days
    for value in (None, dt.date(2023, 12, 31), dt.date(2024, 1, 1), dt.date(2024, 1, 2)):
        assert sum(_holds(p, value) for p in days) == 1, value


def test_only_oracle_and_sqlserver_times_take_typed_predicates():
    assert lpp._typed_ranges("oracle", "timestamp") and lpp._typed_ranges("sqlserver", "date")
    assert not lpp._typed_ranges("oracle", "bigint")
    assert not lpp._typed_ranges("postgresql", "timestamp")
    assert lpp.range_predicates("oracle", "TS", "timestamp", LO, LO, 4) == ()


# -- Spark's predicates path, executed ----------------------------------------------------------


def test_spark_plans_and_reads_typed_range_predicates_once_each(spark, pg, monkeypatch):  # noqa: F811
    """The Oracle plan end to end on a real SparkSession and PostgreSQL, which reads Oracle's
    quoting and typed literals the same way: the probe's quoted aliases come back as lo/hi/n, the
    timestamp split becomes typed predicates, and the loader's jdbc(predicates=) branch reads every
    row, NULLs included, exactly once."""
    conninfo, config = pg
    t0 = dt.datetime(2024, 1, 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute('CREATE TABLE items (id bigint PRIMARY KEY, "TS" timestamp)')
        conn.execute(
            "INSERT INTO items SELECT g, CASE WHEN g %% 7 = 0 THEN NULL ELSE"
            " %s::timestamp + g * interval '1.000123 second' END FROM generate_series(1, 300) g",
            (t0,),
        )
    spec = _spec(db_config_value=config)
    oracle = _spec(
        db_type="oracle",
        db_config_value={"host": "127.0.0.1", "service_name": "x", "user": "u"},
        jdbc_partition_column="TS",
    )
    plans = []

    def plan_as_oracle(spark_, _spec_, base, fields, lower, **kw):
        plans.append(lpp.plan_read(spark_, oracle, base, fields, lower, **kw))
        return plans[-1]

    whole, _ = lsp.read_source_planned(spark, spec, None, None, None)
    monkeypatch.setattr(lsp, "plan_read", plan_as_oracle)
    split, plan = lsp.read_source_planned(spark, spec, None, None, (100, 4))
    assert plan is plans[0] and plan.options == {} and plan.partitions == 3
    assert plan.predicates[0].startswith('"TS" < TIMESTAMP \'2024-01-01 00:')
    assert plan.predicates[0].endswith(' OR "TS" IS NULL')
    assert split.rdd.getNumPartitions() == 3
    assert _rows(split) == _rows(whole)
    assert len(_rows(split)) == 300
