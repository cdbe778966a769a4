"""The source stream as the Arrow engine's writers consume it: cast, counted, cursor tracked.

``Tracker`` casts each source batch to the write schema, counts rows, keeps the cursor's maximum
and logs progress; ``peeked_reader`` makes a reader only when there is a row to write (so an empty
incremental read makes no empty commit); ``Counted`` counts what a filter let through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pyarrow as pa

from databricks_scripts.load.types import cast_batch
from databricks_scripts.load.watermark import (
    Watermark,
    batch_max,
    check_text_cursor,
    max_watermark,
    text_shape,
)


class Progress:
    """Logs 'rows so far' at most every ``interval`` seconds (0: after every batch), and of the
    source's estimated total when it gave one (``of ~N estimated, P%``)."""

    def __init__(
        self,
        log: Callable[[str], None],
        label: str,
        interval: float,
        estimated_total: int | None = None,
    ):
        self._log = log
        self._label = label
        self._interval = interval
        self._last = time.monotonic()
        self.rows = 0
        self.estimated_total = estimated_total

    def add(self, n: int) -> None:
        self.rows += n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._log(f"{self._label}: {self.figure()}")

    def figure(self) -> str:
        text = f"{self.rows:,} rows read so far"
        total = self.estimated_total
        if total:
            text += f" (of ~{total:,} estimated, {min(100 * self.rows // total, 100)}%)"
        return text


class Tracker:
    """Wraps the source stream: casts to the write schema, counts rows, tracks the cursor max."""

    def __init__(
        self,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        cursor: str | None,
        numeric_text: bool,
        progress: Progress,
        text_cursor: tuple[str, str] | None | bool = False,
    ):
        self._batches = batches
        self.schema = schema
        self._cursor = cursor
        self._numeric_text = numeric_text
        self._progress = progress
        self.rows_read = 0
        self.max_cursor: Watermark | None = None
        # A text cursor's (shape, example) so far (False: not a text cursor; see
        # watermark.check_text_cursor): values of mixed formats fail the load before its commit.
        self._text_cursor = text_cursor

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for raw in self._batches:
            if raw.num_rows == 0:
                continue
            batch = cast_batch(raw, self.schema)
            self.rows_read += batch.num_rows
            if self._cursor is not None and self._text_cursor is not False:
                self._text_cursor = check_text_cursor(
                    batch.column(self._cursor), self._text_cursor or None, self._cursor
                )
            if self._cursor is not None:
                self.max_cursor = max_watermark(
                    self.max_cursor,
                    batch_max(batch.column(self._cursor), numeric_text=self._numeric_text),
                )
            self._progress.add(batch.num_rows)
            yield batch


def peeked_reader(schema: pa.Schema, batches: Iterator[pa.RecordBatch]):
    """A RecordBatchReader over ``batches``, or None when they hold no rows (so no empty commit)."""
    it = iter(batches)
    first = next((b for b in it if b.num_rows), None)
    if first is None:
        return None

    def chain() -> Iterator[pa.RecordBatch]:
        yield first
        yield from it

    return pa.RecordBatchReader.from_batches(schema, chain())


class Counted:
    def __init__(self, batches: Iterator[pa.RecordBatch]):
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for b in self._batches:
            self.rows += b.num_rows
            yield b


def progress_estimate(source, applied: str) -> int | None:
    """The source's row estimate for a full load's progress figure (an incremental load reads a
    part of the table: no total to show). A failed estimate only costs the figure."""
    if applied != "full":
        return None
    try:
        return source.estimated_rows()
    except Exception:  # noqa: BLE001 - statistics are a nicety; the load goes on without them
        return None


def text_cursor_start(load) -> tuple[str, str] | None | bool:
    """False unless the cursor is text; else the stored watermark's (shape, value) or None."""
    field = load.write_schema.field(load.cursor) if load.cursor else None
    if field is None or load.numeric_text or not pa.types.is_string(field.type):
        return False
    if isinstance(load.watermark, str):
        return text_shape(load.watermark), load.watermark
    return None
