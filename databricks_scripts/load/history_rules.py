"""What the Arrow engine's deletes and history writers (``engines.arrow.deletes``, ``engines.arrow.scd2``) share:
the technical columns, the writer hooks, when a table keeps history and the strategy it then gets,
the spooled source rows, the key snapshot, the delete floor, and MERGE expressions.

Apart from ``engines.arrow.history`` (which writer runs), so the writers import this module and
``engines.arrow.history`` imports them: no import cycle.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from databricks_scripts.contract import DELETED_AT, END_AT, START_AT
from databricks_scripts.failures import DataMismatch, SchemaConflict
from databricks_scripts.load.keys import spool_checked
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import DATAFUSION
from databricks_scripts.load.types import cast_batch, delta_schema_for

TECHNICAL_COLUMNS = (DELETED_AT, START_AT, END_AT)
TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")


class WriterHooks(NamedTuple):
    """engines.arrow.engine's helpers the writers use: ``fenced(batches, load)`` (stop signal, then the
    fencing check, last thing before the commit), ``stream_errors(load)`` and ``step(name)``."""

    fenced: Callable[..., Iterator[pa.RecordBatch]]
    stream_errors: Callable[..., Any]
    step: Callable[[str], Any]


def keeps_history(spec: LoadSpec) -> bool:
    """True when the destination keeps rows a plain overwrite would lose (versions, tombstones)."""
    return spec.load_strategy == "scd2" or spec.delete_detection == "soft"


def history_strategy(spec: LoadSpec, destination_exists: bool) -> str | None:
    """The strategy applied to an existing scd2 / soft-delete table, or None (the usual rules).

    Such a table is never overwritten: a forced reload or a missing watermark re-reads the whole
    source and merges it (scd2 compares every row; soft deletes mark what is gone).
    """
    if not destination_exists or not keeps_history(spec):
        return None
    if spec.load_strategy == "scd2":
        return "scd2"
    if spec.force_full_reload or (spec.incremental_column and spec.incremental_value is None):
        return "merge"
    return None


def load_time() -> dt.datetime:
    """The load's time (UTC, microseconds): __DELETED_AT, and __START_AT without a time cursor."""
    return dt.datetime.now(dt.UTC)


def q(name: str) -> str:
    """A column name in a delta-rs MERGE expression."""
    return DATAFUSION.quote(name)


def assignments(columns: list[str], source: str = "s") -> dict[str, str]:
    """MERGE assignments ``column <- s.column`` (delta-rs's own form: backquoted names)."""
    return {f"`{c}`": f"{source}.`{c}`" for c in columns}


def check_source_columns(load: Any) -> None:
    """Refuse a source column named like a technical column, and a key whose type changed."""
    clash = sorted(set(load.source_columns) & set(TECHNICAL_COLUMNS))
    if clash:
        raise SchemaConflict(
            f"source column(s) {clash} use a name reserved for the loader's technical columns"
        )
    if load.table is None:
        return
    mapped = delta_schema_for(load.source.schema())
    dest = load.plan.write_schema
    for key in load.spec.merge_keys:
        have, now = plain_type(dest.field(key).type), plain_type(mapped.field(key).type)
        if have != now:
            raise SchemaConflict(
                f"merge key {key!r} changed type: {have} in the destination, {now} in the source; "
                "a key changing type is refused (rows could no longer be matched to their "
                "history). If the change is intended, set force_full_reload: the old history "
                "table is archived and a new one starts (docs/loader.md, 'A key changes type')"
            )


def plain_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return t


@contextmanager
def spooled(load: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[Path, int]]:
    """The rows read, spooled to a local Arrow file with their keys checked: (path, rows)."""
    keys = tuple(load.spec.merge_keys)
    with tempfile.TemporaryDirectory(prefix="dataloader-history-") as spool_dir:
        path = Path(spool_dir) / "source.arrows"
        rows = spool_checked(batches, load.write_schema, keys, path)
        yield path, rows


def read_spool(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The spooled rows (``columns`` only, when given), one batch at a time."""
    with pa.OSFile(str(path), "rb") as stream:
        reader = pa.ipc.open_stream(stream)
        schema = (
            reader.schema
            if columns is None
            else pa.schema([reader.schema.field(c) for c in columns])
        )
        batches = [b if columns is None else b.select(columns) for b in reader]
    return pa.Table.from_batches(batches, schema)


def key_schema(load: Any) -> pa.Schema:
    return pa.schema([load.plan.write_schema.field(k) for k in load.spec.merge_keys])


def key_snapshot(load: Any, hooks: WriterHooks) -> pa.Table:
    """Every key the source has now (only the key columns read, streamed in batches)."""
    schema = key_schema(load)
    with hooks.step("read source keys"):
        batches = [
            cast_batch(b, schema)
            for b in load.source.key_batches(tuple(load.spec.merge_keys))
            if b.num_rows
        ]
    return pa.Table.from_batches(batches, schema)


def gone_keys(live: pa.Table, snapshot: pa.Table, read: pa.Table, keys: list[str]) -> pa.Table:
    """Keys live in the destination but neither in the source's key snapshot nor among the rows
    this load read (a row inserted between the two reads is not deleted)."""
    if live.num_rows == 0:
        return live
    gone = live.join(snapshot.select(keys), keys, join_type="left anti")
    if gone.num_rows and read.num_rows:
        gone = gone.join(read.select(keys), keys, join_type="left anti")
    return gone.select(keys)


def check_floor(spec: LoadSpec, deleting: int, live: int) -> None:
    """Refuse a load that would delete (or close) more than ``delete_max_fraction`` of the
    destination's live rows: a source that suddenly returns few keys is not believed."""
    if live == 0 or deleting <= spec.delete_max_fraction * live:
        return
    raise DataMismatch(
        f"delete detection refused: the source's key snapshot would delete {deleting:,} of the "
        f"destination's {live:,} live rows ({deleting / live:.0%}), more than delete_max_fraction "
        f"{spec.delete_max_fraction:g}; nothing was written and the watermark was not advanced. "
        "If the source really lost these rows, raise table_control.delete_max_fraction for the "
        "next load"
    )


def merge_metrics(metrics: dict) -> int:
    return sum(
        int(metrics.get(k, 0))
        for k in ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")
    )
