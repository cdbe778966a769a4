"""Source readers for the Arrow engine: each yields Arrow record batches, streaming.

PostgreSQL is first class: ADBC streams Arrow batches straight from COPY, sized by a byte hint, so
memory stays bounded by the batch size. MySQL/MariaDB streams with pymysql's unbuffered cursor.
SQL Server (pymssql) and Oracle (oracledb) use their DB-API drivers with ``fetchmany``.

Every reader runs the whole read as ONE statement, so the rows come from one snapshot, and never
puts a value into SQL text: the look-back bound is a bound parameter.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from databricks_scripts.loader_connections import (
    PG_SESSION_OPTIONS,
    mysql_connect_kwargs,
    oracle_connect_kwargs,
    postgres_conninfo,
    sqlserver_connect_kwargs,
)
from databricks_scripts.loader_sql import (
    MYSQL,
    ORACLE,
    POSTGRESQL,
    SQLSERVER,
    Dialect,
    qualified_name,
    select_source,
    source_table_parts,
)
from databricks_scripts.loader_types import decimal_from_unscaled, pg_numeric_as_scaled_int8
from databricks_scripts.loader_types_mssql_oracle import (
    ORACLE_DATE_METADATA,
    oracle_field,
    oracle_utc_columns,
    rows_to_exact_batch,
    sqlserver_field,
)

__all__ = [
    "PG_SESSION_OPTIONS",
    "mysql_connect_kwargs",
    "open_source",
    "oracle_connect_kwargs",
    "postgres_conninfo",
    "sqlserver_connect_kwargs",
]


class SourceReader:
    """Base: ``schema()`` probes the column types, ``batches(lower_bound)`` streams the rows."""

    dialect: Dialect

    def __init__(self, spec: Any, password: str | None, *, batch_bytes: int, batch_rows: int):
        self.spec = spec
        self.password = password
        self.batch_bytes = batch_bytes
        self.batch_rows = batch_rows
        parts = source_table_parts(
            spec.db_type, spec.source_catalog, spec.source_schema_name, spec.source_table_name
        )
        self.table_sql = qualified_name(self.dialect, *parts)
        # Row streams handed out by batches(): closed before the connection, because a load that
        # fails mid-stream leaves its stream suspended (ADBC then refuses to close the database).
        self._streams: list[Any] = []

    def _track(self, stream: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        self._streams.append(stream)
        return stream

    def close_streams(self) -> None:
        while self._streams:
            self._streams.pop().close()

    # Readers that can stream in cursor order and estimate their size (resumable first load).
    ordered_reads = False

    def query(
        self,
        *,
        incremental: bool = False,
        limit_zero: bool = False,
        ordered: bool = False,
        null_cursor: bool = False,
    ) -> str:
        column = self.spec.incremental_column
        return select_source(
            self.dialect,
            self.table_sql,
            cursor=column if incremental else None,
            limit_zero=limit_zero,
            order_by=column if ordered else None,
            null_cursor=column if null_cursor else None,
        )

    def estimated_rows(self) -> int | None:
        """The catalog's row estimate for the table (None: not known)."""
        return None

    def ordered_batches(
        self, lower_bound: object | None, *, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Rows with cursor > ``lower_bound`` (all non-NULL when None) in cursor order, or
        (``null_cursor``) the rows whose cursor IS NULL."""
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        raise NotImplementedError

    def _stream_rows(
        self,
        cur: Any,
        schema: pa.Schema,
        to_batch: Callable[[list[tuple], pa.Schema], pa.RecordBatch],
    ) -> Iterator[pa.RecordBatch]:
        """Batches of ``batch_rows`` from an executed DB-API cursor, closed when the stream ends."""

        def gen() -> Iterator[pa.RecordBatch]:
            try:
                while rows := cur.fetchmany(self.batch_rows):
                    yield to_batch(rows, schema)
            finally:
                cur.close()

        return self._track(gen())

    def close(self) -> None:
        try:
            self.close_streams()
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        """Subclasses close what they opened; runs after the streams, even if closing one failed."""


class PostgresReader(SourceReader):
    """ADBC through its low-level API (``adbc_driver_manager``), not its DB-API module.

    The DB-API layer imports ``pyarrow.dataset`` and prepares every statement (one more round
    trip): about a tenth of a second of fixed cost per load that buys this reader nothing.
    """

    dialect = POSTGRESQL

    def __init__(self, spec: Any, password: str | None, **kw: Any):
        super().__init__(spec, password, **kw)
        import adbc_driver_manager
        import adbc_driver_postgresql

        self._adbc = adbc_driver_manager
        self._db = adbc_driver_postgresql.connect(postgres_conninfo(spec.db_config_value, password))
        try:
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
        except BaseException:
            self._db.close()
            raise
        self._schema: pa.Schema | None = None

    def _execute(
        self, query: str, parameters: tuple | None = None, *, batch_hint: bool = False
    ) -> tuple[Any, pa.RecordBatchReader]:
        """Run one statement; returns (statement, its record batch stream). Close the statement."""
        stmt = self._adbc.AdbcStatement(self._conn)
        try:
            if batch_hint:
                stmt.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(self.batch_bytes)})
            stmt.set_sql_query(query)
            if parameters:
                stmt.bind(
                    pa.record_batch(
                        [pa.array([p]) for p in parameters],
                        names=[str(i) for i in range(len(parameters))],
                    )
                )
            handle, _ = stmt.execute_query()
            return stmt, pa.RecordBatchReader.from_stream(handle)
        except BaseException:
            stmt.close()
            raise

    def schema(self) -> pa.Schema:
        if self._schema is None:
            stmt, reader = self._execute(self.query(limit_zero=True))
            try:
                self._schema = reader.schema
                reader.read_all()
            finally:
                reader.close()
                stmt.close()
        return self._schema

    ordered_reads = True

    def estimated_rows(self) -> int | None:
        stmt, reader = self._execute(
            "SELECT c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c "
            "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
            (self.table_sql,),
        )
        try:
            values = reader.read_all().column(0).to_pylist()
        finally:
            reader.close()
            stmt.close()
        return values[0] if values and values[0] is not None and values[0] >= 0 else None

    def ordered_batches(
        self, lower_bound: object | None, *, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        return self.batches(lower_bound, ordered=not null_cursor, null_cursor=null_cursor)

    def read_query(
        self, *, incremental: bool, ordered: bool = False, null_cursor: bool = False
    ) -> tuple[str, dict[str, tuple[int, int]]]:
        """The streaming SELECT, and the NUMERIC columns it reads as scaled int8 (name -> p, s).

        NUMERIC(p<=18, s) columns are read as ``(col * 10^s)::int8`` (exact; the slowest part of
        an ADBC read is its NUMERIC-to-text reader); the other columns as they are. The WHERE
        clause still compares the table's own column, so the cursor keeps its type.
        """
        text = self.query(incremental=incremental, ordered=ordered, null_cursor=null_cursor)
        scaled = {
            f.name: ps for f in self.schema() if (ps := pg_numeric_as_scaled_int8(f)) is not None
        }
        if not scaled:
            return text, scaled
        columns = []
        for f in self.schema():
            name = self.dialect.quote(f.name)
            if f.name not in scaled:
                columns.append(name)
            elif scaled[f.name][1] == 0:
                columns.append(f"{name}::pg_catalog.int8 AS {name}")
            else:
                # Qualified operator and casts: never a source user's own (issue: a `*` defined
                # in a schema on the search_path ran once per row in the loader's session).
                factor = "1" + "0" * scaled[f.name][1]
                columns.append(
                    f"({name} OPERATOR(pg_catalog.*) {factor}::pg_catalog.numeric)"
                    f"::pg_catalog.int8 AS {name}"
                )
        prefix = "SELECT * FROM "
        if not text.startswith(prefix):
            raise ValueError(f"unexpected source query shape: {text[:40]!r}")
        return f"SELECT {', '.join(columns)} FROM {text[len(prefix) :]}", scaled

    def batches(
        self, lower_bound: object | None, *, ordered: bool = False, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        query, scaled = self.read_query(
            incremental=lower_bound is not None, ordered=ordered, null_cursor=null_cursor
        )
        params = None if lower_bound is None else (lower_bound,)
        stmt, reader = self._execute(query, params, batch_hint=True)
        schema = reader.schema
        convert = {schema.get_field_index(name): ps for name, ps in scaled.items()}
        if convert:
            schema = pa.schema(
                [
                    pa.field(f.name, pa.decimal128(*convert[i])) if i in convert else f
                    for i, f in enumerate(schema)
                ]
            )

        def gen() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    if convert:
                        arrays = [
                            decimal_from_unscaled(c, *convert[i]) if i in convert else c
                            for i, c in enumerate(batch.columns)
                        ]
                        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
                    yield batch
            finally:
                reader.close()
                stmt.close()

        return schema, self._track(gen())

    def _close_connection(self) -> None:
        try:
            self._conn.close()
        finally:
            self._db.close()


# ---- DB-API sources: types from the driver's description, batches from fetchmany -------------

_MYSQL_UNSIGNED = 32
_MYSQL_BINARY_CHARSET = 63


def mysql_arrow_type(field: Any) -> pa.DataType:
    """Arrow type of a pymysql result field (``cursor._result.fields`` entry)."""
    from pymysql.constants import FIELD_TYPE as F

    code = field.type_code
    unsigned = bool(field.flags & _MYSQL_UNSIGNED)
    if code in (F.DECIMAL, F.NEWDECIMAL):
        precision = field.length - (1 if field.scale > 0 else 0) - (0 if unsigned else 1)
        return pa.decimal128(max(precision, 1), field.scale)
    ints = {F.TINY: 8, F.SHORT: 16, F.INT24: 32, F.LONG: 32, F.LONGLONG: 64, F.YEAR: 16}
    if code in ints:
        bits = ints[code]
        if unsigned:
            return {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[bits]
        return {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}[bits]
    if code == F.FLOAT:
        return pa.float32()
    if code == F.DOUBLE:
        return pa.float64()
    if code == F.TIMESTAMP:
        return pa.timestamp("us", tz="UTC")
    if code == F.DATETIME:
        return pa.timestamp("us")
    if code in (F.DATE, F.NEWDATE):
        return pa.date32()
    if code == F.TIME:
        return pa.string()
    if code == F.BIT:
        return pa.binary()
    if code in (F.BLOB, F.TINY_BLOB, F.MEDIUM_BLOB, F.LONG_BLOB, F.STRING, F.VAR_STRING, F.VARCHAR):
        return pa.binary() if field.charsetnr == _MYSQL_BINARY_CHARSET else pa.string()
    return pa.string()


def _to_arrow_value(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_timestamp(t) and t.tz and isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    if pa.types.is_string(t) and not isinstance(value, str):
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return value


def rows_to_batch(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for i, field in enumerate(schema):
        values = [_to_arrow_value(r[i], field.type) for r in rows]
        columns.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class MySQLReader(SourceReader):
    dialect = MYSQL

    def __init__(self, spec: Any, password: str | None, **kw: Any):
        super().__init__(spec, password, **kw)
        import pymysql

        self._conn = pymysql.connect(**mysql_connect_kwargs(spec.db_config_value, password))

    def _schema_of(self, cur: Any) -> pa.Schema:
        return pa.schema([pa.field(f.name, mysql_arrow_type(f)) for f in cur._result.fields])

    def schema(self) -> pa.Schema:
        with self._conn.cursor() as cur:
            cur.execute(self.query(limit_zero=True))
            return self._schema_of(cur)

    ordered_reads = True

    def estimated_rows(self) -> int | None:
        parts = source_table_parts(
            self.spec.db_type, None, self.spec.source_schema_name, self.spec.source_table_name
        )
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT table_rows FROM information_schema.tables "
                "WHERE table_schema = COALESCE(%s, DATABASE()) AND table_name = %s",
                parts,
            )
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def ordered_batches(
        self, lower_bound: object | None, *, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        return self.batches(lower_bound, ordered=not null_cursor, null_cursor=null_cursor)

    def batches(
        self, lower_bound: object | None, *, ordered: bool = False, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        import pymysql.cursors

        cur = self._conn.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows stream
        if lower_bound is None:
            cur.execute(self.query(ordered=ordered, null_cursor=null_cursor))
        else:
            cur.execute(self.query(incremental=True, ordered=ordered), (lower_bound,))
        schema = self._schema_of(cur)
        return schema, self._stream_rows(cur, schema, rows_to_batch)

    def _close_connection(self) -> None:
        self._conn.close()


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
    table_sql: str, schema: pa.Schema, cursor: str | None, lower_bound: object | None
) -> tuple[str, tuple]:
    """The streaming SELECT for SQL Server and its parameters (pymssql ``%s`` style).

    Timestamps arrive truncated to microseconds (datetime2(7) has 100 ns steps), so the watermark
    is a truncated value: a timestamp cursor reads ``c >= watermark + 1 microsecond`` (= its
    truncated value is above the watermark), or a row in the same microsecond as the watermark
    would be read and appended again on every run. The bound is sent as text and cast on the
    server, so no driver conversion touches its precision.
    """
    text = f"SELECT * FROM {table_sql}"
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
    table_sql: str, schema: pa.Schema, cursor: str | None, lower_bound: object | None
) -> tuple[str, tuple]:
    """The streaming SELECT for Oracle and its parameters (``:1`` style).

    TIMESTAMP WITH (LOCAL) TIME ZONE columns are read as ``SYS_EXTRACT_UTC(col)`` (the driver
    would drop the zone); a timestamp cursor reads ``c >= watermark + 1 microsecond`` for the
    same truncation reason as SQL Server (TIMESTAMP(9)), with the bound sent as text.
    """
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


class DbApiReader(SourceReader):
    """SQL Server / Oracle through their DB-API drivers; exact types from the server's metadata.

    SQL Server: ``sys.dm_exec_describe_first_result_set`` (pymssql's description has only coarse
    type codes). Oracle: oracledb's ``cursor.description`` (type, precision, scale). Each batch is
    converted to that schema exactly (a value that does not fit fails the load naming the column).
    """

    def __init__(self, spec: Any, password: str | None, **kw: Any):
        self.dialect = SQLSERVER if spec.db_type == "sqlserver" else ORACLE
        super().__init__(spec, password, **kw)
        self._schema: pa.Schema | None = None
        if spec.db_type == "sqlserver":
            import pymssql

            self._conn = pymssql.connect(**sqlserver_connect_kwargs(spec.db_config_value, password))
        else:
            import oracledb

            self._conn = oracledb.connect(**oracle_connect_kwargs(spec.db_config_value, password))
            self._conn.outputtypehandler = _oracle_output_type_handler

    def schema(self) -> pa.Schema:
        if self._schema is not None:
            return self._schema
        cur = self._conn.cursor()
        try:
            if self.dialect is SQLSERVER:
                cur.execute(sqlserver_describe_query(), (self.query(limit_zero=True),))
                self._schema = sqlserver_schema_from_description(cur.fetchall())
            else:
                cur.execute(self.query(limit_zero=True))
                self._schema = pa.schema([oracle_field(tuple(d)) for d in cur.description])
                cur.fetchall()
        finally:
            cur.close()
        return self._schema

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        schema = self.schema()
        build = sqlserver_read if self.dialect is SQLSERVER else oracle_read
        query, params = build(self.table_sql, schema, self.spec.incremental_column, lower_bound)
        cur = self._conn.cursor()
        if self.dialect is ORACLE:
            cur.arraysize = min(self.batch_rows, 10_000)
        if params:
            cur.execute(query, params)
        else:
            cur.execute(query)
        names = [d[0] for d in cur.description]
        if names != schema.names:
            cur.close()
            raise ValueError(f"source columns changed while reading: {names} != {schema.names}")
        return schema, self._stream_rows(cur, schema, rows_to_exact_batch)

    def _close_connection(self) -> None:
        self._conn.close()


def open_source(
    spec: Any, password: str | None, *, batch_bytes: int, batch_rows: int
) -> SourceReader:
    kw = {"batch_bytes": batch_bytes, "batch_rows": batch_rows}
    if spec.db_type == "postgresql":
        return PostgresReader(spec, password, **kw)
    if spec.db_type == "mysql":
        return MySQLReader(spec, password, **kw)
    if spec.db_type in ("sqlserver", "oracle"):
        return DbApiReader(spec, password, **kw)
    raise ValueError(
        f"db_type {spec.db_type!r} is read with Spark on Databricks (set DATALOADER_ENGINE=spark)"
    )
