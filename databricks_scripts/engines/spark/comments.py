"""Source comments on the Spark engine (issue 27, as load.columns does for the Arrow engine).

- Read: a Unity Catalog source (``db_type: databricks``) from ``DESCRIBE TABLE EXTENDED`` (its
  column rows' ``comment``, and the ``Comment`` row of the table's details); a PostgreSQL or
  MySQL/MariaDB source by a JDBC ``query`` over the source read's own connection options (the
  Arrow readers' catalog SQL, load.sql). SQL Server and Oracle sources: none read.
- Written when the load creates or rebuilds the destination: ``COMMENT ON TABLE`` and ``ALTER
  TABLE ... ALTER COLUMN ... COMMENT`` (Unity Catalog's own comments).
- Reported on every load (``LoadResult.comments``): the table asset's column descriptions.

Comments are documentation, never data: a statement that fails is logged and the load goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import LoadResult
from databricks_scripts.load.sql import (
    MYSQL,
    MYSQL_COLUMN_COMMENTS,
    MYSQL_TABLE_COMMENT,
    PG_COMMENTS,
    POSTGRESQL,
    SPARK,
    qualified_name,
    source_table_parts,
    spark_table,
)

# (the table's comment, {column: comment}), as LoadResult.comments carries them.
Comments = tuple[str | None, dict[str, str]]
NONE: Comments = (None, {})


def spark_string(text: str) -> str:
    """A Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_described(rows: list[dict]) -> Comments:
    """(table comment, {column: comment}) from ``DESCRIBE TABLE EXTENDED`` rows as dicts."""
    columns: dict[str, str] = {}
    table = None
    in_columns = True
    for row in rows:
        name = (row.get("col_name") or "").strip()
        if not name or name.startswith("#"):
            in_columns = False  # the blank row / "# Detailed Table Information" end the columns
            continue
        if in_columns and row.get("comment"):
            columns[name] = str(row["comment"])
        elif not in_columns and name == "Comment" and row.get("data_type"):
            table = str(row["data_type"])
    return table, columns


def sql_string(text: str | None) -> str:
    """A MySQL string literal (or NULL): quotes doubled, backslashes escaped (under
    NO_BACKSLASH_ESCAPES a doubled backslash only fails to match: no comments, nothing run)."""
    if text is None:
        return "NULL"
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def comment_queries(spec: LoadSpec) -> list[str]:
    """The JDBC queries reading a PostgreSQL or MySQL source's comments; [] for other sources."""
    schema, table = spec.source_schema_name, spec.source_table_name
    if spec.db_type == "postgresql":
        parts = source_table_parts(spec.db_type, spec.source_catalog, schema, table)
        literal = "'" + qualified_name(POSTGRESQL, *parts).replace("'", "''") + "'"
        return [PG_COMMENTS.format(table=literal)]
    if spec.db_type == "mysql":
        qualified_name(MYSQL, schema, table)  # refuses a name the dialect would not quote
        marks = {"schema": sql_string(schema), "table": sql_string(table)}
        return [MYSQL_TABLE_COMMENT.format(**marks), MYSQL_COLUMN_COMMENTS.format(**marks)]
    return []


def _jdbc_rows(spark: Any, jdbc: dict[str, str], query: str) -> list[dict]:
    options = {k: v for k, v in jdbc.items() if k not in ("dbtable", "pushDownAggregate")}
    df = spark.read.format("jdbc").options(**options, query=query).load()
    return [r.asDict() for r in df.collect()]


def read_jdbc_comments(spark: Any, spec: LoadSpec, jdbc: dict[str, str]) -> Comments:
    """(table comment, {column: comment}) of a PostgreSQL or MySQL source over JDBC."""
    queries = comment_queries(spec)
    if not queries:
        return NONE
    rows = [row for query in queries for row in _jdbc_rows(spark, jdbc, query)]
    table = next((r["t"] for r in rows if r.get("t")), None)
    return table, {r["c"]: r["d"] for r in rows if r.get("c") and r.get("d")}


def read_comments(
    spark: Any, spec: LoadSpec, log: Callable[[str], None], jdbc: dict[str, str] | None = None
) -> Comments:
    """The source's comments: a Unity Catalog source's (a foreign table's too), or (with
    ``jdbc``, the source read's options, password included) a PostgreSQL or MySQL/MariaDB
    source's. None for SQL Server and Oracle, and none (one line logged) when the catalog cannot
    be read."""
    try:
        table = spec.unity_catalog_table  # a foreign table's comments are Unity Catalog's too
        if table is None:
            return read_jdbc_comments(spark, spec, jdbc) if jdbc is not None else NONE
        source = spark_table(*table)
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {source}").collect()
        return parse_described([r.asDict() for r in rows])
    except Exception as exc:  # noqa: BLE001 - comments are documentation, never data
        first = (str(exc).splitlines() or [""])[0][:200]
        log(f"source comments not read: {type(exc).__name__}: {first}")
        return NONE


def comment_statements(target: str, comments: Comments, columns: list[str]) -> list[str]:
    """The statements that give ``target`` the comments (only columns it has)."""
    table, by_column = comments
    statements = [f"COMMENT ON TABLE {target} IS {spark_string(table)}"] if table else []
    statements += [
        f"ALTER TABLE {target} ALTER COLUMN {SPARK.quote(c)} COMMENT {spark_string(by_column[c])}"
        for c in columns
        if by_column.get(c)
    ]
    return statements


def write_comments(
    spark: Any, target: str, comments: Comments, columns: list[str], log: Callable[[str], None]
) -> None:
    """Give a created or rebuilt destination the source's comments; a refusal costs the comment."""
    for statement in comment_statements(target, comments, columns):
        try:
            spark.sql(statement).collect()
        except Exception as exc:  # noqa: BLE001 - comments are documentation, never data
            first = (str(exc).splitlines() or [""])[0][:200]
            log(f"source comment not written to {target}: {type(exc).__name__}: {first}")


def with_comments(
    spark: Any,
    spec: LoadSpec,
    target: str,
    loaded: LoadResult,
    columns: list[str],
    created: bool,
    log: Callable[[str], None],
    jdbc: dict[str, str] | None = None,
) -> LoadResult:
    """``loaded`` carrying the source's comments; a ``created`` (or rebuilt) destination gets
    them too. ``jdbc``: the source read's JDBC options (a JDBC source)."""
    comments = read_comments(spark, spec, log, jdbc)
    if created:
        write_comments(spark, target, comments, columns, log)
    loaded.comments = comments
    return loaded
