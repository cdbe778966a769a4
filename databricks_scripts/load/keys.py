"""Merge keys: set and unique in the rows a keyed load writes, checked before anything commits.

Used by every load of a table with ``merge_keys``: the MERGE spools its rows and checks them
before it starts; a first load (or a rebuild) of a keyed table, which runs as a full overwrite,
checks them while streaming and fails before the commit. Only the key columns stay in memory.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from databricks_scripts.failures import DataMismatch


def spool_checked(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, keys: tuple[str, ...], path: Path
) -> int:
    """Write ``batches`` to ``path`` (Arrow IPC stream); refuse NULL keys at once, duplicate keys
    at the end. Keeps only the key columns in memory. Returns the number of rows spooled."""
    seen: list[pa.RecordBatch] = []
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            key_batch = batch.select(list(keys))
            check_keys(pa.Table.from_batches([key_batch]), keys, nulls_only=True)
            seen.append(key_batch)
            writer.write_batch(batch)
            rows += batch.num_rows
    if seen:
        check_keys(pa.Table.from_batches(seen), keys)
    return rows


def keys_checked(
    batches: Iterator[pa.RecordBatch], keys: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """``batches`` unchanged; NULL keys refused at once, duplicate keys after the last batch
    (before the writer commits). Keeps only the key columns in memory."""
    seen: list[pa.RecordBatch] = []
    for batch in batches:
        key_batch = _copied(batch.select(list(keys)))
        check_keys(pa.Table.from_batches([key_batch]), keys, nulls_only=True)
        seen.append(key_batch)
        yield batch
    if seen:
        check_keys(pa.Table.from_batches(seen), keys)


def _copied(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` in buffers of its own: a slice or selection would keep the whole source batch's
    allocation alive (its other columns could not be freed), for every batch of the load."""
    return pa.RecordBatch.from_arrays(
        [pa.concat_arrays([column]) for column in batch.columns], names=batch.schema.names
    )


def check_keys(data: pa.Table, keys: tuple[str, ...], *, nulls_only: bool = False) -> None:

    for k in keys:
        nulls = data.column(k).null_count
        if nulls:
            raise DataMismatch(
                f"merge key {k!r} is NULL in {nulls} source row(s); keys must be set"
            )
    if nulls_only:
        return
    found = _first_duplicate(data, keys)
    if found is not None:
        duplicate, count = found
        raise DataMismatch(
            f"merge keys {list(keys)} are not unique in the source rows read "
            f"({count} duplicated key(s), e.g. {duplicate})"
        )


def distinct_keys(data: pa.Table, keys: tuple[str, ...]) -> int:
    """How many distinct keys ``data`` holds, counted as a GROUP BY of the keys would.

    By sorting, not by a hash aggregation: a GROUP BY of 10M int keys took 4 s and +660 MiB, the
    sort 0.1 s and the keys' own size (bench/bench_floor.py, docs/loader.md). Rows with a NULL
    key (none in a table the loader wrote) are grouped by Arrow."""
    if data.num_rows == 0:
        return 0
    columns, with_nulls = _sorted_keys(data, keys)
    rows = len(columns[0])
    distinct = rows - _count(_adjacent_equal(columns)) if rows else 0
    if with_nulls is not None:
        distinct += with_nulls.group_by(list(keys)).aggregate([]).num_rows
    return distinct


def count_keys(
    batches: Iterable[pa.RecordBatch], keys: tuple[str, ...], rows: int
) -> tuple[int, int]:
    """(rows, distinct keys) of a stream of key batches; ``rows`` is how many it holds (a Delta
    version's count from its statistics). One integer, date or timestamp key is copied batch by
    batch into one NumPy array of that size and counted in place (:func:`_distinct_numbers`), so
    the keys are held once (not as a table plus its sorted copy: 10M keys, 80 -> 40 MiB); other
    keys as :func:`distinct_keys`."""
    import numpy as np

    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return 0, 0
    field = first.schema.field(keys[0])
    if len(keys) != 1 or not _sorts_as_numbers(field.type):
        table = pa.Table.from_batches([first, *batches])
        return table.num_rows, distinct_keys(table, keys)
    values: Any = None
    filled = 0
    spill: list[pa.RecordBatch] = []
    for batch in itertools.chain([first], batches):
        column = batch.column(0)
        if spill or column.null_count or filled + len(column) > rows:
            spill.append(batch)  # not the stream announced: counted as a table below
            continue
        chunk = column.to_numpy(zero_copy_only=False)
        if values is None:
            values = np.empty(rows, dtype=chunk.dtype)
        values[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if spill:
        head = (
            []
            if values is None
            else [pa.table({field.name: values[:filled]}).cast(pa.schema([field]))]
        )
        table = pa.concat_tables([*head, pa.Table.from_batches(spill)])
        return table.num_rows, distinct_keys(table, keys)
    return filled, _distinct_numbers(values[:filled]) if filled else 0


def _distinct_numbers(values: Any) -> int:
    """How many distinct values a non-empty 1-D NumPy array of integers, dates or timestamps
    holds; the array is overwritten. Dense keys (their span at most 4x their number, as serial
    ids are) are marked in a boolean array of that span, no larger than the keys at 4 bytes
    each: one pass (10M keys: 0.7 s sorted, 0.15 s marked). Other keys are sorted in place."""
    import numpy as np

    if values.dtype.kind == "M":
        values = values.view(np.int64)
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    if span <= 4 * len(values) and span - 1 <= np.iinfo(values.dtype).max:
        values -= values.dtype.type(low)  # in place: every difference fits the type
        seen = np.zeros(span, dtype=bool)
        seen[values] = True
        return int(np.count_nonzero(seen))
    values.sort()
    return len(values) - _count(_adjacent_equal([values]))


def _sorted_keys(data: pa.Table, keys: tuple[str, ...]) -> tuple[list, pa.Table | None]:
    """(the key columns of the rows with no NULL key, sorted together; the rows with one, or None).

    One integer, date or timestamp key is sorted in place as a NumPy array (a copy of the key
    column, nothing more); other keys by Arrow's sort, which holds the keys plus 8 bytes of index
    per row."""
    import pyarrow.compute as pc

    with_nulls = None
    if any(data.column(k).null_count for k in keys):
        data = data.select(list(keys))
        valid = functools.reduce(pc.and_, [pc.is_valid(data.column(k)) for k in keys])
        data, with_nulls = data.filter(valid), data.filter(pc.invert(valid))
    if len(keys) == 1 and _sorts_as_numbers(data.column(keys[0]).type):
        values = data.column(keys[0]).to_numpy()
        if not values.flags.writeable:  # a view of Arrow's buffer: sort a copy
            values = values.copy()
        values.sort()
        return [values], with_nulls
    order = pc.sort_indices(data.select(list(keys)), sort_keys=[(k, "ascending") for k in keys])
    return [data.column(k).take(order).combine_chunks() for k in keys], with_nulls


def _sorts_as_numbers(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_date(type_) or pa.types.is_timestamp(type_)


def _adjacent_equal(columns: list):
    """Per row after the first of the sorted ``columns``: equal to the row before it?"""
    import numpy as np
    import pyarrow.compute as pc

    same = None
    for column in columns:
        if isinstance(column, np.ndarray):
            equal = column[1:] == column[:-1]
        else:
            equal = pc.equal(column.slice(1), column.slice(0, len(column) - 1))
            equal = equal.to_numpy(zero_copy_only=False)
        same = equal if same is None else same & equal
    return same


def _count(mask) -> int:
    import numpy as np

    return int(np.count_nonzero(mask)) if mask is not None else 0


def _value(column, index: int, type_: pa.DataType):
    if isinstance(column, pa.Array):
        return column[index].as_py()
    return pa.array(column[index : index + 1]).cast(type_)[0].as_py()


def _first_duplicate(data: pa.Table, keys: tuple[str, ...]) -> tuple[dict, int] | None:
    """(the smallest duplicated key, how many distinct keys occur more than once), or None."""
    import numpy as np

    if data.num_rows < 2:
        return None
    columns, _ = _sorted_keys(data, keys)
    same = _adjacent_equal(columns)
    if same is None or not same.any():
        return None
    index = int(np.argmax(same))
    # A run of equal keys is one duplicated key: count the runs' first rows.
    starts = same & ~np.concatenate(([False], same[:-1]))
    key = {
        k: _value(c, index, data.schema.field(k).type) for k, c in zip(keys, columns, strict=True)
    }
    return key, int(np.count_nonzero(starts))
