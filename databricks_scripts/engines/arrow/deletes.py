"""Delete detection on the Arrow engine (``delete_detection`` soft / hard, merge loads).

A keyed load (merge, or incremental with merge keys) spools the rows it read, then reads the
source's current key set (key columns only, streamed) and the destination's live keys. Keys live in
the destination but gone from the source (and not among the rows read) are the deletes; above
``delete_max_fraction`` of the live rows the load fails before anything is written. The upserts and
the deletes are ONE Delta MERGE, so one commit: soft sets ``__DELETED_AT`` (the load's time) on
the gone rows and clears it on a key that comes back; hard deletes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from databricks_scripts.contract import DELETED_AT
from databricks_scripts.engines.arrow.commits import commit_properties
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset, new_table_configuration
from databricks_scripts.load.history_rules import (
    TIMESTAMP_UTC,
    WriterHooks,
    assignments,
    check_floor,
    check_source_columns,
    gone_keys,
    key_schema,
    key_snapshot,
    load_time,
    merge_metrics,
    q,
    read_spool,
    spooled,
)
from databricks_scripts.load.keys import keys_checked
from databricks_scripts.load.sql import delta_merge_predicate
from databricks_scripts.load.types import cast_batch

GONE_FLAG = "__dataloader_gone"  # a MERGE-source-only column, never named in an update/insert


def live_keys(load: Any, soft: bool) -> pa.Table:
    """The destination's keys not already marked deleted."""
    import pyarrow.compute as pc

    keys = list(load.spec.merge_keys)
    has_flag = DELETED_AT in load.plan.write_schema.names  # destination (+ new source) columns
    flt = pc.field(DELETED_AT).is_null() if soft and has_flag else None
    live = delta_dataset(load.table).to_table(columns=keys, filter=flt)
    return pa.Table.from_batches(
        [cast_batch(b, key_schema(load)) for b in live.to_batches()], key_schema(load)
    )


def _gone_rows(schema: pa.Schema, gone: pa.Table) -> pa.RecordBatch:
    """One row per gone key: the key columns set, every other column NULL."""
    arrays = [
        gone.column(f.name).combine_chunks()
        if f.name in gone.column_names
        else pa.nulls(gone.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _staged(path: Path, gone: pa.Table, soft: bool, now: Any) -> Iterator[pa.RecordBatch]:
    """The MERGE source: the rows read, then the gone keys (soft: __DELETED_AT set on those)."""
    with pa.OSFile(str(path), "rb") as stream:
        reader = pa.ipc.open_stream(stream)
        extra = pa.field(DELETED_AT, TIMESTAMP_UTC) if soft else pa.field(GONE_FLAG, pa.bool_())
        schema = reader.schema.append(extra)
        for batch in reader:
            fill = (
                pa.nulls(batch.num_rows, TIMESTAMP_UTC)
                if soft
                else pa.array([False] * batch.num_rows, pa.bool_())
            )
            yield pa.RecordBatch.from_arrays([*batch.columns, fill], schema=schema)
        if gone.num_rows:
            rows = _gone_rows(reader.schema, gone)
            mark = pa.array([now if soft else True] * gone.num_rows, extra.type)
            yield pa.RecordBatch.from_arrays([*rows.columns, mark], schema=schema)


def write_with_deletes(
    load: Any, batches: Iterator[pa.RecordBatch], tracker: Any, *, hooks: WriterHooks
):
    """Upsert the rows read and apply the source's deletes in one MERGE commit."""
    check_source_columns(load)
    spec = load.spec
    keys = list(spec.merge_keys)
    soft = spec.delete_detection == "soft"
    with spooled(load, batches) as (path, rows):
        read_keys = read_spool(path, keys)
        snapshot = key_snapshot(load, hooks)
        with hooks.step("check deletes"):
            live = live_keys(load, soft)
            gone = gone_keys(live, snapshot, read_keys, keys)
            check_floor(spec, gone.num_rows, live.num_rows)
        if rows == 0 and gone.num_rows == 0:
            return 0, False
        now = load_time()
        staged = _staged(path, gone, soft, now)
        first = next(staged)
        schema = first.schema

        def chain():
            yield first
            yield from staged

        columns = [f.name for f in load.write_schema]
        if soft:
            columns.append(DELETED_AT)
        values = assignments(columns)
        evolve = bool(load.plan.added_columns) or (
            soft and DELETED_AT not in load.plan.write_schema.names
        )
        with hooks.stream_errors(load):
            merger = load.table.merge(
                pa.RecordBatchReader.from_batches(schema, hooks.fenced(chain(), load)),
                predicate=delta_merge_predicate(keys),
                source_alias="s",
                target_alias="t",
                merge_schema=evolve,
                streamed_exec=True,
                commit_properties=commit_properties(spec, load.applied),
            )
            if soft:
                merger = (
                    merger.when_matched_update(values, predicate=f"s.{q(DELETED_AT)} IS NULL")
                    .when_matched_update(
                        assignments([DELETED_AT]),
                        predicate=f"s.{q(DELETED_AT)} IS NOT NULL",
                    )
                    .when_not_matched_insert(values, predicate=f"s.{q(DELETED_AT)} IS NULL")
                )
            else:
                merger = (
                    merger.when_matched_delete(predicate=f"s.{q(GONE_FLAG)}")
                    .when_matched_update(values, predicate=f"NOT s.{q(GONE_FLAG)}")
                    .when_not_matched_insert(values, predicate=f"NOT s.{q(GONE_FLAG)}")
                )
            metrics = merger.execute()
    return merge_metrics(metrics), True


def write_first_soft(
    load: Any, batches: Iterator[pa.RecordBatch], tracker: Any, *, hooks: WriterHooks
):
    """The first load of a soft-delete table: the rows read, with an empty __DELETED_AT."""
    from deltalake import write_deltalake

    check_source_columns(load)
    schema = load.write_schema.append(pa.field(DELETED_AT, TIMESTAMP_UTC))

    def with_flag():
        for batch in keys_checked(batches, tuple(load.spec.merge_keys)):
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.nulls(batch.num_rows, TIMESTAMP_UTC)], schema=schema
            )

    reader = pa.RecordBatchReader.from_batches(schema, hooks.fenced(with_flag(), load))
    with hooks.stream_errors(load):
        write_deltalake(
            str(load.destination),
            reader,
            mode="overwrite",
            schema_mode="overwrite",
            commit_properties=commit_properties(load.spec, load.applied),
            target_file_size=load.target_file_size,
            configuration=new_table_configuration(schema) if load.table is None else None,
        )
    return tracker.rows_read, True
