"""Deep verification of one table: every key and every row's values, source against destination.

Run on demand or on a schedule (``dataloader__deep_verify_job``), never by a load. The key space
of the first merge key (an integer column) is cut into ranges of about ``segment_rows`` source
rows. For each range both sides are read (the source with one bounded statement, inside one
read-only snapshot; the destination's live rows / open versions from its latest version), every
row is hashed over the source's columns cast to the destination's types, and the two checksums
(row count, sum of row hashes) are compared. Only a range whose checksums differ is compared key by
key, naming the first differing keys: missing from the destination, changed, or (when the table
must hold exactly the source's rows) extra.

Cost: one read of each side (no hashing is pushed down to the source: its text forms of values
differ from the destination's), memory bounded by one range. bench/bench_verify.py measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from databricks_scripts.contract import DELETED_AT, END_AT
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset
from databricks_scripts.load.params import LoadSpec

if TYPE_CHECKING:  # deltalake is imported where it is used
    from deltalake import DeltaTable

DEFAULT_SEGMENT_ROWS = 200_000
SAMPLE = 10
_MASK = (1 << 64) - 1


class KeyRangeSource(Protocol):
    """What deep verification reads of the source: a ``sources.base.SourceReader``, or the
    ``load.columns.HashingSource`` around one when the row hashes columns."""

    def schema(self) -> pa.Schema: ...

    def key_bounds(self, key: str) -> tuple[int, int, int]: ...

    def key_range_batches(self, key: str, start: int, stop: int) -> Iterator[pa.RecordBatch]: ...


@dataclass
class DeepResult:
    passed: bool
    description: str
    facts: dict[str, int] = field(default_factory=dict)
    first_keys: list[str] = field(default_factory=list)


def _row_hashes(table: pa.Table, columns: list[str], keys: list[str]) -> dict[tuple, int]:
    """(merge key values) -> hash of the row's values (in ``columns`` order), one Python pass
    per range."""
    values = [table.column(c).to_pylist() for c in columns]
    ids = zip(*(table.column(k).to_pylist() for k in keys), strict=True)
    return {k: _hash(row) for k, row in zip(ids, zip(*values, strict=True), strict=True)}


def _hash(row: tuple) -> int:
    try:
        return hash(row) & _MASK
    except TypeError:  # lists, maps: hashed by their text
        return hash(repr(row)) & _MASK


def _live_filter(names: set[str]):
    import pyarrow.compute as pc

    flt = None
    for column in (END_AT, DELETED_AT):
        if column in names:
            part = pc.field(column).is_null()
            flt = part if flt is None else flt & part
    return flt


def deep_verify(
    spec: LoadSpec,
    source: KeyRangeSource,
    table: DeltaTable,
    *,
    segment_rows: int = DEFAULT_SEGMENT_ROWS,
    log: Callable[[str], None] = lambda _m: None,
) -> DeepResult:
    """Compare the whole table; ``table`` is the destination's DeltaTable."""
    from databricks_scripts.load.types import arrow_schema_of

    if not spec.merge_keys:
        raise ValueError("deep verification compares rows by key: the row has no merge_keys")
    key = spec.merge_keys[0]
    dest_schema = arrow_schema_of(table.schema())
    columns = [n for n in source.schema().names if n in dest_schema.names]
    schema = pa.schema([dest_schema.field(c) for c in columns])
    if not pa.types.is_integer(schema.field(key).type):
        raise ValueError(
            f"deep verification cuts the table into ranges of its first merge key; {key!r} is "
            f"{schema.field(key).type}, not an integer"
        )
    low, high, source_rows = source.key_bounds(key)
    dataset = delta_dataset(table)
    exact = spec.delete_detection != "none" or spec.load_strategy == "full"
    run = _Run(list(spec.merge_keys), columns, schema, dataset, exact)
    run.outside_span(low, high, source_rows)
    if source_rows:
        ranges = max(1, math.ceil(source_rows / max(segment_rows, 1)))
        width = max(1, math.ceil((high - low + 1) / ranges))
        for i in range(ranges):
            start, stop = low + i * width, min(low + (i + 1) * width, high + 1)
            run.compare(source.key_range_batches(key, start, stop), start, stop)
    facts, first = run.facts, run.first
    passed = not (facts["missing"] or facts["changed"] or facts["extra"])
    text = (
        f"{facts['source_rows']:,} source rows in {facts['ranges']:,} key ranges against "
        f"{facts['destination_rows']:,} destination rows: "
    )
    if passed:
        text += "every key and every row's values agree"
    else:
        text += (
            f"{facts['missing']:,} missing, {facts['changed']:,} changed, {facts['extra']:,} "
            f"extra in {facts['ranges_differing']:,} range(s); first: {', '.join(first)}"
        )
    log(f"deep verification: {text}")
    return DeepResult(passed, text, facts, first)


class _Run:
    """The facts of one deep verification as its ranges are compared."""

    def __init__(
        self, keys: list[str], columns: list[str], schema: pa.Schema, dataset, exact: bool
    ):
        self.keys, self.key = keys, keys[0]  # rows are told apart by every key; ranges by the first
        self.columns, self.schema, self.dataset = columns, schema, dataset
        self.exact = exact  # deletes detected: a key the source lacks is drift
        self.live = _live_filter(set(dataset.schema.names))
        self.facts = {"source_rows": 0, "destination_rows": 0, "ranges": 0, "ranges_differing": 0}
        self.facts.update(missing=0, changed=0, extra=0)
        self.first: list[str] = []

    def _note(self, fact: str, key: tuple) -> None:
        self.facts[fact] += 1
        if len(self.first) < SAMPLE:
            named = ", ".join(f"{k}={v}" for k, v in zip(self.keys, key, strict=True))
            self.first.append(f"{named} ({fact})")

    def outside_span(self, low: Any, high: Any, source_rows: int) -> None:
        """Destination rows whose key lies outside the source's [MIN, MAX] (all, if empty)."""
        import pyarrow.compute as pc

        outside = (
            None if not source_rows else (pc.field(self.key) < low) | (pc.field(self.key) > high)
        )
        if self.live is not None:
            outside = self.live if outside is None else outside & self.live
        rows = self.dataset.to_table(columns=self.keys, filter=outside)
        self.facts["destination_rows"] += rows.num_rows
        if self.exact:
            for k in zip(*(rows.column(c).to_pylist() for c in self.keys), strict=True):
                self._note("extra", k)

    def compare(self, batches, start: int, stop: int) -> None:
        import pyarrow.compute as pc

        from databricks_scripts.load.types import cast_batch

        cast = [cast_batch(b, self.schema) for b in batches]
        src = pa.Table.from_batches([b for b in cast if b.num_rows], self.schema)
        flt = (pc.field(self.key) >= start) & (pc.field(self.key) < stop)
        if self.live is not None:
            flt = flt & self.live
        dst = self.dataset.to_table(columns=self.columns, filter=flt).cast(self.schema)
        self.facts["ranges"] += 1
        self.facts["source_rows"] += src.num_rows
        self.facts["destination_rows"] += dst.num_rows
        src_h = _row_hashes(src, self.columns, self.keys)
        dst_h = _row_hashes(dst, self.columns, self.keys)
        if not self.exact:  # deletes not detected: keys the source lacks may stay
            dst_h = {k: h for k, h in dst_h.items() if k in src_h}
        if len(src_h) == len(dst_h) and sum(src_h.values()) == sum(dst_h.values()):
            return  # the range's checksums agree
        self.facts["ranges_differing"] += 1
        for k, h in src_h.items():
            other = dst_h.get(k)
            if other is None:
                self._note("missing", k)
            elif other != h:
                self._note("changed", k)
        for k in dst_h.keys() - src_h.keys():
            self._note("extra", k)
