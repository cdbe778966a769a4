"""The Spark engine reads a JDBC source's comments (issue 27): PostgreSQL's ``COMMENT ON TABLE /
COLUMN`` over the source read's own JDBC options, and a read that fails costs the comments only.
MySQL/MariaDB runs the same path with its driver jar, absent from the local Maven repository here:
only its query text is checked."""

from __future__ import annotations

import psycopg
from test_spark_partitioned_reads import _spec, pg, spark  # noqa: F401 - fixtures

from databricks_scripts.engines.spark import comments as lsc
from databricks_scripts.engines.spark import engine as lsp


def _source(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, code text, note text)")
        conn.execute("COMMENT ON TABLE items IS 'Items, one row each (it''s documented)'")
        conn.execute("COMMENT ON COLUMN items.code IS 'The item''s code'")
        conn.execute("COMMENT ON COLUMN items.id IS 'Key'")


def test_a_postgresql_sources_comments_are_read_over_jdbc(spark, pg):  # noqa: F811
    conninfo, config = pg
    _source(conninfo)
    spec = _spec(db_config_value=config)
    logged: list[str] = []
    comments = lsc.read_comments(spark, spec, logged.append, lsp.jdbc_options(spec, None))
    assert comments == (
        "Items, one row each (it's documented)",
        {"code": "The item's code", "id": "Key"},
    )
    assert logged == []
    # Without the JDBC options (or for a source type that has none) nothing is read.
    assert lsc.read_comments(spark, spec, logged.append) == (None, {})


def test_a_failing_comment_read_logs_one_line_and_returns_none(spark, pg):  # noqa: F811
    conninfo, config = pg
    _source(conninfo)
    wrong = _spec(db_config_value={**config, "database": "no_such_database"})
    logged: list[str] = []
    jdbc = {**lsp.jdbc_options(wrong, "not-the-password"), "connectTimeout": "5"}
    assert lsc.read_comments(spark, wrong, logged.append, jdbc) == (None, {})
    assert len(logged) == 1 and logged[0].startswith("source comments not read: ")
    assert "not-the-password" not in logged[0]
    # A table that does not exist: to_regclass finds nothing, so no comments and nothing logged.
    missing = _spec(db_config_value=config, source_table_name="nope")
    assert lsc.read_comments(spark, missing, logged.append, lsp.jdbc_options(missing, None)) == (
        None,
        {},
    )


def test_mysql_comment_queries_quote_the_names_and_other_sources_have_none():
    spec = _spec(db_type="mysql", source_schema_name="shop", source_table_name="it's")
    table, columns = lsc.comment_queries(spec)
    assert table.endswith("COALESCE('shop', DATABASE()) AND table_name = 'it''s'")
    assert "information_schema.columns" in columns and "'it''s'" in columns
    assert lsc.comment_queries(_spec(db_type="sqlserver")) == []
