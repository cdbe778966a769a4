"""SQL text the loader issues: identifier quoting per dialect, source SELECTs, Spark statements.

Pure string building, no database access, so every statement can be checked on its own. Identifiers
are always quoted with the dialect's own quote character (doubled inside the name), so a name with
quotes, spaces or SQL in it is read as a name and never executed. Values (the watermark) are never
put into the text: they are bound parameters (``$1`` for ADBC PostgreSQL, ``%s`` for pymysql and
pymssql, ``:1`` for oracledb, ``:name`` markers for ``spark.sql(..., args=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from databricks_scripts.failures import BadConfig


class UnsafeIdentifierError(BadConfig):
    """An identifier that cannot be quoted safely (empty, control characters, too long)."""


@dataclass(frozen=True)
class Dialect:
    name: str
    open_quote: str
    close_quote: str
    max_identifier_bytes: int
    placeholder_style: str  # "dollar" ($1), "format" (%s), "numeric" (:1), "named" (:name)

    def quote(self, identifier: str) -> str:
        check_identifier(identifier, self)
        inner = identifier.replace(self.close_quote, self.close_quote * 2)
        return f"{self.open_quote}{inner}{self.close_quote}"

    def placeholder(self, position: int, name: str = "p") -> str:
        if self.placeholder_style == "dollar":
            return f"${position}"
        if self.placeholder_style == "format":
            return "%s"
        if self.placeholder_style == "numeric":
            return f":{position}"
        return f":{name}"


POSTGRESQL = Dialect("postgresql", '"', '"', 63, "dollar")
MYSQL = Dialect("mysql", "`", "`", 64, "format")
SQLSERVER = Dialect("sqlserver", "[", "]", 128, "format")
ORACLE = Dialect("oracle", '"', '"', 128, "numeric")
SPARK = Dialect("spark", "`", "`", 255, "named")
# deltalake's merge predicates are DataFusion SQL.
DATAFUSION = Dialect("datafusion", '"', '"', 1024, "named")

DIALECTS = {d.name: d for d in (POSTGRESQL, MYSQL, SQLSERVER, ORACLE, SPARK)}
DIALECTS["databricks"] = SPARK


# The source's comments, the same catalog SQL for both engines: the Arrow readers
# (sources.readers) bind the names as parameters, the Spark engine (engines.spark.comments) sends
# them as quoted literals in a JDBC query. ``{table}`` / ``{schema}`` are filled by the caller.
PG_COMMENTS = (
    "SELECT pg_catalog.obj_description(c.oid, 'pg_class') AS t, a.attname::text AS c,"
    " pg_catalog.col_description(c.oid, a.attnum::pg_catalog.int4) AS d"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a"
    " ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0"
    " AND NOT a.attisdropped"
    " WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({table})"
)
_MYSQL_WHERE = " WHERE table_schema = COALESCE({schema}, DATABASE()) AND table_name = {table}"
MYSQL_TABLE_COMMENT = "SELECT table_comment AS t FROM information_schema.tables" + _MYSQL_WHERE
MYSQL_COLUMN_COMMENTS = (
    "SELECT column_name AS c, column_comment AS d FROM information_schema.columns" + _MYSQL_WHERE
)


def check_identifier(identifier: object, dialect: Dialect) -> str:
    """Refuse identifiers no quoting can make safe; everything else is quoted, not interpreted."""
    if not isinstance(identifier, str) or not identifier:
        raise UnsafeIdentifierError(f"identifier {identifier!r} must be a non-empty string")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in identifier):
        raise UnsafeIdentifierError(f"identifier {identifier!r} contains control characters")
    if len(identifier.encode("utf-8")) > dialect.max_identifier_bytes:
        # PostgreSQL would silently truncate a longer name and read a different table.
        raise UnsafeIdentifierError(
            f"identifier {identifier!r} is longer than {dialect.name}'s limit of "
            f"{dialect.max_identifier_bytes} bytes"
        )
    if dialect.placeholder_style == "format" and "%" in identifier:
        # pymysql and pymssql substitute parameters with Python %-formatting over the whole
        # statement text, so a '%' inside a quoted name would be read as a placeholder.
        raise UnsafeIdentifierError(
            f"identifier {identifier!r} contains '%', which {dialect.name}'s driver would read as "
            "a parameter placeholder; rename the column or load it through a view"
        )
    return identifier


def qualified_name(dialect: Dialect, *parts: str | None) -> str:
    """``"schema"."table"`` (parts that are None or empty are left out)."""
    return ".".join(dialect.quote(p) for p in parts if p)


def source_table_parts(
    db_type: str, catalog: str | None, schema: str | None, table: str
) -> tuple[str | None, ...]:
    """Which of catalog/schema/table name a source table for each database type.

    PostgreSQL and Oracle: the database comes from the connection, so schema.table. MySQL: the
    schema is the database (schema.table). SQL Server: catalog is the database (db.schema.table).
    Databricks: catalog.schema.table.
    """
    if db_type in ("sqlserver", "databricks"):
        return (catalog, schema, table)
    return (schema, table)


def select_source(
    dialect: Dialect,
    table_sql: str,
    *,
    cursor: str | None = None,
    limit_zero: bool = False,
    order_by: str | None = None,
    null_cursor: str | None = None,
    select_list: str | None = None,
) -> str:
    """``SELECT * FROM <table> [WHERE <cursor> > <param 1>]`` or a zero-row schema probe.

    ``select_list`` replaces ``*`` (already quoted: the columns a row's ``columns_exclude`` leaves,
    load.columns); the zero-row probe always reads ``*``.

    Only rows whose cursor is above the bound are read, so NULL cursors are never read by an
    incremental query (they are loaded by full loads). ``order_by`` adds ``ORDER BY`` that
    column; ``null_cursor`` reads only the rows where that column IS NULL (the resumable first
    load: its NULL cursors first, then the rest in cursor order).
    """
    if limit_zero:
        if dialect is SQLSERVER:
            return f"SELECT TOP 0 * FROM {table_sql}"
        if dialect is POSTGRESQL:
            return f"SELECT * FROM {table_sql} WHERE false"
        return f"SELECT * FROM {table_sql} WHERE 1 = 0"
    text = f"SELECT {select_list or '*'} FROM {table_sql}"
    if cursor is not None:
        # PostgreSQL: the built-in operator by name, whatever the source defines on its path.
        op = "OPERATOR(pg_catalog.>)" if dialect is POSTGRESQL else ">"
        text += f" WHERE {dialect.quote(cursor)} {op} {dialect.placeholder(1, 'lower_bound')}"
    elif null_cursor is not None:
        text += f" WHERE {dialect.quote(null_cursor)} IS NULL"
    elif order_by is not None:
        text += f" WHERE {dialect.quote(order_by)} IS NOT NULL"
    if order_by is not None:
        text += f" ORDER BY {dialect.quote(order_by)}"
    return text


# ---------------------------------------------------------------------------------------------
# Spark SQL (Databricks, Delta): the statements the Spark engine runs against the destination.
# ---------------------------------------------------------------------------------------------


def spark_table(catalog: str | None, schema: str | None, table: str) -> str:
    return qualified_name(SPARK, catalog, schema, table)


def _col_list(columns: Sequence[str], prefix: str = "") -> str:
    return ", ".join(prefix + SPARK.quote(c) for c in columns)


def spark_create_table_as(target: str, view: str, *, replace: bool) -> str:
    """First load, or a forced rebuild (``CREATE OR REPLACE`` is one atomic Delta commit)."""
    verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE"
    return f"{verb} {target} USING DELTA AS SELECT * FROM {SPARK.quote(view)}"


def spark_insert_overwrite(target: str, view: str, columns: Sequence[str]) -> str:
    """Full load into an existing table: one atomic overwrite that keeps grants and history."""
    cols = _col_list(columns)
    return f"INSERT OVERWRITE TABLE {target} ({cols}) SELECT {cols} FROM {SPARK.quote(view)}"


def spark_add_columns(target: str, columns: Sequence[tuple[str, str]]) -> str:
    """Schema evolution: ``ALTER TABLE ... ADD COLUMNS`` for new source columns."""
    spec = ", ".join(f"{SPARK.quote(name)} {type_sql}" for name, type_sql in columns)
    return f"ALTER TABLE {target} ADD COLUMNS ({spec})"


def spark_append_new_rows(
    target: str, view: str, columns: Sequence[str], cursor: str, *, with_lookback: bool
) -> str:
    """Incremental append without keys, as one INSERT (one commit) of :func:`spark_new_rows`."""
    query = spark_new_rows(target, view, columns, cursor, with_lookback=with_lookback)
    return f"INSERT INTO {target} ({_col_list(columns)}) {query}"


def spark_new_rows(
    target: str, view: str, columns: Sequence[str], cursor: str, *, with_lookback: bool
) -> str:
    """The rows an incremental append without keys writes.

    Rows above the watermark are new. Rows inside the look-back window (lower bound < cursor <=
    watermark) are inserted only if an identical row is not already in the destination's window:
    ``EXCEPT ALL`` keeps multiplicity, so a late row is loaded exactly once.
    """
    cols = _col_list(columns)
    c = SPARK.quote(cursor)
    v = SPARK.quote(view)
    if not with_lookback:
        return f"SELECT {cols} FROM {v}"
    return (
        f"SELECT {cols} FROM {v} WHERE {c} > :watermark "
        f"UNION ALL (SELECT {cols} FROM {v} WHERE {c} <= :watermark "
        f"EXCEPT ALL SELECT {cols} FROM {target} WHERE {c} > :lower_bound AND {c} <= :watermark)"
    )


def spark_merge(
    target: str,
    view: str,
    keys: Sequence[str],
    columns: Sequence[str],
    key_range: tuple[str, str] | None = None,
) -> str:
    """Upsert on the merge keys: matched rows are updated, others inserted (one Delta commit).

    ``key_range``: literal bounds of the first key among the rows read; the target side is
    restricted to them so Delta prunes files by their statistics (engines.spark.merge).
    """
    on = " AND ".join(f"t.{SPARK.quote(k)} = s.{SPARK.quote(k)}" for k in keys)
    if key_range is not None:
        first = f"t.{SPARK.quote(keys[0])}"
        on = f"{first} >= {key_range[0]} AND {first} <= {key_range[1]} AND {on}"
    sets = ", ".join(f"t.{SPARK.quote(c)} = s.{SPARK.quote(c)}" for c in columns)
    return (
        f"MERGE INTO {target} AS t USING {SPARK.quote(view)} AS s ON {on} "
        f"WHEN MATCHED THEN UPDATE SET {sets} "
        f"WHEN NOT MATCHED THEN INSERT ({_col_list(columns)}) VALUES ({_col_list(columns, 's.')})"
    )


def spark_max(target: str, cursor: str, *, as_micros: bool = False) -> str:
    """max(cursor); ``as_micros`` reads a TIMESTAMP as exact microseconds since the epoch."""
    expr = f"max({SPARK.quote(cursor)})"
    if as_micros:
        expr = f"unix_micros({expr})"
    return f"SELECT {expr} AS watermark FROM {target}"


def delta_merge_predicate(keys: Sequence[str]) -> str:
    """Join predicate for deltalake's ``TableMerger`` (DataFusion SQL, double-quoted names)."""
    return " AND ".join(f"t.{DATAFUSION.quote(k)} = s.{DATAFUSION.quote(k)}" for k in keys)
