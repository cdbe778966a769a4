"""SCD type 2 on the Arrow engine (``load_strategy = 'scd2'``): one row per version.

Each version has ``__START_AT`` (the incremental column's value when it is a timestamp or date,
else the load's time) and ``__END_AT`` (NULL for the current version). The rows read are compared
with the current versions of their keys on every non-key column, NULL-safe (technical columns
excluded): a changed row closes its current version (``__END_AT`` = the new ``__START_AT``) and
adds a new one, a new key adds its first version, an unchanged row writes nothing. With
``delete_detection`` the current version of a key gone from the source is closed at the load's
time (soft: ``__DELETED_AT`` set on it too); history is never deleted. Closing and adding are ONE
Delta MERGE (the staged-union pattern: close rows match the current version, new versions never
match and are inserted), so one commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from databricks_scripts.contract import DELETED_AT, END_AT, START_AT
from databricks_scripts.engines.arrow.commits import commit_properties
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset, new_table_configuration
from databricks_scripts.load.history_rules import (
    TIMESTAMP_UTC,
    WriterHooks,
    assignments,
    check_floor,
    check_source_columns,
    gone_keys,
    key_snapshot,
    load_time,
    merge_metrics,
    q,
    read_spool,
    spooled,
)
from databricks_scripts.load.sql import delta_merge_predicate
from databricks_scripts.load.types import cast_batch

MATCHED = "__dataloader_current"  # marks a joined current version; never written


def version_start(read: pa.Table, cursor: str | None, now: Any) -> pa.Array:
    """__START_AT of each row read: its cursor value (timestamp/date; NULL -> now), else now."""
    import pyarrow.compute as pc

    fallback = pa.array([now] * read.num_rows, TIMESTAMP_UTC)
    if cursor is None:
        return fallback
    col = read.column(cursor).combine_chunks()
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("us", tz=col.type.tz)) if col.type.unit != "us" else col
        start = (
            col.cast(TIMESTAMP_UTC)
            if col.type.tz
            else col.cast(pa.timestamp("us")).cast(TIMESTAMP_UTC)
        )
    elif pa.types.is_date(col.type):
        start = col.cast(pa.timestamp("us")).cast(TIMESTAMP_UTC)
    else:
        return fallback
    return pc.if_else(pc.is_null(start), fallback, start)


def differs(a: pa.Array, b: pa.Array) -> pa.Array:
    """a IS DISTINCT FROM b, element-wise (NULL equals NULL; NaN equals NaN)."""
    import pyarrow.compute as pc

    both = pc.and_(pc.is_valid(a), pc.is_valid(b))
    ne = pc.fill_null(pc.not_equal(a, b), False)
    if pa.types.is_floating(a.type):
        ne = pc.and_(ne, pc.invert(pc.and_(pc.is_nan(a), pc.is_nan(b))))
    return pc.if_else(both, ne, pc.xor(pc.is_valid(a), pc.is_valid(b)))


def current_versions(load: Any, columns: list[str], read_keys: pa.Table) -> pa.Table:
    """The destination's current versions (``__END_AT`` NULL) of the keys read, the ``columns``
    it has. The first key column filters the scan, so memory follows the rows read, not the
    table."""
    import pyarrow.compute as pc

    have = [
        c for c in columns if c in load.plan.write_schema.names and c not in load.plan.added_columns
    ]
    first = load.spec.merge_keys[0]
    wanted = pc.unique(read_keys.column(first).combine_chunks())
    table = delta_dataset(load.table).to_table(
        columns=have, filter=pc.field(END_AT).is_null() & pc.field(first).isin(wanted)
    )
    schema = pa.schema([load.plan.write_schema.field(c) for c in have])
    return pa.Table.from_batches([cast_batch(b, schema) for b in table.to_batches()], schema)


def current_keys(load: Any) -> pa.Table:
    """The key columns of every current version (delete detection's live keys)."""
    import pyarrow.compute as pc

    keys = list(load.spec.merge_keys)
    schema = pa.schema([load.plan.write_schema.field(k) for k in keys])
    table = delta_dataset(load.table).to_table(columns=keys, filter=pc.field(END_AT).is_null())
    return pa.Table.from_batches([cast_batch(b, schema) for b in table.to_batches()], schema)


def compare(read: pa.Table, current: pa.Table, keys: list[str]) -> tuple[pa.Table, pa.Table]:
    """(rows that are new versions, keys whose current version they close)."""
    import pyarrow.compute as pc

    others = [c for c in current.column_names if c not in keys]
    renamed = current.rename_columns(
        [c if c in keys else f"__t__{c}" for c in current.column_names]
    )
    renamed = renamed.append_column(MATCHED, pa.array([True] * renamed.num_rows, pa.bool_()))
    joined = read.join(renamed, keys, join_type="left outer", use_threads=False)
    matched = pc.fill_null(joined.column(MATCHED), False).combine_chunks()
    changed = pa.array([False] * joined.num_rows, pa.bool_())
    for name in read.column_names:
        if name in keys:
            continue
        a = joined.column(name).combine_chunks()
        b = (
            joined.column(f"__t__{name}").combine_chunks()
            if name in others
            else pa.nulls(joined.num_rows, a.type)
        )
        changed = pc.or_(changed, differs(a, b))
    new_version = pc.or_(pc.invert(matched), changed)
    closing = pc.and_(matched, changed)
    return joined.filter(new_version).select(read.column_names), joined.filter(closing)


def _staged(load: Any, versions: pa.Table, closes: pa.Table, soft: bool) -> pa.Table:
    """The MERGE source: close rows (__END_AT set) then new versions (__END_AT NULL)."""
    fields = list(load.write_schema) + [
        pa.field(START_AT, TIMESTAMP_UTC),
        pa.field(END_AT, TIMESTAMP_UTC),
    ]
    if soft:
        fields.append(pa.field(DELETED_AT, TIMESTAMP_UTC))
    schema = pa.schema(fields)

    def block(table: pa.Table) -> pa.Table:
        n = table.num_rows
        return pa.table(
            [
                table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type)
                for f in schema
            ],
            schema=schema,
        )

    return pa.concat_tables([block(closes), block(versions)])


def write_scd2(load: Any, batches: Iterator[pa.RecordBatch], tracker: Any, *, hooks: WriterHooks):
    """Close changed and gone current versions and add the new ones, in one commit."""
    check_source_columns(load)
    spec = load.spec
    keys = list(spec.merge_keys)
    detect, soft = spec.delete_detection != "none", spec.delete_detection == "soft"
    now = load_time()
    with spooled(load, batches) as (path, _rows):
        read = read_spool(path)
        if load.table is None:
            versions, closes = read, read.slice(0, 0)
        else:
            with hooks.step("compare with current versions"):
                columns = [f.name for f in load.write_schema]
                current = current_versions(load, columns, read.select(keys))
                versions, closes = compare(read, current, keys)
        starts = version_start(versions, load.cursor, now)
        versions = versions.append_column(pa.field(START_AT, TIMESTAMP_UTC), starts)
        # A closed version ends where its replacement starts (same row read, same start).
        closes = closes.select(keys).append_column(
            pa.field(END_AT, TIMESTAMP_UTC), version_start(closes, load.cursor, now)
        )
        if detect and load.table is not None:
            snapshot = key_snapshot(load, hooks)
            with hooks.step("check deletes"):
                live = current_keys(load)
                gone = gone_keys(live, snapshot, read.select(keys), keys)
                check_floor(spec, gone.num_rows, live.num_rows)
            gone = gone.append_column(
                pa.field(END_AT, TIMESTAMP_UTC), pa.array([now] * gone.num_rows, TIMESTAMP_UTC)
            )
            if soft:
                closes = closes.append_column(
                    pa.field(DELETED_AT, TIMESTAMP_UTC), pa.nulls(closes.num_rows, TIMESTAMP_UTC)
                )
                gone = gone.append_column(
                    pa.field(DELETED_AT, TIMESTAMP_UTC),
                    pa.array([now] * gone.num_rows, TIMESTAMP_UTC),
                )
            closes = pa.concat_tables([closes, gone])
        if versions.num_rows == 0 and closes.num_rows == 0:
            return 0, False
        staged = _staged(load, versions, closes, soft)
        return _commit(load, staged, keys, soft, hooks)


def _commit(load: Any, staged: pa.Table, keys: list[str], soft: bool, hooks: WriterHooks):
    from deltalake import write_deltalake

    reader = pa.RecordBatchReader.from_batches(
        staged.schema, hooks.fenced(iter(staged.to_batches()), load)
    )
    props = commit_properties(load.spec, load.applied)
    if load.table is None:
        with hooks.stream_errors(load):
            write_deltalake(
                str(load.destination),
                reader,
                mode="overwrite",
                schema_mode="overwrite",
                commit_properties=props,
                target_file_size=load.target_file_size,
                configuration=new_table_configuration(staged.schema),
            )
        return staged.num_rows, True
    end = q(END_AT)
    values = assignments(staged.column_names)
    closing = assignments([END_AT, DELETED_AT] if soft else [END_AT])
    evolve = bool(load.plan.added_columns) or (
        soft and DELETED_AT not in load.plan.write_schema.names
    )
    with hooks.stream_errors(load):
        metrics = (
            load.table.merge(
                reader,
                predicate=f"{delta_merge_predicate(keys)} AND t.{end} IS NULL AND s.{end} IS NOT NULL",
                source_alias="s",
                target_alias="t",
                merge_schema=evolve,
                streamed_exec=True,
                commit_properties=props,
            )
            .when_matched_update(closing)
            .when_not_matched_insert(values, predicate=f"s.{end} IS NULL")
            .execute()
        )
    return merge_metrics(metrics), True
