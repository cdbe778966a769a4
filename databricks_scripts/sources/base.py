"""The base of every Arrow-engine source reader (sources.readers, sources.dbapi)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from databricks_scripts.contract import KIND_INTERNAL
from databricks_scripts.failures import DataLoaderFailure
from databricks_scripts.load.columns import kept_schema
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import (
    Dialect,
    qualified_name,
    select_source,
    source_table_parts,
)


class SourceBusyError(DataLoaderFailure, RuntimeError):
    """A statement was about to run on a source connection while another result still streamed
    on it. Drivers that stream (pymysql's unbuffered cursor, pymssql, libpq's COPY) would drop
    the rest of that result without an error, so the reader refuses the statement instead."""

    kind = KIND_INTERNAL


class SourceStream:
    """The rows of one statement, as Arrow batches; ``done`` once exhausted, failed or closed.

    ``cleanup`` closes the statement's cursor: it runs when the stream ends, fails or is closed,
    even if it was never iterated (an executed cursor holds its connection until then).
    """

    def __init__(self, batches: Iterator[pa.RecordBatch], cleanup: Callable[[], None]):
        self._batches = batches
        self._cleanup = cleanup
        self.done = False

    def __iter__(self) -> SourceStream:
        return self

    def __next__(self) -> pa.RecordBatch:
        if self.done:
            raise StopIteration
        try:
            return next(self._batches)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
        finally:
            self._cleanup()


class SourceReader:
    """Base: ``schema()`` probes the column types, ``batches(lower_bound)`` streams the rows.

    One statement at a time: every statement first calls ``_statement()``, which refuses to run
    while a stream handed out earlier is still open (``SourceBusyError``). Readers whose database
    allows it (PostgreSQL, MySQL/MariaDB) run every statement of a load in one read-only
    REPEATABLE READ transaction, so the rows, the key snapshot and the verification counts come
    from one snapshot of the source.
    """

    dialect: Dialect

    def __init__(self, spec: LoadSpec, password: str | None, *, batch_bytes: int, batch_rows: int):
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
        self._streams: list[SourceStream] = []
        # Verification facts read at the snapshot (engines.arrow.verify): set by the readers that
        # hold one for the whole load.
        self.snapshot = False

    def _track(
        self, batches: Iterator[pa.RecordBatch], cleanup: Callable[[], None]
    ) -> SourceStream:
        stream = SourceStream(batches, cleanup)
        self._streams.append(stream)
        return stream

    def _statement(self) -> None:
        """Called before every statement on the reader's connection: one result at a time."""
        self._streams = [s for s in self._streams if not s.done]
        if self._streams:
            raise SourceBusyError(
                "a statement was about to run on the source connection while an earlier "
                "result was still being read; the loader reads one result at a time (the "
                "driver would silently drop the rest of the earlier one)"
            )

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
        select_list: str | None = None,
    ) -> str:
        column = self.spec.incremental_column
        if select_list is None and not limit_zero:
            select_list = self.select_list()
        return select_source(
            self.dialect,
            self.table_sql,
            cursor=column if incremental else None,
            limit_zero=limit_zero,
            order_by=column if ordered else None,
            null_cursor=column if null_cursor else None,
            select_list=select_list,
        )

    def select_list(self) -> str | None:
        """The quoted columns a row with ``columns_exclude`` reads (None: ``*``, every column)."""
        if not self.spec.columns_exclude:
            return None
        return ", ".join(self.dialect.quote(n) for n in self.schema().names)

    def kept(self, probed: pa.Schema) -> pa.Schema:
        """The probed schema without the row's ``columns_exclude`` (load.columns)."""
        return kept_schema(probed, self.spec.columns_exclude)

    def ordered_batches(
        self, lower_bound: object | None, *, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Rows with cursor > ``lower_bound`` (all non-NULL when None) in cursor order, or
        (``null_cursor``) the rows whose cursor IS NULL."""
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def comments(self) -> tuple[str | None, dict[str, str]]:
        """(the table's comment, {column: comment}) from the source's catalog (PostgreSQL
        ``COMMENT ON``, MySQL ``COMMENT``); (None, {}) where the reader does not read them."""
        return None, {}

    def estimated_rows(self) -> int | None:
        """The database's own row estimate of the table (catalog statistics), or None. Only a
        progress figure: never a count anything is checked against."""
        return None

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        raise NotImplementedError

    def key_batches(self, keys: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
        """Only the ``keys`` columns of every source row, streamed: delete detection's key
        snapshot (engines.arrow.deletes) and the key verification (engines.arrow.verify)."""
        raise NotImplementedError

    def count_rows(self, *above: object | None) -> tuple[int, ...]:
        """(every row, then for each bound how many rows have cursor > it; a None bound counts
        every row), in one statement, so from one snapshot (engines.arrow.verify)."""
        cursor = self.spec.incremental_column
        op = "OPERATOR(pg_catalog.>)" if self.dialect.name == "postgresql" else ">"
        columns, params = ["COUNT(*)"], []
        for bound in above:
            if bound is None or cursor is None:
                columns.append("COUNT(*)")
                continue
            params.append(bound)
            mark = self.dialect.placeholder(len(params), "above")
            columns.append(
                f"SUM(CASE WHEN {self.dialect.quote(cursor)} {op} {mark} THEN 1 ELSE 0 END)"
            )
        named = ", ".join(f"{c} AS n{i}" for i, c in enumerate(columns))
        return self._counts(f"SELECT {named} FROM {self.table_sql}", tuple(params))

    def key_bounds(self, key: str) -> tuple[int, int, int]:
        """(MIN, MAX, COUNT(*)) of an integer key column (deep verification's ranges)."""
        k = self.dialect.quote(key)
        low, high, rows = self._counts(
            f"SELECT MIN({k}), MAX({k}), COUNT(*) FROM {self.table_sql}", ()
        )
        return low, high, rows

    def key_range_batches(self, key: str, start: int, stop: int) -> Iterator[pa.RecordBatch]:
        """Every column of the rows with ``start <= key < stop``, streamed (deep verification)."""
        raise NotImplementedError(f"deep verification does not read {self.spec.db_type} yet")

    def range_where(self, key: str) -> str:
        k = self.dialect.quote(key)
        ge, lt = (
            ("OPERATOR(pg_catalog.>=)", "OPERATOR(pg_catalog.<)")
            if self.dialect.name == "postgresql"
            else (">=", "<")
        )
        first, second = self.dialect.placeholder(1, "start"), self.dialect.placeholder(2, "stop")
        return f" WHERE {k} {ge} {first} AND {k} {lt} {second}"

    def _counts(self, query: str, params: tuple) -> tuple[int, ...]:
        """The one row of a counting statement, NULLs as 0."""
        raise NotImplementedError

    def _stream_rows(
        self,
        cur: Any,
        schema: pa.Schema,
        to_batch: Callable[[list[tuple], pa.Schema], pa.RecordBatch],
    ) -> Iterator[pa.RecordBatch]:
        """Batches of ``batch_rows`` from an executed DB-API cursor, closed when the stream ends."""

        def gen() -> Iterator[pa.RecordBatch]:
            while rows := cur.fetchmany(self.batch_rows):
                yield to_batch(rows, schema)

        return self._track(gen(), cur.close)

    def close(self) -> None:
        try:
            self.close_streams()
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        """Subclasses close what they opened; runs after the streams, even if closing one failed."""
