"""The base of every Arrow-engine source reader (loader_sources, loader_sources_dbapi)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from databricks_scripts.loader_sql import (
    Dialect,
    qualified_name,
    select_source,
    source_table_parts,
)


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

    def ordered_batches(
        self, lower_bound: object | None, *, null_cursor: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Rows with cursor > ``lower_bound`` (all non-NULL when None) in cursor order, or
        (``null_cursor``) the rows whose cursor IS NULL."""
        raise NotImplementedError

    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def estimated_rows(self) -> int | None:
        """The database's own row estimate of the table (catalog statistics), or None. Only a
        progress figure: never a count anything is checked against."""
        return None

    def batches(self, lower_bound: object | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        raise NotImplementedError

    def key_batches(self, keys: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
        """Only the ``keys`` columns of every source row, streamed (delete detection's key
        snapshot, loader_deletes). One statement, so one snapshot of the source."""
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
