"""Source comments on the Spark engine (issue 27, as loader_columns does for the Arrow engine).

- Read: a Unity Catalog source (``db_type: databricks``) from ``DESCRIBE TABLE EXTENDED`` (its
  column rows' ``comment``, and the ``Comment`` row of the table's details). A JDBC source's
  comments are not read yet (docs/loader.md): the load goes on without them.
- Written when the load creates or rebuilds the destination: ``COMMENT ON TABLE`` and ``ALTER
  TABLE ... ALTER COLUMN ... COMMENT`` (Unity Catalog's own comments).
- Reported on every load (``LoadResult.comments``): the table asset's column descriptions.

Comments are documentation, never data: a statement that fails is logged and the load goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from databricks_scripts.loader_sql import SPARK, spark_table

NONE: tuple[str | None, dict[str, str]] = (None, {})


def spark_string(text: str) -> str:
    """A Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_described(rows: list[dict]) -> tuple[str | None, dict[str, str]]:
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


def read_comments(spark: Any, spec: Any, log: Callable[[str], None]) -> tuple:
    """The source's comments, or none (a JDBC source, or a catalog that cannot be read)."""
    if spec.db_type != "databricks":
        return NONE
    source = spark_table(spec.source_catalog, spec.source_schema_name, spec.source_table_name)
    try:
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {source}").collect()
        return parse_described([r.asDict() for r in rows])
    except Exception as exc:  # noqa: BLE001 - comments are documentation, never data
        log(f"source comments not read: {type(exc).__name__}: {exc}")
        return NONE


def comment_statements(target: str, comments: tuple, columns: list[str]) -> list[str]:
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
    spark: Any, target: str, comments: tuple, columns: list[str], log: Callable[[str], None]
) -> None:
    """Give a created or rebuilt destination the source's comments; a refusal costs the comment."""
    for statement in comment_statements(target, comments, columns):
        try:
            spark.sql(statement).collect()
        except Exception as exc:  # noqa: BLE001 - comments are documentation, never data
            first = (str(exc).splitlines() or [""])[0][:200]
            log(f"source comment not written to {target}: {type(exc).__name__}: {first}")


def with_comments(
    spark: Any, spec: Any, target: str, loaded: Any, columns: list[str], created: bool, log
) -> Any:
    """``loaded`` carrying the source's comments; a ``created`` (or rebuilt) destination gets
    them too."""
    comments = read_comments(spark, spec, log)
    if created:
        write_comments(spark, target, comments, columns, log)
    loaded.comments = comments
    return loaded
