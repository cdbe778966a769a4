"""The Arrow engine: source record batches -> local Delta table with deltalake (delta-rs).

Each load ends in at most ONE Delta commit, so readers see the table before or after a load, never
half of it, and a load killed before its commit leaves the table as it was (the files it wrote are
unreferenced). The watermark is computed from the rows actually read and handed back only after
the commit returned.

Rules (see docs/loader.md):
- full: every source row (NULL cursors included) replaces the table in one overwrite commit.
- incremental, no merge keys: rows with cursor > watermark - look-back are read. Rows above the
  watermark are appended. Rows inside the look-back window are appended only if an identical row is
  not already in the table's window (multiset difference, as SQL ``EXCEPT ALL``), so a late
  committed row is loaded exactly once. NULL cursors are never read incrementally.
- incremental with merge keys, and merge: the rows read are upserted on the keys (Delta MERGE).
  Without an incremental column, merge reads the whole source.
- No watermark yet, no destination yet, or force_full_reload: the load runs as full.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from loader_sql import delta_merge_predicate
from loader_types import (
    SchemaPlan,
    Watermark,
    arrow_schema_of,
    batch_max,
    cast_batch,
    decode_watermark_for,
    encode_watermark,
    is_numeric_text,
    lookback_lower_bound,
    max_watermark,
    plan_schema,
)


class LoadStepError(RuntimeError):
    """A load failed; ``step`` says where (probe source, read source, write destination, ...)."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


@dataclass
class LoadResult:
    rows_read: int
    rows_written: int
    watermark_before: str | None
    watermark_after: str | None
    applied_strategy: str
    destination: str
    schema: pa.Schema
    row_count: int | None
    committed: bool
    notes: list[str] = field(default_factory=list)


class Progress:
    """Logs 'rows so far' at most every ``interval`` seconds (0: after every batch)."""

    def __init__(self, log: Callable[[str], None], label: str, interval: float):
        self._log = log
        self._label = label
        self._interval = interval
        self._last = time.monotonic()
        self.rows = 0

    def add(self, n: int) -> None:
        self.rows += n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._log(f"{self._label}: {self.rows:,} rows read so far")


def choose_strategy(spec, destination_exists: bool) -> str:
    """The strategy actually applied: full when forced, first load, or no watermark yet."""
    if spec.force_full_reload or not destination_exists or spec.load_strategy == "full":
        return "full"
    if spec.incremental_column and spec.incremental_value is None:
        return "full"
    return spec.load_strategy


def _delta_table(path: Path):
    """The Delta table at ``path``, or None. One log read (not is_deltatable() and then open)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    if not path.exists():
        return None
    try:
        return DeltaTable(str(path))
    except TableNotFoundError:
        return None


def _row_count(table) -> int | None:
    try:
        actions = pa.table(table.get_add_actions(flatten=True))
        # Few files per table: a Python sum spares an import of pyarrow.compute (~0.05 s) on
        # loads that read nothing new.
        return sum(n for n in actions.column("num_records").to_pylist() if n is not None)
    except Exception:  # noqa: BLE001 - stats are optional in Delta; the count is a nicety
        return None


class _Tracker:
    """Wraps the source stream: casts to the write schema, counts rows, tracks the cursor max."""

    def __init__(
        self,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        cursor: str | None,
        numeric_text: bool,
        progress: Progress,
    ):
        self._batches = batches
        self.schema = schema
        self._cursor = cursor
        self._numeric_text = numeric_text
        self._progress = progress
        self.rows_read = 0
        self.max_cursor: Watermark | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for raw in self._batches:
            if raw.num_rows == 0:
                continue
            batch = cast_batch(raw, self.schema)
            self.rows_read += batch.num_rows
            if self._cursor is not None:
                self.max_cursor = max_watermark(
                    self.max_cursor,
                    batch_max(batch.column(self._cursor), numeric_text=self._numeric_text),
                )
            self._progress.add(batch.num_rows)
            yield batch


def _peeked_reader(schema: pa.Schema, batches: Iterator[pa.RecordBatch]):
    """A RecordBatchReader over ``batches``, or None when they hold no rows (so no empty commit)."""
    it = iter(batches)
    first = next((b for b in it if b.num_rows), None)
    if first is None:
        return None

    def chain() -> Iterator[pa.RecordBatch]:
        yield first
        yield from it

    return pa.RecordBatchReader.from_batches(schema, chain())


def _cursor_key(value: Watermark, numeric_text: bool):
    import decimal

    return decimal.Decimal(value) if numeric_text and isinstance(value, str) else value


def _any_at_or_below(column: pa.Array, watermark: Watermark) -> bool:
    """True unless the column provably has no value <= watermark (an uncastable bound: True)."""
    try:
        bound = pa.scalar(watermark).cast(column.type)
    except (pa.ArrowException, TypeError, ValueError):
        return True  # the row-by-row comparison decides
    import pyarrow.compute as pc

    return bool(pc.any(pc.less_equal(column, bound)).as_py())


def _drop_rows_already_loaded(
    batches,
    *,
    cursor,
    watermark,
    load_existing: Callable[[], collections.Counter],
    numeric_text: bool,
):
    """Keep rows above the watermark; keep a look-back row only if not already in the table.

    The destination's look-back window is read (``load_existing``) only when the first source
    row at or below the watermark shows up: a run whose rows are all new never scans the table.
    """
    existing: collections.Counter | None = None
    for batch in batches:
        col = batch.column(cursor)
        # Vectorised check first: most batches of an incremental read hold only new rows.
        if not numeric_text and not _any_at_or_below(col, watermark):
            yield batch
            continue
        if existing is None:
            existing = load_existing()
        if not existing:
            yield batch
            continue
        rows = None
        keep = []
        for i, value in enumerate(col.to_pylist()):
            if value is None or _cursor_key(value, numeric_text) > watermark:
                keep.append(True)
                continue
            if rows is None:
                rows = batch.to_pylist()
            key = tuple(rows[i].values())
            if existing[key] > 0:
                existing[key] -= 1
                keep.append(False)
            else:
                keep.append(True)
        yield batch if all(keep) else batch.filter(pa.array(keep))


def _step(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` whose failure is reported as step ``name`` (it runs lazily, inside another step)."""

    def wrapped():
        try:
            return fn()
        except Exception as exc:
            raise LoadStepError(name, f"{type(exc).__name__}: {exc}") from exc

    return wrapped


def run_arrow_load(
    spec,
    source,
    destination: Path,
    *,
    log: Callable[[str], None],
    progress_interval: float = 10.0,
) -> LoadResult:
    """Run one load of ``spec`` from ``source`` (a loader_sources reader) into ``destination``."""
    from deltalake import write_deltalake

    step = "probe source"
    try:
        source_schema = source.schema()
        cursor = spec.incremental_column
        for column, role in [(cursor, "incremental_column")] + [
            (k, "merge key") for k in spec.merge_keys
        ]:
            if column is not None and column not in source_schema.names:
                raise ValueError(f"{role} {column!r} is not a column of the source table")
        numeric_text = bool(cursor) and is_numeric_text(source_schema.field(cursor))

        step = "open destination"
        table = _delta_table(destination)
        applied = choose_strategy(spec, table is not None)
        rebuild = applied == "full" and (table is None or spec.force_full_reload)
        dest_schema = None if rebuild else arrow_schema_of(table.schema())

        step = "reconcile schema"
        plan: SchemaPlan = plan_schema(source_schema, dest_schema)
        if plan.added_columns:
            log(f"schema evolution: adding column(s) {', '.join(plan.added_columns)}")

        watermark: Watermark | None = None
        lower: Watermark | None = None
        if applied != "full" and cursor and spec.incremental_value is not None:
            step = "decode watermark"
            watermark = decode_watermark_for(spec.incremental_value, source_schema.field(cursor))
            lower = lookback_lower_bound(watermark, spec.lookback_window_seconds)

        lookback_rows_possible = (
            applied == "incremental"
            and not spec.merge_keys
            and lower is not None
            and lower != watermark
        )

        def load_existing() -> collections.Counter:
            """The destination's rows in (lower, watermark], as a multiset of row tuples."""
            existing: collections.Counter = collections.Counter()
            import pyarrow.compute as pc

            window = table.to_pyarrow_dataset().to_table(
                filter=(pc.field(cursor) > lower) & (pc.field(cursor) <= watermark)
            )
            if window.num_rows:
                window = pa.Table.from_batches(
                    [cast_batch(b, plan.write_schema) for b in window.to_batches()],
                    plan.write_schema,
                )
                existing.update(tuple(r.values()) for r in window.to_pylist())
            return existing

        step = "read source"
        _, raw_batches = source.batches(lower)
        progress = Progress(log, f"{spec.source_label}", progress_interval)
        merging = applied in ("merge", "incremental") and bool(spec.merge_keys)
        write_schema = plan.write_schema
        if merging:
            # Upserts touch only the columns the source has; destination-only columns keep values.
            keep = set(source_schema.names)
            write_schema = pa.schema([f for f in plan.write_schema if f.name in keep])
        tracker = _Tracker(raw_batches, write_schema, cursor, numeric_text, progress)
        destination.parent.mkdir(parents=True, exist_ok=True)

        rows_written = 0
        committed = False
        step = "write destination"
        if applied == "full":
            reader = pa.RecordBatchReader.from_batches(write_schema, iter(tracker))
            write_deltalake(
                table if table is not None else str(destination),
                reader,
                mode="overwrite",
                schema_mode="overwrite" if rebuild else "merge",
            )
            rows_written = tracker.rows_read
            committed = True
        elif merging:
            # Streamed into delta-rs (streamed_exec): only the key columns are kept here, for
            # the uniqueness check that must pass before the MERGE may commit.
            keys = _KeyCheck(tracker, spec.merge_keys)
            reader = _peeked_reader(write_schema, iter(keys))
            if reader is not None:
                try:
                    metrics = (
                        table.merge(
                            reader,
                            predicate=delta_merge_predicate(spec.merge_keys),
                            source_alias="s",
                            target_alias="t",
                            merge_schema=bool(plan.added_columns),
                            streamed_exec=True,
                        )
                        .when_matched_update_all()
                        .when_not_matched_insert_all()
                        .execute()
                    )
                except Exception:
                    # delta-rs wraps an error raised by the stream in its own text, with a
                    # traceback: report the check's (or the cast's) own message instead.
                    if keys.error is not None:
                        raise keys.error from None
                    raise
                rows_written = int(metrics.get("num_target_rows_inserted", 0)) + int(
                    metrics.get("num_target_rows_updated", 0)
                )
                committed = True
        else:
            batches = iter(tracker)
            if lookback_rows_possible:
                batches = _drop_rows_already_loaded(
                    batches,
                    cursor=cursor,
                    watermark=_cursor_key(watermark, numeric_text),
                    load_existing=_step("read destination look-back window", load_existing),
                    numeric_text=numeric_text,
                )
            counted = _count(batches)
            reader = _peeked_reader(write_schema, counted)
            if reader is not None:
                write_deltalake(table, reader, mode="append", schema_mode="merge")
                committed = True
            rows_written = counted.rows
    except LoadStepError:
        raise
    except Exception as exc:
        raise LoadStepError(step, f"{type(exc).__name__}: {exc}") from exc

    # Only now, after the commit, is a new watermark known to be safe to hand back.
    step = "report"
    if cursor is None:
        watermark_after = None
    elif applied == "full":
        watermark_after = (
            encode_watermark(tracker.max_cursor) if tracker.max_cursor is not None else None
        )
    else:
        new_max = max_watermark(watermark, tracker.max_cursor)
        if new_max is None or new_max == watermark:
            watermark_after = spec.incremental_value  # nothing newer: the stored text, untouched
        else:
            watermark_after = encode_watermark(new_max)

    # write_deltalake/merge on a DeltaTable object advance that object to the new version, so
    # the table is opened once per load (twice only when this load created it).
    final = table if table is not None else _delta_table(destination)
    schema = arrow_schema_of(final.schema()) if final is not None else write_schema
    return LoadResult(
        rows_read=tracker.rows_read,
        rows_written=rows_written,
        watermark_before=spec.incremental_value,
        watermark_after=watermark_after,
        applied_strategy=applied,
        destination=str(destination),
        schema=schema,
        row_count=_row_count(final) if final is not None else 0,
        committed=committed,
    )


class _count:
    def __init__(self, batches: Iterator[pa.RecordBatch]):
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for b in self._batches:
            self.rows += b.num_rows
            yield b


class _KeyCheck:
    """Passes batches through; refuses NULL merge keys at once and duplicate keys at the end.

    Keeps only the key columns of the rows read (not the rows), so a streamed merge holds the
    keys plus one batch. An error raised here, inside the stream, aborts the MERGE before its
    commit; it is also kept in ``error`` so the caller can report it unwrapped.
    """

    def __init__(self, batches, keys: tuple[str, ...]):
        self._batches = batches
        self._keys = list(keys)
        self._seen: list[pa.RecordBatch] = []
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self._batches:
                key_batch = batch.select(self._keys)
                _check_keys(pa.Table.from_batches([key_batch]), tuple(self._keys), nulls_only=True)
                self._seen.append(key_batch)
                yield batch
            if self._seen:
                _check_keys(pa.Table.from_batches(self._seen), tuple(self._keys))
        except Exception as exc:
            self.error = exc
            raise


def _check_keys(data: pa.Table, keys: tuple[str, ...], *, nulls_only: bool = False) -> None:
    import pyarrow.compute as pc

    for k in keys:
        nulls = data.column(k).null_count
        if nulls:
            raise ValueError(f"merge key {k!r} is NULL in {nulls} source row(s); keys must be set")
    if nulls_only:
        return
    grouped = data.group_by(list(keys)).aggregate([([], "count_all")])
    dupes = grouped.filter(pc.field("count_all") > 1)
    if dupes.num_rows:
        sample = dupes.slice(0, 1).select(list(keys)).to_pylist()[0]
        raise ValueError(
            f"merge keys {list(keys)} are not unique in the source rows read "
            f"({dupes.num_rows} duplicated key(s), e.g. {sample})"
        )


def lake_root() -> Path:
    root = os.environ.get("DATALOADER_LAKE_ROOT")
    if root:
        return Path(root)
    home = os.environ.get("DATALOADER_HOME")
    if home:
        return Path(home) / "lake"
    return Path(__file__).resolve().parents[1] / ".dataloader" / "lake"
