"""Resumable first load (Arrow engine): a big incremental table's first load in cursor-ordered chunks.

An ``incremental`` table without merge keys whose first load (or forced full reload) reads a
source estimated above ``DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS`` rows is read in cursor order
and committed every ``DATALOADER_FIRST_LOAD_CHUNK_ROWS`` rows or so:

- the rows whose cursor is NULL first (one statement), then the others ``ORDER BY cursor`` (a
  second statement, streamed); a chunk ends only where the cursor value changes, so every value
  lies in exactly one chunk;
- the first chunk replaces the table (overwrite), the next ones are appended; each commit is fenced,
  names the attempt and carries ``dataloader.resumable = first_load`` (engines.arrow.commits);
- the chunks' watermark is the data itself: committed in cursor order, the destination's
  max(cursor) is exactly the value through which the source is loaded. A rerun whose destination's
  last commit is such a chunk of an attempt never recorded as Succeeded resumes: it first replaces
  the destination's NULL-cursor rows with the source's current ones (one commit, ``overwrite``
  with the predicate ``cursor IS NULL``: a NULL-cursor row inserted after the earlier attempt
  read its NULLs has no cursor to resume from, so the NULLs are read again, whole), then reads
  ``cursor > max(cursor of the destination)`` and appends, so the final table equals a one-shot
  load made when the resume began. This holds whether the load died, was stopped, or committed
  its last chunk but its success never reached the control database.

Readers see the table grow chunk by chunk in cursor order (the first chunk replaces the old
table). Text and float cursors, and sources that cannot stream in order, load in one commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from databricks_scripts.engines.arrow.commits import (
    commit_properties,
    fenced,
    stream_errors,
    unrecorded_commit,
)
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset, new_table_configuration
from databricks_scripts.engines.arrow.stream import Counted, peeked_reader
from databricks_scripts.load.watermark import Watermark, batch_max, max_watermark


@dataclass
class FirstLoadPlan:
    chunk_rows: int
    resume: bool = False  # continue an earlier attempt's chunks
    resume_from: Watermark | None = None  # the destination's max(cursor) when resuming


def _ordered_cursor_type(t: pa.DataType) -> bool:
    """Cursor types whose order and equality are the same in the database and in Arrow."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_decimal(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
    )


def plan_first_load(
    load: Any, source: Any, settings: tuple[int, int] | None, log: Callable[[str], None]
) -> FirstLoadPlan | None:
    """How this load goes in chunks, or None for a one-commit load."""
    spec = load.spec
    if settings is None or load.applied != "full" or load.cursor is None:
        return None
    chunk_rows, above = settings
    if spec.load_strategy != "incremental" or spec.merge_keys or above <= 0:
        return None
    if load.numeric_text or not getattr(source, "ordered_reads", False):
        return None
    if not _ordered_cursor_type(load.write_schema.field(load.cursor).type):
        return None
    if load.table is not None:
        earlier = unrecorded_commit(load.table, spec)
        if earlier is not None and earlier.resumable:
            reached = destination_max(load)
            log(
                f"resuming the first load of attempt {earlier.metadata_id} (destination version "
                f"{earlier.version}): its chunks are loaded through {load.cursor} = {reached!s}"
            )
            return FirstLoadPlan(chunk_rows, resume=True, resume_from=reached)
    estimate = source.estimated_rows()
    if estimate is None or estimate < above:
        return None
    log(
        f"first load of about {estimate:,} rows: committed in chunks of about {chunk_rows:,} "
        f"rows in {load.cursor} order; a rerun resumes after the last committed chunk"
    )
    return FirstLoadPlan(chunk_rows)


def destination_max(load: Any) -> Watermark | None:
    """max(cursor) of the destination, streamed one batch at a time."""
    top = None
    scanner = delta_dataset(load.table).scanner(columns=[load.cursor])
    for batch in scanner.to_batches():
        top = max_watermark(top, batch_max(batch.column(0), numeric_text=False))
    return top


def source_batches(plan: FirstLoadPlan, source: Any) -> Iterator[pa.RecordBatch]:
    """NULL cursors first (a resume reads them again: they replace the destination's), then the
    rest in cursor order; one statement at a time, each opened when the previous one is consumed.
    """
    _, nulls = source.ordered_batches(None, null_cursor=True)
    yield from nulls
    _, rest = source.ordered_batches(plan.resume_from)
    yield from rest


class _CursorChunks:
    """Cuts a cursor-ordered stream into chunks of at least ``chunk_rows`` rows, each ending where
    the cursor value changes (never inside the NULL cursors, which come first)."""

    def __init__(
        self,
        batches: Iterator[pa.RecordBatch],
        cursor: str,
        chunk_rows: int,
        *,
        nulls_alone: bool = False,
    ):
        self._batches = iter(batches)
        self._cursor = cursor
        self._chunk_rows = max(chunk_rows, 1)
        self._pending: pa.RecordBatch | None = None
        self.done = False
        # The first chunk is the NULL cursors alone (a resume replaces them in one commit).
        self._nulls_alone = nulls_alone

    def _next_batch(self) -> pa.RecordBatch | None:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        return next(self._batches, None)

    def chunk(self) -> Iterator[pa.RecordBatch]:
        if self._nulls_alone:
            self._nulls_alone = False
            yield from self._null_chunk()
            return
        rows = 0
        while (batch := self._next_batch()) is not None:
            cut = None
            if rows + batch.num_rows >= self._chunk_rows:
                cut = self._cut(batch, self._chunk_rows - rows)
            if cut is None:
                rows += batch.num_rows
                yield batch
                continue
            if cut:
                yield batch.slice(0, cut)
            self._pending = batch.slice(cut)
            return
        self.done = True

    def _null_chunk(self) -> Iterator[pa.RecordBatch]:
        """The leading rows whose cursor is NULL (may be none)."""
        import pyarrow.compute as pc

        while (batch := self._next_batch()) is not None:
            first_valid = pc.index(pc.is_valid(batch.column(self._cursor)), True).as_py()
            if first_valid < 0:
                yield batch
                continue
            if first_valid:
                yield batch.slice(0, first_valid)
            self._pending = batch.slice(first_valid)
            return
        self.done = True

    def _cut(self, batch: pa.RecordBatch, needed: int) -> int | None:
        """Where to end the chunk in ``batch`` (after at least ``needed`` of its rows): the first
        row whose cursor differs from the row before; None when the batch has no such place."""
        import pyarrow.compute as pc

        column = batch.column(self._cursor)
        last = max(needed, 1) - 1
        value = column[last]
        if not value.is_valid:
            return None
        tail = column.slice(last)
        differs = pc.fill_null(pc.not_equal(tail, value), True)
        index = pc.index(differs, True).as_py()
        return None if index < 0 else last + index


def write_first_load_chunks(
    load: Any, batches: Iterator[pa.RecordBatch], plan: FirstLoadPlan
) -> tuple[int, bool]:
    """Commit the stream chunk by chunk; returns (rows written, committed anything)."""
    from deltalake import write_deltalake

    chunks = _CursorChunks(batches, load.cursor, plan.chunk_rows, nulls_alone=plan.resume)
    written, committed, first = 0, False, not plan.resume
    nulls = plan.resume  # the resume's first commit: the source's NULL cursors replace ours
    while not chunks.done:
        counted = Counted(chunks.chunk())
        if nulls:
            # Committed even when empty: NULL-cursor rows gone from the source go here too.
            reader = pa.RecordBatchReader.from_batches(load.write_schema, fenced(counted, load))
        else:
            reader = peeked_reader(load.write_schema, fenced(counted, load))
        if reader is None:
            continue
        with stream_errors(load):
            write_deltalake(
                load.table if load.table is not None else str(load.destination),
                reader,
                mode="overwrite" if first or nulls else "append",
                predicate=_null_predicate(load.cursor) if nulls else None,
                schema_mode="overwrite" if first and load.rebuild else "merge",
                commit_properties=commit_properties(load.spec, load.applied, resumable=True),
                target_file_size=load.target_file_size,
                configuration=new_table_configuration(load.write_schema)
                if load.table is None
                else None,
            )
        nulls = False
        if load.table is None:
            from deltalake import DeltaTable

            load.table = DeltaTable(str(load.destination))
        written += counted.rows
        committed, first = True, False
        if load.stop is not None and not chunks.done:
            load.stop.leave_commit()
    return written, committed


def _null_predicate(cursor: str) -> str:
    """``"cursor" IS NULL`` for delta-rs's predicate overwrite (quoted: case and odd names)."""
    return '"' + cursor.replace('"', '""') + '" IS NULL'
