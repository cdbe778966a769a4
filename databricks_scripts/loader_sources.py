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
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from loader_sql import (
    MYSQL,
    ORACLE,
    POSTGRESQL,
    SQLSERVER,
    Dialect,
    qualified_name,
    select_source,
    source_table_parts,
)
from loader_types import decimal_from_unscaled, pg_numeric_as_scaled_int8

DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_BATCH_ROWS = 50_000


def _libpq_value(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def postgres_conninfo(config: Mapping[str, Any], password: str | None) -> str:
    """libpq key/value conninfo (not a URL, so the password is never part of a URL in errors).

    Keys other than host/port/database/user/password_secret (sslmode, connect_timeout, ...) are
    passed through to libpq.
    """
    pairs: dict[str, object] = {}
    for key, value in config.items():
        if key in ("password_secret", "database") or value is None:
            continue
        pairs[key] = value
    if config.get("database"):
        pairs["dbname"] = config["database"]
    if password is not None:
        pairs["password"] = password
    return " ".join(f"{k}={_libpq_value(v)}" for k, v in pairs.items())


def mysql_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "host": config.get("host", "127.0.0.1"),
        "port": int(config.get("port", 3306)),
        "user": config.get("user"),
        "database": config.get("database"),
        "charset": "utf8mb4",
        # TIMESTAMP columns are UTC instants: read them in UTC and keep the zone.
        "init_command": "SET time_zone = '+00:00'",
    }
    if password is not None:
        kwargs["password"] = password
    if config.get("connect_timeout"):
        kwargs["connect_timeout"] = int(config["connect_timeout"])
    return kwargs


def sqlserver_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "server": config.get("host"),
        "port": str(config.get("port", 1433)),
        "user": config.get("user"),
        "database": config.get("database"),
        "charset": "UTF-8",
        "login_timeout": int(config.get("connect_timeout", 30)),
        "as_dict": False,
    }
    if password is not None:
        kwargs["password"] = password
    return kwargs


def oracle_connect_kwargs(config: Mapping[str, Any], password: str | None) -> dict[str, Any]:
    """oracledb thin-mode parameters; ``database`` is the service name."""
    kwargs: dict[str, Any] = {
        "user": config.get("user"),
        "host": config.get("host"),
        "port": int(config.get("port", 1521)),
        "service_name": config.get("service_name") or config.get("database"),
    }
    if password is not None:
        kwargs["password"] = password
    return kwargs


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

    def query(self, *, incremental: bool = False, limit_zero: bool = False) -> str:
        cursor = self.spec.incremental_column if incremental else None
        return select_source(self.dialect, self.table_sql, cursor=cursor, limit_zero=limit_zero)

    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        raise NotImplementedError

    def close(self) -> None:
        self.close_streams()


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

    def read_query(self, *, incremental: bool) -> tuple[str, dict[str, tuple[int, int]]]:
        """The streaming SELECT, and the NUMERIC columns it reads as scaled int8 (name -> p, s).

        NUMERIC(p<=18, s) columns are read as ``(col * 10^s)::int8`` (exact; the slowest part of
        an ADBC read is its NUMERIC-to-text reader); the other columns as they are. The WHERE
        clause still compares the table's own column, so the cursor keeps its type.
        """
        text = self.query(incremental=incremental)
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
                columns.append(f"{name}::int8 AS {name}")
            else:
                factor = "1" + "0" * scaled[f.name][1]
                columns.append(f"({name} * {factor}::numeric)::int8 AS {name}")
        prefix = "SELECT * FROM "
        if not text.startswith(prefix):
            raise ValueError(f"unexpected source query shape: {text[:40]!r}")
        return f"SELECT {', '.join(columns)} FROM {text[len(prefix) :]}", scaled

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        query, scaled = self.read_query(incremental=lower_bound is not None)
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

    def close(self) -> None:
        try:
            self.close_streams()
        finally:
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

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        import pymysql.cursors

        cur = self._conn.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows stream
        if lower_bound is None:
            cur.execute(self.query())
        else:
            cur.execute(self.query(incremental=True), (lower_bound,))
        schema = self._schema_of(cur)

        def gen() -> Iterator[pa.RecordBatch]:
            try:
                while rows := cur.fetchmany(self.batch_rows):
                    yield rows_to_batch(rows, schema)
            finally:
                cur.close()

        return schema, self._track(gen())

    def close(self) -> None:
        try:
            self.close_streams()
        finally:
            self._conn.close()


def _infer_type(values: list[Any]) -> pa.DataType:
    sample = next((v for v in values if v is not None), None)
    if sample is None:
        return pa.string()
    if isinstance(sample, decimal.Decimal):
        exps = [v.as_tuple() for v in values if isinstance(v, decimal.Decimal)]
        scale = max(-e.exponent for e in exps if isinstance(e.exponent, int))
        return pa.decimal128(38, max(scale, 0))
    return pa.array([sample]).type


class DbApiReader(SourceReader):
    """SQL Server / Oracle through their DB-API drivers (types inferred from the first batch)."""

    def __init__(self, spec: Any, password: str | None, **kw: Any):
        self.dialect = SQLSERVER if spec.db_type == "sqlserver" else ORACLE
        super().__init__(spec, password, **kw)
        if spec.db_type == "sqlserver":
            import pymssql

            self._conn = pymssql.connect(**sqlserver_connect_kwargs(spec.db_config_value, password))
        else:
            import oracledb

            self._conn = oracledb.connect(**oracle_connect_kwargs(spec.db_config_value, password))

    def schema(self) -> pa.Schema:
        cur = self._conn.cursor()
        try:
            cur.execute(self.query(limit_zero=True))
            return pa.schema([pa.field(d[0], pa.string()) for d in cur.description])
        finally:
            cur.close()

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        cur = self._conn.cursor()
        if lower_bound is None:
            cur.execute(self.query())
        else:
            cur.execute(self.query(incremental=True), (lower_bound,))
        names = [d[0] for d in cur.description]
        first = cur.fetchmany(self.batch_rows)
        schema = pa.schema(
            [pa.field(n, _infer_type([r[i] for r in first])) for i, n in enumerate(names)]
        )

        def gen() -> Iterator[pa.RecordBatch]:
            try:
                rows = first
                while rows:
                    yield rows_to_batch(rows, schema)
                    rows = cur.fetchmany(self.batch_rows)
            finally:
                cur.close()

        return schema, self._track(gen())

    def close(self) -> None:
        try:
            self.close_streams()
        finally:
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
