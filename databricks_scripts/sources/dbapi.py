"""SQL Server (pymssql) and Oracle (oracledb) readers: DB-API drivers with ``fetchmany``, types
from the server's metadata, exact conversion per batch."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow as pa

from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import (
    ORACLE,
    SQLSERVER,
)
from databricks_scripts.sources.base import SourceReader
from databricks_scripts.sources.connections import (
    oracle_connect_kwargs,
    sqlserver_connect_kwargs,
)
from databricks_scripts.sources.types_mssql_oracle import (
    ORACLE_DATE_METADATA,
    oracle_field,
    oracle_utc_columns,
    rows_to_exact_batch,
    sqlserver_field,
)

# ---- SQL Server and Oracle: types from the server's metadata, exact conversion per batch -------

_TS_TEXT = "%Y-%m-%d %H:%M:%S.%f"


def _utc_naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def sqlserver_describe_query() -> str:
    """Describes a statement (its text is the one parameter) without running it."""
    return (
        "SELECT name, system_type_name, precision, scale, is_nullable, error_number, error_message"
        " FROM sys.dm_exec_describe_first_result_set(%s, NULL, 0)"
        " WHERE ISNULL(is_hidden, 0) = 0 ORDER BY column_ordinal"
    )


def sqlserver_schema_from_description(rows: list[tuple]) -> pa.Schema:
    """Schema from ``sqlserver_describe_query`` rows; a describe error is raised as such."""
    for row in rows:
        if row[5] is not None:
            raise ValueError(f"SQL Server cannot describe the source query: {row[6]}")
    if not rows:
        raise ValueError("SQL Server described no columns for the source query")
    return pa.schema([sqlserver_field(row[:5]) for row in rows])


def sqlserver_read(
    table_sql: str,
    schema: pa.Schema,
    cursor: str | None,
    lower_bound: object | None,
    select_list: str | None = None,
) -> tuple[str, tuple]:
    """The streaming SELECT for SQL Server and its parameters (pymssql ``%s`` style).

    Timestamps arrive truncated to microseconds (datetime2(7) has 100 ns steps), so the watermark
    is a truncated value: a timestamp cursor reads ``c >= watermark + 1 microsecond`` (= its
    truncated value is above the watermark), or a row in the same microsecond as the watermark
    would be read and appended again on every run. The bound is sent as text and cast on the
    server, so no driver conversion touches its precision.
    """
    text = f"SELECT {select_list or '*'} FROM {table_sql}"
    if lower_bound is None or cursor is None:
        return text, ()
    col = SQLSERVER.quote(cursor)
    t = schema.field(cursor).type
    if pa.types.is_timestamp(t) and isinstance(lower_bound, dt.datetime):
        if t.tz:
            bound = _utc_naive(lower_bound).strftime(_TS_TEXT) + " +00:00"
            expr = "CAST(%s AS datetimeoffset(7))"
        else:
            bound, expr = lower_bound.strftime(_TS_TEXT), "CAST(%s AS datetime2(7))"
        return f"{text} WHERE {col} >= DATEADD(microsecond, 1, {expr})", (bound,)
    if pa.types.is_date(t) and isinstance(lower_bound, dt.date):
        return f"{text} WHERE {col} > CAST(%s AS date)", (lower_bound.isoformat(),)
    return f"{text} WHERE {col} > %s", (lower_bound,)


def oracle_read(
    table_sql: str,
    schema: pa.Schema,
    cursor: str | None,
    lower_bound: object | None,
    select_list: str | None = None,
) -> tuple[str, tuple]:
    """The streaming SELECT for Oracle and its parameters (``:1`` style).

    TIMESTAMP WITH (LOCAL) TIME ZONE columns are read as ``SYS_EXTRACT_UTC(col)`` (the driver
    would drop the zone); a timestamp cursor reads ``c >= watermark + 1 microsecond`` for the
    same truncation reason as SQL Server (TIMESTAMP(9)), with the bound sent as text.
    """
    del select_list  # the columns come from ``schema``, which has no excluded column
    utc = set(oracle_utc_columns(schema))
    cols = [
        f"SYS_EXTRACT_UTC({ORACLE.quote(f.name)}) AS {ORACLE.quote(f.name)}"
        if f.name in utc
        else ORACLE.quote(f.name)
        for f in schema
    ]
    text = f"SELECT {', '.join(cols)} FROM {table_sql}"
    if lower_bound is None or cursor is None:
        return text, ()
    col = ORACLE.quote(cursor)
    field = schema.field(cursor)
    t = field.type
    if (field.metadata or {}) == ORACLE_DATE_METADATA and isinstance(lower_bound, dt.datetime):
        # DATE holds whole seconds: above the bound <=> above the bound's whole second.
        bound = lower_bound.strftime("%Y-%m-%d %H:%M:%S")
        return f"{text} WHERE {col} > TO_DATE(:1, 'YYYY-MM-DD HH24:MI:SS')", (bound,)
    if pa.types.is_timestamp(t) and isinstance(lower_bound, dt.datetime):
        expr = "TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF6')"
        if t.tz:
            expr = f"FROM_TZ({expr}, 'UTC')"
        bound = _utc_naive(lower_bound).strftime(_TS_TEXT)
        return f"{text} WHERE {col} >= {expr} + INTERVAL '0.000001' SECOND", (bound,)
    return f"{text} WHERE {col} > :1", (lower_bound,)


def _oracle_output_type_handler(cursor: Any, metadata: Any) -> Any:
    """NUMBER as Decimal (exact, never float) and LOBs as values, not LOB locators."""
    import oracledb

    size = cursor.arraysize
    if metadata.type_code is oracledb.DB_TYPE_NUMBER:
        return cursor.var(decimal.Decimal, arraysize=size)
    lobs = {
        oracledb.DB_TYPE_CLOB: oracledb.DB_TYPE_LONG,
        oracledb.DB_TYPE_NCLOB: oracledb.DB_TYPE_LONG_NVARCHAR,
        oracledb.DB_TYPE_BLOB: oracledb.DB_TYPE_LONG_RAW,
    }
    if metadata.type_code in lobs:
        return cursor.var(lobs[metadata.type_code], arraysize=size)
    return None


class _Connection(Protocol):
    """What the reader uses of a pymssql or an oracledb connection (their cursors differ)."""

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


class DbApiReader(SourceReader):
    """SQL Server / Oracle through their DB-API drivers; exact types from the server's metadata.

    SQL Server: ``sys.dm_exec_describe_first_result_set`` (pymssql's description has only coarse
    type codes). Oracle: oracledb's ``cursor.description`` (type, precision, scale). Each batch is
    converted to that schema exactly (a value that does not fit fails the load naming the column).
    """

    def __init__(self, spec: LoadSpec, password: str | None, **kw: int):
        self.dialect = SQLSERVER if spec.db_type == "sqlserver" else ORACLE
        super().__init__(spec, password, **kw)
        self._schema: pa.Schema | None = None
        self._conn: _Connection
        if spec.db_type == "sqlserver":
            import pymssql

            self._conn = pymssql.connect(**sqlserver_connect_kwargs(spec.db_config_value, password))
        else:
            import oracledb

            conn = oracledb.connect(**oracle_connect_kwargs(spec.db_config_value, password))
            conn.outputtypehandler = _oracle_output_type_handler
            self._conn = conn

    def schema(self) -> pa.Schema:
        if self._schema is not None:
            return self._schema
        self._statement()
        cur = self._conn.cursor()
        try:
            if self.dialect is SQLSERVER:
                cur.execute(sqlserver_describe_query(), (self.query(limit_zero=True),))
                self._schema = self.kept(sqlserver_schema_from_description(cur.fetchall()))
            else:
                cur.execute(self.query(limit_zero=True))
                probed = pa.schema([oracle_field(tuple(d)) for d in cur.description or ()])
                self._schema = self.kept(probed)
                cur.fetchall()
        finally:
            cur.close()
        return self._schema

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        schema = self.schema()
        build = sqlserver_read if self.dialect is SQLSERVER else oracle_read
        query, params = build(
            self.table_sql, schema, self.spec.incremental_column, lower_bound, self.select_list()
        )
        self._statement()
        cur = self._conn.cursor()
        if self.dialect is ORACLE:
            cur.arraysize = min(self.batch_rows, 10_000)
        if params:
            cur.execute(query, params)
        else:
            cur.execute(query)
        names = [d[0] for d in cur.description or ()]
        if names != schema.names:
            cur.close()
            raise ValueError(f"source columns changed while reading: {names} != {schema.names}")
        return schema, self._stream_rows(cur, schema, rows_to_exact_batch)

    def key_batches(self, keys: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
        schema = pa.schema([self.schema().field(k) for k in keys])
        utc = set(oracle_utc_columns(schema)) if self.dialect is ORACLE else set()
        cols = [
            f"SYS_EXTRACT_UTC({self.dialect.quote(k)}) AS {self.dialect.quote(k)}"
            if k in utc
            else self.dialect.quote(k)
            for k in keys
        ]
        self._statement()
        cur = self._conn.cursor()
        if self.dialect is ORACLE:
            cur.arraysize = min(self.batch_rows, 10_000)
        cur.execute(f"SELECT {', '.join(cols)} FROM {self.table_sql}")
        return self._stream_rows(cur, schema, rows_to_exact_batch)

    def _close_connection(self) -> None:
        self._conn.close()
