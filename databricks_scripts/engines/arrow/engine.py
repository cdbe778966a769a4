"""The Arrow engine: source record batches -> local Delta table with deltalake (delta-rs).

A load ends in at most ONE Delta commit, so readers see the table before or after a load, never
half of it, and a load killed before its commit leaves the table as it was (the files it wrote are
unreferenced). The watermark is computed from the rows actually read and handed back only after
the commit returned. Two exceptions, for big tables (docs/loader.md, "Big tables"): an upsert of
more than DATALOADER_MERGE_CHUNK_ROWS rows commits in chunks (engines.arrow.merge; a rerun repeats it),
and a big incremental table's first load commits in cursor-ordered chunks (engines.arrow.first_load; a
rerun resumes it).

Rules (see docs/loader.md):
- full: every source row (NULL cursors included) replaces the table in one overwrite commit.
- incremental, no merge keys: rows with cursor > watermark - look-back are read. Rows above the
  watermark are appended. Rows inside the look-back window are appended only if an identical row is
  not already in the table's window (multiset difference, as SQL ``EXCEPT ALL``), so a late
  committed row is loaded exactly once. NULL cursors are never read incrementally.
- incremental with merge keys, and merge: the rows read are upserted on the keys (engines.arrow.merge:
  appends for keys no data file can hold, MERGEs restricted to the key range that may match).
  Without an incremental column, merge reads the whole source. The rows are spooled to local
  Arrow files first, so NULL or duplicate keys are refused before the first commit.
- No watermark yet, no destination yet, or force_full_reload: the load runs as full.

The load's sequence, its step names and the rules between the steps are ``load.driver.run_load``'s;
:class:`ArrowSession` is what this engine supplies to it (``load.engine.LoadSession``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from databricks_scripts.engines.arrow.commits import (
    commit_properties,
    committed_attempt,
    unrecorded_commit,
)
from databricks_scripts.engines.arrow.commits import fenced as _fenced
from databricks_scripts.engines.arrow.commits import stream_errors as _stream_errors
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset, destination_watermark
from databricks_scripts.engines.arrow.delta_dataset import new_table_configuration as _table_config
from databricks_scripts.engines.arrow.history import (
    WriterHooks,
    archive_if_types_changed,
    history_writer,
)
from databricks_scripts.engines.arrow.stream import (
    Counted,
    Progress,
    Tracker,
    peeked_reader,
    progress_estimate,
    text_cursor_start,
)
from databricks_scripts.engines.arrow.verify import verify_committed
from databricks_scripts.load.columns import commented_plan, schema_notes, source_comments
from databricks_scripts.load.commits import UnrecordedCommit
from databricks_scripts.load.driver import run_load
from databricks_scripts.load.engine import Load, SourceColumns, Written
from databricks_scripts.load.interrupt import StopSignal, data_files, remove_uncommitted
from databricks_scripts.load.keys import keys_checked
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import (
    Column,
    LoadResult,
    LoadStepError,  # noqa: F401 - dataloader_pipe imports it with run_arrow_load (one lazy import)
)
from databricks_scripts.load.plan import lazy_step as _lazy_step
from databricks_scripts.load.plan import step as _step
from databricks_scripts.load.types import SchemaPlan, arrow_schema_of, cast_batch, plan_schema
from databricks_scripts.load.watermark import (
    Watermark,
    decode_watermark_for,
    encode_watermark,
    max_watermark,
)


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


@dataclass
class _Load:
    """What the writers need, decided before a row is read."""

    spec: LoadSpec
    destination: Path
    table: Any  # the DeltaTable, None when there is none yet
    applied: str
    rebuild: bool
    plan: SchemaPlan
    numeric_text: bool
    source_columns: frozenset[str] = frozenset()
    watermark: Watermark | None = None
    lower: Watermark | None = None
    committed_at_start: int | None = None  # the row's last committing attempt when this began
    stop: StopSignal | None = None  # SIGINT/SIGTERM: checked between batches, gates the commit
    target_file_size: int | None = None  # Delta data file size (None: delta-rs's default)
    merge_chunk_rows: int | None = (
        None  # rows per MERGE commit (None: engines.arrow.merge's default)
    )
    # An error raised inside a stream the writer consumes (delta-rs re-raises it as its own).
    stream_error: BaseException | None = None
    source: Any = None  # the source reader (delete detection reads its keys)
    notes: list[str] = field(default_factory=list)  # sentences for the load's message
    comments: tuple = (None, {})  # the source's (table comment, {column: comment})

    @property
    def file_size(self) -> int | None:
        """Data file size: keyed tables default to small files, so a MERGE rewrites little."""
        if self.target_file_size or not self.spec.merge_keys:
            return self.target_file_size
        from databricks_scripts.engines.arrow.merge import KEYED_FILE_BYTES

        return KEYED_FILE_BYTES

    @property
    def cursor(self) -> str | None:
        return self.spec.incremental_column

    @property
    def merging(self) -> bool:
        return self.applied in ("merge", "incremental", "scd2") and bool(self.spec.merge_keys)

    @property
    def write_schema(self) -> pa.Schema:
        if not self.merging:
            return self.plan.write_schema
        # Upserts touch only the columns the source has; destination-only columns keep values.
        return pa.schema([f for f in self.plan.write_schema if f.name in self.source_columns])

    def load_existing(self) -> collections.Counter:
        """The destination's rows in (lower, watermark], as a multiset of row tuples."""
        import pyarrow.compute as pc

        existing: collections.Counter = collections.Counter()
        window = delta_dataset(self.table).to_table(
            filter=(pc.field(self.cursor) > self.lower) & (pc.field(self.cursor) <= self.watermark)
        )
        if window.num_rows:
            schema = self.plan.write_schema
            window = pa.Table.from_batches(
                [cast_batch(b, schema) for b in window.to_batches()], schema
            )
            existing.update(tuple(r.values()) for r in window.to_pylist())
        return existing


# ---- one writer per strategy: each returns (rows written, committed) ---------------------------


def _write_full(load: _Load, batches: Iterator[pa.RecordBatch], tracker: Tracker):
    """Every source row replaces the table in one overwrite commit (or creates it)."""
    from deltalake import write_deltalake

    if load.spec.merge_keys:  # a keyed table's first load (or rebuild) checks its keys too
        batches = keys_checked(batches, tuple(load.spec.merge_keys))
    reader = pa.RecordBatchReader.from_batches(load.write_schema, _fenced(batches, load))
    with _stream_errors(load):
        write_deltalake(
            load.table if load.table is not None else str(load.destination),
            reader,
            mode="overwrite",
            schema_mode="overwrite" if load.rebuild else "merge",
            commit_properties=commit_properties(load.spec, load.applied),
            target_file_size=load.file_size,
            description=load.comments[0] if load.table is None else None,
            # A table created here keeps its file size for MERGE rewrites; column mapping.
            configuration=_table_config(load.write_schema, load.file_size)
            if load.table is None
            else None,
        )
    return tracker.rows_read, True


def _write_append(load: _Load, batches: Iterator[pa.RecordBatch], tracker: Tracker):
    """New rows appended in one commit; look-back rows only when not already in the table."""
    from deltalake import write_deltalake

    if load.lower is not None and load.lower != load.watermark:
        batches = _drop_rows_already_loaded(
            batches,
            cursor=load.cursor,
            watermark=_cursor_key(load.watermark, load.numeric_text),
            load_existing=_lazy_step("read destination look-back window", load.load_existing),
            numeric_text=load.numeric_text,
        )
    counted = Counted(batches)
    reader = peeked_reader(load.write_schema, _fenced(counted, load))
    if reader is None:
        return 0, False
    with _stream_errors(load):
        write_deltalake(
            load.table,
            reader,
            mode="append",
            schema_mode="merge",
            commit_properties=commit_properties(load.spec, load.applied),
            target_file_size=load.target_file_size,
        )
    return counted.rows, True


def _write_merge(load: _Load, batches: Iterator[pa.RecordBatch], tracker: Tracker):
    """The rows read are upserted on the merge keys (engines.arrow.merge: appends of keys that cannot
    be in the table, MERGEs restricted to the key range that may match, chunked above
    ``merge_chunk_rows`` rows). Every key is checked before the first commit."""
    from databricks_scripts.engines.arrow.merge import DEFAULT_MERGE_CHUNK_ROWS, write_upsert

    return write_upsert(load, batches, load.merge_chunk_rows or DEFAULT_MERGE_CHUNK_ROWS)


def _writer(load: _Load):
    kept = history_writer(load, WriterHooks(_fenced, _stream_errors, _step))
    if kept is not None:
        return kept
    if load.applied == "full":
        return _write_full
    if load.merging:
        return _write_merge
    return _write_append


def _watermark_after(load: _Load, tracker: Tracker) -> str | None:
    """The watermark to hand back; called only after the commit, when it is known to be safe."""
    if load.cursor is None:
        return None
    if load.applied == "full":
        return encode_watermark(tracker.max_cursor) if tracker.max_cursor is not None else None
    new_max = max_watermark(load.watermark, tracker.max_cursor)
    if new_max is None or new_max == load.watermark:
        return load.spec.incremental_value  # nothing newer: the stored text, untouched
    return encode_watermark(new_max)


def run_arrow_load(
    spec: LoadSpec,
    source,
    destination: Path,
    *,
    log: Callable[[str], None],
    progress_interval: float = 10.0,
    stop: StopSignal | None = None,
    target_file_size: int | None = None,
    merge_chunk_rows: int | None = None,
    first_load_chunks: tuple[int, int] | None = None,
) -> LoadResult:
    """Run one load of ``spec`` from ``source`` (a sources.readers reader) into ``destination``:
    ``load.driver.run_load`` on an :class:`ArrowSession`.

    Failures are raised as :class:`LoadStepError` naming the step (load.driver).
    ``first_load_chunks`` = (chunk rows, chunked above rows): see engines.arrow.first_load.
    """
    session = ArrowSession(
        source,
        destination,
        progress_interval=progress_interval,
        target_file_size=target_file_size,
        merge_chunk_rows=merge_chunk_rows,
        first_load_chunks=first_load_chunks,
    )
    return run_load(session, spec, log=log, stop=stop)


class ArrowSession:
    """The Arrow engine's side of ``load.engine.LoadSession``: a source reader, a local Delta
    table, and the writers' view of the load (:class:`_Load`, built once the schema is known)."""

    def __init__(
        self,
        source,
        destination: Path,
        *,
        progress_interval: float = 10.0,
        target_file_size: int | None = None,
        merge_chunk_rows: int | None = None,
        first_load_chunks: tuple[int, int] | None = None,
    ):
        self.source = source
        self.path = destination
        self.progress_interval = progress_interval
        self.target_file_size = target_file_size
        self.merge_chunk_rows = merge_chunk_rows
        self.first_load_chunks = first_load_chunks
        self.table: Any = None  # the DeltaTable, None when there is none (yet)
        self.source_schema: pa.Schema = pa.schema([])
        self.load: _Load | None = None
        self.tracker: Tracker | None = None
        self.chunked: Any = None  # a resumable first load's chunks (engines.arrow.first_load)
        self.written = False

    @property
    def destination(self) -> str:
        return str(self.path)

    def probe(self, load: Load) -> SourceColumns:
        self.source_schema = source_schema = self.source.schema()
        cursor = load.spec.incremental_column
        field = source_schema.field(cursor) if cursor in source_schema.names else None
        return SourceColumns(tuple(source_schema.names), field)

    def open(self, load: Load) -> bool:
        self.table = _delta_table(self.path)
        return self.table is not None

    def recorded_commits(self) -> list[dict]:
        return self.table.history(20)

    def settle(self, load: Load) -> bool:
        spec = load.spec
        if self.table is not None and spec.load_strategy == "scd2" and spec.force_full_reload:
            self.table = archive_if_types_changed(
                spec, self.source_schema, self.table, self.path, load.log
            )
        return self.table is not None

    def last_commit(self, load: Load) -> UnrecordedCommit | None:
        unrecorded = unrecorded_commit(self.table, load.spec)
        if unrecorded is not None:
            return unrecorded  # its version and completeness read from the history
        committed = committed_attempt(self.table, load.spec)
        return None if committed is None else UnrecordedCommit(committed, None)

    def decode(self, load: Load, text: str) -> Watermark:
        return decode_watermark_for(text, self.source_schema.field(load.spec.incremental_column))

    def destination_watermark(self, load: Load) -> str | None:
        return destination_watermark(self._view(load, None))

    def evolve_schema(self, load: Load) -> list[str]:
        spec = load.spec
        notes: list[str] = []
        dest_schema = None if load.plan.rebuild else arrow_schema_of(self.table.schema())
        schema = plan_schema(self.source_schema, dest_schema, spec.schema_change)
        schema_notes(spec, schema, self.source_schema, dest_schema, notes, load.log)
        comments = source_comments(self.source, load.log)
        if dest_schema is None:
            schema = commented_plan(schema, comments[1])
        self.load = self._view(load, schema)
        self.load.comments = comments
        return notes

    def _view(self, load: Load, schema: SchemaPlan | None) -> _Load:
        """The writers' view of ``load`` (``schema`` None: only what reconciling reads)."""
        view = _Load(
            load.spec,
            self.path,
            self.table,
            load.plan.applied,
            load.plan.rebuild,
            schema,  # type: ignore[arg-type]
            load.numeric_text,
            source_columns=frozenset(self.source_schema.names),
            watermark=load.plan.watermark,
            lower=load.plan.lower,
            committed_at_start=load.at_start.metadata_id if load.at_start else None,
            stop=load.stop,
            target_file_size=self.target_file_size,
            merge_chunk_rows=self.merge_chunk_rows,
            source=self.source,
            notes=load.notes,  # the writers' notes are the load's
        )
        return view

    def read(self, load: Load) -> list[str]:
        view = self._ready()
        self.chunked = _first_load_plan(view, self.source, self.first_load_chunks, load.log)
        self.tracker = _open_stream(
            view, self.source, self.chunked, self.progress_interval, load.log
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return []

    def on_stop(self, stop: StopSignal) -> None:
        before = data_files(self.path)
        tracker = self.tracker
        stop.on_stop(
            cleanup=lambda: remove_uncommitted(self.path, before),
            progress=lambda: f"after reading {tracker.rows_read if tracker else 0:,} rows",
        )

    def row_count(self) -> int | None:
        table = self._final()
        return _row_count(table) if table is not None else 0

    def _final(self):
        """The destination now: write_deltalake/merge on a DeltaTable object advance that object
        to the new version, so the table is opened once per load (twice when this load made it)."""
        if self.table is None and self.written:
            self.table = _delta_table(self.path)
        return self.table

    def write(self, load: Load) -> Written:
        view, tracker = self._ready(), self.tracker
        assert tracker is not None  # read() opened it
        if self.chunked is not None:
            from databricks_scripts.engines.arrow.first_load import write_first_load_chunks

            rows_written, committed = write_first_load_chunks(view, iter(tracker), self.chunked)
        else:
            rows_written, committed = _writer(view)(view, iter(tracker), tracker)
        self.written = True
        return Written(tracker.rows_read, rows_written, committed)

    def watermark_after(self, load: Load, written: Written) -> str | None:
        assert self.tracker is not None
        return _watermark_after(self._ready(), self.tracker)

    def schema(self) -> tuple[Column, ...]:
        table = self._final()
        schema = (
            arrow_schema_of(table.schema()) if table is not None else self._ready().write_schema
        )
        return tuple(Column(f.name, str(f.type), f.nullable) for f in schema)

    def finish(self, load: Load, result: LoadResult) -> LoadResult:
        view = self._ready()
        result.verification = verify_committed(
            view, self.source, lambda: _delta_table(self.path), load.log
        )
        result.comments = view.comments
        return result

    def _ready(self) -> _Load:
        assert self.load is not None, "evolve_schema() builds the writers' view first"
        return self.load


def _open_stream(load: _Load, source, chunked, progress_interval: float, log) -> Tracker:
    """The tracked stream of source rows: the chunks of a resumable first load, or one read."""
    # Asked before the read starts: the connection then streams the rows (COPY) alone.
    estimate = progress_estimate(source, load.applied)
    if chunked is not None:
        from databricks_scripts.engines.arrow.first_load import source_batches

        raw_batches = source_batches(chunked, source)
    else:
        _, raw_batches = source.batches(load.lower)
    progress = Progress(log, f"{load.spec.source_label}", progress_interval, estimate)
    tracker = Tracker(
        raw_batches,
        load.write_schema,
        load.cursor,
        load.numeric_text,
        progress,
        text_cursor=text_cursor_start(load),
    )
    if chunked is not None:
        tracker.max_cursor = chunked.resume_from  # resumed: the chunks already committed
    return tracker


def _first_load_plan(load: _Load, source, settings: tuple[int, int] | None, log):
    """A resumable first load's plan (engines.arrow.first_load), or None for a one-commit load."""
    if load.applied != "full" or settings is None:
        return None
    from databricks_scripts.engines.arrow.first_load import plan_first_load

    with _step("plan resumable first load"):
        return plan_first_load(load, source, settings, log)
