"""Upserts on the merge keys (Arrow engine): cost that follows the change, memory that stays bounded.

delta-rs's MERGE joins the rows read with the target files it may have to rewrite. Left alone it
considers every file (the whole table is read and rewritten) and holds the rows merged in memory.
This writer gives it less to do:

1. Before a row is read, the Delta log's file statistics give the key range of every data file
   (first merge key, integer or date). Files whose ranges overlap form one *part*; parts are
   disjoint key ranges.
2. The rows read are spooled to local Arrow IPC files, one per part, plus one for rows whose first
   key lies in no part: no row of the table can have that key, so those rows are **appended**, no
   join. NULL keys are refused as they arrive; duplicate keys are checked per file (equal keys
   land in the same file) before anything commits, holding one file's keys at a time.
3. Up to ``merge_chunk_rows`` rows read (``DATALOADER_MERGE_CHUNK_ROWS``): **one commit**, an
   append or one MERGE whose target side is restricted to the key range of the rows that may
   match (``t.k >= lo AND t.k <= hi``), so delta-rs prunes the files outside it.
   More rows: one MERGE per chunk of at most ``merge_chunk_rows`` rows, in key order (a chunk's
   range covers few files), then the append. Every commit is fenced and names the attempt; all
   but the last carry ``dataloader.complete = false`` (engines.arrow.commits). A load that dies between
   two commits leaves some chunks upserted and the watermark unmoved: the next load reads the same
   rows (or newer versions of them) and upserts them again, which is the same upsert.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from databricks_scripts.engines.arrow.commits import commit_properties, fenced, stream_errors
from databricks_scripts.load.keys import check_keys
from databricks_scripts.load.sql import DATAFUSION, delta_merge_predicate

DEFAULT_MERGE_CHUNK_ROWS = 150_000
# Data file size of keyed tables (unless DATALOADER_TARGET_FILE_BYTES says otherwise): a MERGE
# rewrites whole files and holds what it rewrites, so small files keep it cheap and bounded.
KEYED_FILE_BYTES = 4 * 1024 * 1024
# A keyed table whose upserts rewrite most of its files (scattered updates) gets files this many
# times bigger: a MERGE's cost grows with the files it writes (10M rows, 1% scattered: 67 files
# of 4 MiB 1.7-2.0 s, 12 of 16 MiB 1.2-1.5 s, the same memory; bench/bench_floor.py).
SCATTERED_FILE_FACTOR = 4
# "Most": at least half of the table's parts, and the table has at least this many.
SCATTERED_MIN_PARTS = 8
FILE_SIZE_PROPERTY = "delta.targetFileSize"
# At most this many parts (spool files open at once); smaller parts are joined to stay under it.
MAX_PARTS = 256
_EPOCH = dt.date(1970, 1, 1)


def key_as_int64(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray | None:
    """The key column as int64 (integers; dates as days), or None when ranges are not used."""
    t = column.type
    if pa.types.is_integer(t) and t != pa.uint64():
        return column.cast(pa.int64())
    if pa.types.is_date32(t):
        return column.cast(pa.int32()).cast(pa.int64())
    return None


def target_key_ranges(table: Any, key: str, key_type: pa.DataType) -> list[tuple[int, int, int]]:
    """(min, max, rows) of ``key`` for each data file of ``table``, from the Delta log.

    Files holding only NULL keys are left out (no key can match them). Raises LookupError when a
    file has no usable statistics for ``key`` (every file is then a candidate for every row).
    """
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return []
    names = set(actions.column_names)
    needed = [f"min.{key}", f"max.{key}", f"null_count.{key}", "num_records"]
    if not all(n in names for n in needed):
        raise LookupError(f"no statistics for {key!r} in the Delta log")
    lows = key_as_int64(actions.column(needed[0]).cast(key_type))
    highs = key_as_int64(actions.column(needed[1]).cast(key_type))
    if lows is None or highs is None:
        raise LookupError(f"key {key!r} of type {key_type} has no usable ranges")
    ranges = []
    for lo, hi, nulls, rows in zip(
        lows.to_pylist(),
        highs.to_pylist(),
        actions.column(needed[2]).to_pylist(),
        actions.column(needed[3]).to_pylist(),
        strict=True,
    ):
        if rows is not None and nulls is not None and nulls == rows:
            continue  # every key NULL: nothing to match
        if lo is None or hi is None or rows is None:
            raise LookupError(f"a data file has no statistics for {key!r}")
        ranges.append((lo, hi, rows))
    return ranges


def key_parts(ranges: list[tuple[int, int, int]], max_parts: int = MAX_PARTS) -> list[tuple]:
    """Disjoint key ranges covering the files: overlapping files share a part; small neighbours
    are joined so there are at most ``max_parts``."""
    return [(lo, hi) for lo, hi, _ in _parts_with_rows(ranges, max_parts)]


def _parts_with_rows(ranges: list[tuple[int, int, int]], max_parts: int) -> list[list[int]]:
    if not ranges:
        return []
    total = sum(r[2] for r in ranges)
    min_rows = -(-total // max_parts)
    parts: list[list[int]] = []
    for lo, hi, rows in sorted(ranges):
        if parts and (lo <= parts[-1][1] or parts[-1][2] < min_rows):
            last = parts[-1]
            last[1], last[2] = max(last[1], hi), last[2] + rows
        else:
            parts.append([lo, hi, rows])
    return parts


def chunk_parts(
    ranges: list[tuple[int, int, int]], chunk_rows: int, max_parts: int = MAX_PARTS
) -> list[tuple]:
    """:func:`key_parts`, each cut into equal key ranges of about ``chunk_rows`` of its rows.

    A part is a group of overlapping files, and one file whose keys span the table (a source
    read that started mid-table, as PostgreSQL's synchronized scans do, hands the first file rows
    of both ends) makes the whole table one part. Its rows were then cut into chunks in the order
    they arrived, so a chunk could hold keys from both ends, and its MERGE range covered every
    file: 10M rows in chunks of 100,000 peaked at 1.8-2.0 GiB. Cut by key, each chunk's range
    covers about its own share of the files (at most ``max_parts`` ranges in all)."""
    parts = _parts_with_rows(ranges, max_parts)
    pieces = [max(1, min(-(-rows // max(chunk_rows, 1)), hi - lo + 1)) for lo, hi, rows in parts]
    budget = max(max_parts, len(parts))  # at most this many spool files
    if sum(pieces) > budget:  # fewer, bigger pieces, at least one per part
        scale = budget / sum(pieces)
        pieces = [max(1, int(n * scale)) for n in pieces]
        while sum(pieces) > budget:
            pieces[pieces.index(max(pieces))] -= 1
    out: list[tuple] = []
    for (lo, hi, _), n in zip(parts, pieces, strict=True):
        bounds = [lo + (hi - lo + 1) * i // n for i in range(n)] + [hi + 1]
        out += [(bounds[i], bounds[i + 1] - 1) for i in range(n)]
    return out


@dataclass
class _Bucket:
    path: Path
    rows: int = 0
    low: int | None = None
    high: int | None = None
    writer: Any = None
    sink: Any = None

    def add(self, batch: pa.RecordBatch, keys: Any) -> None:
        """Append ``batch``; ``keys``: its first key as int64 numbers (None: not ranged)."""
        if self.writer is None:
            self.sink = pa.OSFile(str(self.path), "wb")
            self.writer = pa.ipc.new_file(self.sink, batch.schema)
        self.writer.write_batch(batch)
        self.rows += batch.num_rows
        if keys is None or not len(keys):
            return
        lo, hi = keys[0].as_py(), keys[len(keys) - 1].as_py()  # sorted
        self.low = lo if self.low is None else min(self.low, lo)
        self.high = hi if self.high is None else max(self.high, hi)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sink.close()

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[pa.RecordBatch]:
        """Rows ``start`` to ``stop`` of the spooled file, read batch by batch (not mapped, so
        what a commit read is freed once delta-rs is done with it)."""
        stop = self.rows if stop is None else stop
        with pa.OSFile(str(self.path), "rb") as source:
            reader = pa.ipc.open_file(source)
            offset = 0
            for i in range(reader.num_record_batches):
                if offset >= stop:
                    break
                batch = reader.get_batch(i)
                end = offset + batch.num_rows
                if end > start:
                    yield batch.slice(max(start - offset, 0), min(stop, end) - max(start, offset))
                offset = end


@dataclass
class _Spool:
    """The rows read, split by the part their first key falls in (``None``: no part)."""

    directory: Path
    keys: tuple[str, ...]
    parts: list[tuple] | None  # None: no usable statistics, every row may match anything
    buckets: dict[int | None, _Bucket] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.buckets.values())

    def bucket(self, part: int | None) -> _Bucket:
        if part not in self.buckets:
            name = "new" if part is None else f"part-{part:05d}"
            self.buckets[part] = _Bucket(self.directory / f"{name}.arrow")
        return self.buckets[part]

    def add(self, batch: pa.RecordBatch) -> None:
        """Spool ``batch``, its rows sorted by the first key, each run of rows to its part."""
        import pyarrow.compute as pc

        check_keys(
            pa.Table.from_batches([batch.select(list(self.keys))]), self.keys, nulls_only=True
        )
        as_int = key_as_int64(batch.column(self.keys[0]))
        if self.parts is None or as_int is None:
            self.bucket(0).add(batch, None)
            return
        order = pc.sort_indices(as_int)
        batch, keys = batch.take(order), as_int.take(order)
        if not self.parts:
            self.bucket(None).add(batch, keys)
            return
        position = 0
        for index, (low, high) in enumerate(self.parts):
            first = _bisect(keys, low, position, left=True)
            if first > position:  # keys between two parts: in no file
                self._add_slice(None, batch, keys, position, first)
            end = _bisect(keys, high, first, left=False)
            if end > first:
                self._add_slice(index, batch, keys, first, end)
            position = end
            if position == len(keys):
                return
        self._add_slice(None, batch, keys, position, len(keys))

    def _add_slice(self, part, batch, keys, start: int, end: int) -> None:
        self.bucket(part).add(batch.slice(start, end - start), keys.slice(start, end - start))

    def close(self) -> None:
        for b in self.buckets.values():
            b.close()

    def check_duplicates(self) -> None:
        """Keys unique among the rows read: equal keys share a file, so one file at a time."""
        for b in self.buckets.values():
            with pa.memory_map(str(b.path)) as source:
                table = pa.ipc.open_file(source).read_all().select(list(self.keys))
                check_keys(table, self.keys)
                del table

    def ordered(self) -> list[tuple[int | None, _Bucket]]:
        """Buckets that may match target rows, in key order, then the one that cannot."""
        matched = sorted((p, b) for p, b in self.buckets.items() if p is not None)
        return matched + ([(None, self.buckets[None])] if None in self.buckets else [])


@dataclass
class _Commit:
    segments: list[tuple[_Bucket, int, int]]  # (bucket, first row, end row)
    merge: bool  # False: an append of keys that cannot be in the table
    low: int | None = None  # key range of the rows that may match (None: unrestricted)
    high: int | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        for bucket, start, stop in self.segments:
            yield from bucket.batches(start, stop)


def plan_commits(spool: _Spool, chunk_rows: int) -> list[_Commit]:
    """One commit when the rows read fit in a chunk; else MERGE chunks in key order, then the
    append of the keys that cannot be in the table."""
    ordered = spool.ordered()
    new = spool.buckets.get(None)
    matched = [(p, b) for p, b in ordered if p is not None]
    ranged = spool.parts is not None and all(b.low is not None for _, b in matched)
    if spool.rows <= chunk_rows:
        segments = [(b, 0, b.rows) for _, b in ordered]
        if not matched:
            return [_Commit(segments, merge=False)]
        return [_Commit(segments, True, *_range([b for _, b in matched], ranged))]
    commits: list[_Commit] = []
    current: list[tuple[_Bucket, int, int]] = []
    size = 0
    for _, b in matched:
        if size and size + b.rows > chunk_rows and b.rows <= chunk_rows:
            # A part that fits in one commit is not split: split, it would be rewritten twice.
            commits.append(_Commit(current, True))
            current, size = [], 0
        start = 0
        while start < b.rows:
            take = min(b.rows - start, chunk_rows - size)
            current.append((b, start, start + take))
            size, start = size + take, start + take
            if size >= chunk_rows:
                commits.append(_Commit(current, True))
                current, size = [], 0
    if current:
        commits.append(_Commit(current, True))
    if ranged:
        for c in commits:
            c.low, c.high = _segment_range(c.segments, spool.keys[0])
    if new is not None:
        commits.append(_Commit([(new, 0, new.rows)], merge=False))
    return commits


def _bisect(keys: pa.Array, value: int, low: int, *, left: bool) -> int:
    """bisect_left/right of ``value`` in the sorted ``keys`` from ``low`` (scalar reads only)."""
    high = len(keys)
    while low < high:
        mid = (low + high) // 2
        key = keys[mid].as_py()
        if key < value or (not left and key == value):
            low = mid + 1
        else:
            high = mid
    return low


def _range(buckets: list[_Bucket], ranged: bool) -> tuple[int | None, int | None]:
    if not ranged:
        return None, None
    return min(b.low for b in buckets), max(b.high for b in buckets)


def _segment_range(segments: list[tuple[_Bucket, int, int]], key: str) -> tuple[int, int]:
    """Min and max first key over the rows of ``segments`` (read back from the spool)."""
    low = high = None
    for bucket, start, stop in segments:
        if start == 0 and stop == bucket.rows:
            lo, hi = bucket.low, bucket.high
        else:
            import pyarrow.compute as pc

            values = [key_as_int64(b.column(key)) for b in bucket.batches(start, stop)]
            found = pc.min_max(pa.chunked_array(values, pa.int64()))
            lo, hi = found["min"].as_py(), found["max"].as_py()
        low = lo if low is None else min(low, lo)
        high = hi if high is None else max(high, hi)
    return low, high


def _literal(value: int, key_type: pa.DataType) -> str:
    if pa.types.is_date32(key_type):
        return f"CAST('{(_EPOCH + dt.timedelta(days=value)).isoformat()}' AS DATE)"
    return str(int(value))


def merge_predicate(keys: tuple[str, ...], key_type: pa.DataType, commit: _Commit) -> str:
    """The join on the keys, restricted on the target side to the range that may match."""
    on = delta_merge_predicate(keys)
    if commit.low is None:
        return on
    k = f"t.{DATAFUSION.quote(keys[0])}"
    low, high = _literal(commit.low, key_type), _literal(commit.high, key_type)
    return f"{k} >= {low} AND {k} <= {high} AND {on}"


def _write_commit(load: Any, commit: _Commit, complete: bool, key_type: pa.DataType) -> int:
    """One fenced, named commit; returns the rows it inserted or updated."""
    from deltalake import write_deltalake

    properties = commit_properties(load.spec, load.applied, complete=complete)
    rows = sum(stop - start for _, start, stop in commit.segments)
    batches = fenced(commit.batches(), load)
    with stream_errors(load):
        if not commit.merge:
            write_deltalake(
                load.table,
                pa.RecordBatchReader.from_batches(load.write_schema, batches),
                mode="append",
                schema_mode="merge",
                commit_properties=properties,
                target_file_size=load.file_size,
            )
            return rows
        # A chunk of the default size is handed over whole: delta-rs then knows the source's
        # statistics for its join (2M rows, 1% scattered updates: 1.04 -> 1.00x the floor). It is
        # read here, not by delta-rs, which turns an error raised while it reads (a stop, the
        # fence) into a Rust panic instead of the error. A bigger chunk, a row's own
        # merge_chunk_rows, is streamed, so it is not held in memory.
        streamed = rows > DEFAULT_MERGE_CHUNK_ROWS
        source = (
            pa.RecordBatchReader.from_batches(load.write_schema, batches)
            if streamed
            else pa.Table.from_batches(list(batches), schema=load.write_schema)
        )
        metrics = (
            load.table.merge(
                source,
                predicate=merge_predicate(tuple(load.spec.merge_keys), key_type, commit),
                source_alias="s",
                target_alias="t",
                merge_schema=bool(load.plan.added_columns),
                streamed_exec=streamed,
                commit_properties=properties,
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
    return int(metrics.get("num_target_rows_inserted", 0)) + int(
        metrics.get("num_target_rows_updated", 0)
    )


def write_upsert(load: Any, batches: Iterator[pa.RecordBatch], chunk_rows: int) -> tuple[int, bool]:
    """Upsert the rows read on the merge keys; returns (rows written, committed)."""
    keys = tuple(load.spec.merge_keys)
    key_type = load.write_schema.field(keys[0]).type
    parts: list[tuple] | None
    try:
        parts = chunk_parts(target_key_ranges(load.table, keys[0], key_type), chunk_rows)
    except LookupError:
        parts = None
    with tempfile.TemporaryDirectory(prefix="dataloader-merge-") as directory:
        spool = _Spool(Path(directory), keys, parts)
        try:
            for batch in batches:
                spool.add(batch)
        finally:
            spool.close()
        if not spool.rows:
            return 0, False
        spool.check_duplicates()
        commits = plan_commits(spool, max(chunk_rows, 1))
        size_files_by_updates(load, spool, commits)
        written = 0
        for i, commit in enumerate(commits):
            last = i == len(commits) - 1
            # Arrow's allocator keeps freed memory for reuse; hand it back before each MERGE, so
            # what the read and the previous chunk used does not add to the next chunk's peak.
            pa.default_memory_pool().release_unused()
            written += _write_commit(load, commit, last, key_type)
            if not last and load.stop is not None:
                load.stop.leave_commit()
        return written, True


def size_files_by_updates(load: Any, spool: _Spool, commits: list[_Commit]) -> None:
    """Size a keyed table's files by how its upserts touch them: small files while an upsert
    rewrites a few of them (clustered keys, chunked big upserts: each chunk rewrites its range),
    files ``SCATTERED_FILE_FACTOR`` times bigger once one MERGE rewrites most of them anyway
    (scattered keys). Only between the loader's own two sizes: a person's own
    ``delta.targetFileSize`` is kept. A table-property commit of its own, before the MERGE."""
    small = load.file_size
    parts = spool.parts
    if not small or not parts or load.table is None:
        return
    big = small * SCATTERED_FILE_FACTOR
    configured = load.table.metadata().configuration.get(FILE_SIZE_PROPERTY)
    merges = [c for c in commits if c.merge]
    touched = sum(1 for part in spool.buckets if part is not None)
    scattered = len(merges) == 1 and len(parts) >= SCATTERED_MIN_PARTS and 2 * touched >= len(parts)
    if configured == str(small) and scattered:
        size, why = big, f"this upsert rewrites {touched} of its {len(parts)} key ranges"
    elif configured == str(big) and len(merges) > 1:
        size, why = small, f"this upsert goes in {len(merges)} MERGEs, each rewriting its range"
    else:
        return
    load.table.alter.set_table_properties({FILE_SIZE_PROPERTY: str(size)})
    load.notes.append(
        f"{why}: the table's files are written at {size // 1024:,} KiB from now on "
        f"({FILE_SIZE_PROPERTY})"
    )
