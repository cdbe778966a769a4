"""Merge keys: set and unique in the rows a keyed load writes, checked before anything commits.

Used by every load of a table with ``merge_keys``: the MERGE spools its rows and checks them
before it starts; a first load (or a rebuild) of a keyed table, which runs as a full overwrite,
checks them while streaming and fails before the commit. Only the key columns stay in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    duplicate = _first_duplicate(data, keys)
    if duplicate is not None:
        count = _duplicate_count(data, keys)
        raise DataMismatch(
            f"merge keys {list(keys)} are not unique in the source rows read "
            f"({count} duplicated key(s), e.g. {duplicate})"
        )


def _sorted_keys(data: pa.Table, keys: tuple[str, ...]) -> list[pa.Array]:
    """The key columns sorted together. A sort holds the keys plus 8 bytes of index per row (a
    hash aggregation held ~80 bytes per row: 800 MiB for 10M keys)."""
    import pyarrow.compute as pc

    order = pc.sort_indices(data.select(list(keys)), sort_keys=[(k, "ascending") for k in keys])
    return [data.column(k).take(order) for k in keys]


def _adjacent_equal(columns: list[pa.Array]):
    import pyarrow.compute as pc

    same = None
    for column in columns:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        equal = pc.equal(column.slice(1), column.slice(0, len(column) - 1))
        same = equal if same is None else pc.and_(same, equal)
    return same


def _first_duplicate(data: pa.Table, keys: tuple[str, ...]) -> dict | None:
    import pyarrow.compute as pc

    if data.num_rows < 2:
        return None
    columns = _sorted_keys(data, keys)
    index = pc.index(_adjacent_equal(columns), True).as_py()
    if index < 0:
        return None
    return {k: c[index].as_py() for k, c in zip(keys, columns, strict=True)}


def _duplicate_count(data: pa.Table, keys: tuple[str, ...]) -> int:
    """How many distinct keys occur more than once (only computed once a duplicate is known)."""
    import pyarrow.compute as pc

    grouped = data.group_by(list(keys)).aggregate([([], "count_all")])
    return grouped.filter(pc.field("count_all") > 1).num_rows
