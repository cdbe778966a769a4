"""The reconciliation check of one load: facts read from the source and from the destination.

Nothing here trusts what the writer says it wrote. After the commit, the loader reads

- from the source, on the reader's connection and inside the snapshot the rows were read in
  (PostgreSQL and MySQL/MariaDB hold one read-only REPEATABLE READ transaction for the whole load):
  the rows in scope, i.e. the rows the load's read selects (``cursor > watermark - look-back``
  for an incremental read, every row otherwise);
- from the destination's committed version: the rows in the same scope that the source's rows
  should now be, i.e. live rows (not soft-deleted), and for scd2 the open versions, whose cursor
  is above the same bound; for keyed tables how many distinct keys those rows hold.

Rules (``verify_depth = 'counts'``, the default):

- a keyed table never holds one key twice in scope (a doubled row);
- a full overwrite, and a keyed table with delete detection, hold exactly the source's rows;
- a keyed table without delete detection may hold more (keys deleted at the source stay), and so
  may an append table (earlier versions of updated rows stay): never fewer.

``verify_depth = 'keys'`` also compares the sets of key (and cursor) values, naming the first
missing or extra ones: a lost update whose old version is still in scope shows here. ``none``
skips the check. What no depth sees: rows outside the scope (below an incremental table's
look-back bound), and changed values under an unchanged key and cursor (the deep verification
job compares row hashes for that, engines.arrow.deep_verify).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from databricks_scripts.contract import DEFAULT_VERIFY_DEPTH
from databricks_scripts.engines.arrow.delta_dataset import delta_dataset
from databricks_scripts.load.keys import count_keys

SAMPLE = 5


@dataclass(frozen=True)
class Verification:
    """The outcome: passed, one sentence with the numbers, and the numbers."""

    passed: bool
    description: str
    facts: dict[str, int] = field(default_factory=dict)
    depth: str = DEFAULT_VERIFY_DEPTH


def _scope_filter(names: set[str], cursor: str | None, lower: object | None):
    """The destination rows the source's scope corresponds to, as a dataset filter (or None):
    open versions (scd2), rows not marked deleted (soft), cursor above the read's bound."""
    import pyarrow.compute as pc

    from databricks_scripts.contract import DELETED_AT, END_AT

    parts = []
    if END_AT in names:
        parts.append(pc.field(END_AT).is_null())
    if DELETED_AT in names:
        parts.append(pc.field(DELETED_AT).is_null())
    if lower is not None:
        parts.append(pc.field(cursor) > lower)
    flt = None
    for part in parts:
        flt = part if flt is None else flt & part
    return flt


def _unverifiable(load: Any, source: Any, lower: object | None) -> str | None:
    """Why this load's scope cannot be compared (None: it can)."""
    if not getattr(source, "snapshot", False):
        return "the source was not read in one snapshot (only PostgreSQL and MySQL/MariaDB are)"
    if lower is not None:
        t = load.write_schema.field(load.cursor).type
        if load.numeric_text or not (
            pa.types.is_integer(t)
            or pa.types.is_decimal(t)
            or pa.types.is_floating(t)
            or pa.types.is_temporal(t)
        ):
            return (
                f"the cursor {load.cursor!r} is text: its order in the source may differ from "
                "the destination's"
            )
    return None


def verify_committed(
    load: Any, source: Any, open_table: Callable[[], Any], log: Callable[[str], None]
) -> Verification | None:
    """The check of the committed destination (``open_table``: opened afresh, its latest
    version, whatever the writers hold) against the source's snapshot. A check that cannot run
    fails (the data is unverified); it never fails the committed load."""
    if load.spec.verify_depth == "none":
        return None
    try:
        verification = verify_load(load, source, open_table(), load.spec.verify_depth)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, with the reason
        verification = Verification(
            False,
            f"could not verify the load: {type(exc).__name__}: {exc}",
            depth=load.spec.verify_depth,
        )
    if verification is not None:
        state = "passed" if verification.passed else "FAILED"
        log(f"reconciliation check ({verification.depth}) {state}: {verification.description}")
    return verification


def _dest_count(dataset: Any, names: set[str], cursor: str | None, above: object | None) -> int:
    return dataset.count_rows(filter=_scope_filter(names, cursor, above))


def _dest_counts(
    dataset: Any, names: set[str], keys: list[str], cursor: str | None, lower, watermark
) -> dict[str, int]:
    """The committed version's counts: live rows (scd2: open versions) and, for a keyed table,
    their distinct keys; rows above the previous watermark and above the look-back's bound."""
    counts: dict[str, int] = {}
    if keys:
        live = _scope_filter(names, None, None)
        counts["destination_rows"], counts["destination_keys"] = count_keys(
            dataset.to_batches(columns=keys, filter=live),
            tuple(keys),
            dataset.count_rows(filter=live),
        )
    else:
        counts["destination_rows"] = _dest_count(dataset, names, None, None)
    if watermark is not None:
        counts["destination_rows_new"] = _dest_count(dataset, names, cursor, watermark)
    if lower is not None and lower != watermark:
        counts["destination_rows_in_scope"] = _dest_count(dataset, names, cursor, lower)
    return counts


def verify_load(load: Any, source: Any, table: Any, depth: str) -> Verification | None:
    """The check of a committed load (None: ``verify_depth`` is none)."""
    if depth == "none" or table is None:
        return None
    lower = None if load.applied == "full" else load.lower
    watermark = None if lower is None else load.watermark
    why_not = _unverifiable(load, source, lower)
    if why_not is not None:
        return Verification(True, f"not verified: {why_not}", {}, depth)
    keys = list(load.spec.merge_keys)
    # What the write freed stays with Arrow's allocator: hand it back before the keys are read,
    # so the check does not add to the load's peak (a keyed first load of 10M rows: 542 -> 513 MiB).
    pa.default_memory_pool().release_unused()
    dataset = delta_dataset(table)
    names = set(dataset.schema.names)
    # The source counts in one statement, inside the load's snapshot (every row, the read's
    # scope, above the watermark), on the source's server while this process counts the
    # destination: the source connection is idle once the commit is made.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-count") as pool:
        counted = pool.submit(source.count_rows, lower, watermark)
        dest = _dest_counts(dataset, names, keys, load.cursor, lower, watermark)
        source_all, source_scope, source_new = counted.result()
    dest_all, distinct = dest["destination_rows"], dest.get("destination_keys")
    facts = {"source_rows": source_all, "destination_rows": dest_all}
    if keys:
        facts["destination_keys"] = distinct
    # Exactly the source's rows: an overwrite, or a keyed table whose deletes are detected. Else
    # the destination may hold more (keys the source deleted; an append table's earlier versions).
    exact = load.applied == "full" or (bool(keys) and load.spec.delete_detection != "none")
    parts = [f"table: source {source_all:,}, destination {dest_all:,}"]
    problems = []
    if keys and distinct != dest_all:
        problems.append(f"{dest_all - distinct:,} key(s) appear more than once")
    if exact and dest_all != source_all:
        problems.append(f"the table's counts differ by {dest_all - source_all:+,}")
    elif dest_all < source_all:
        problems.append(f"{source_all - dest_all:,} source row(s) missing from the table")
    if watermark is not None:
        # Above the previous watermark the destination holds exactly what the source has: none
        # of it was loaded before, and this load read all of it.
        dest_new = dest["destination_rows_new"]
        facts.update(source_rows_new=source_new, destination_rows_new=dest_new)
        parts.append(f"{load.cursor} > {watermark!s}: source {source_new:,}, {dest_new:,}")
        if dest_new != source_new:
            problems.append(f"{dest_new - source_new:+,} row(s) above the previous watermark")
    if lower is not None and lower != watermark:
        # The look-back window read again: earlier versions and deleted keys may stay there.
        dest_scope = dest["destination_rows_in_scope"]
        facts.update(source_rows_in_scope=source_scope, destination_rows_in_scope=dest_scope)
        parts.append(f"{load.cursor} > {lower!s}: source {source_scope:,}, {dest_scope:,}")
        if dest_scope < source_scope:
            problems.append(f"{source_scope - dest_scope:,} row(s) missing in the look-back")
    if depth == "keys" and keys:
        problems += _compare_keys(load, source, dataset, names, exact, facts)
    text = "; ".join(parts)
    if problems:
        return Verification(False, f"{text}: {'; '.join(problems)}", facts, depth)
    return Verification(True, text, facts, depth)


def _compare_keys(load, source, dataset, names: set[str], exact: bool, facts: dict) -> list[str]:
    """Key (and cursor) sets of the whole table on both sides: the first missing or stale, and
    (when the table must hold exactly the source's rows) the first extra."""
    from databricks_scripts.load.types import cast_batch

    columns = list(load.spec.merge_keys)
    if load.cursor is not None and load.cursor not in columns:
        columns.append(load.cursor)
    schema = pa.schema([load.write_schema.field(c) for c in columns])
    batches = [cast_batch(b, schema) for b in source.key_batches(tuple(columns))]
    src = pa.Table.from_batches([b for b in batches if b.num_rows], schema)
    dest = dataset.to_table(columns=columns, filter=_scope_filter(names, None, None))
    src, dest = _joinable(src, load.cursor), _joinable(dest.cast(schema), load.cursor)
    missing = src.join(dest, columns, join_type="left anti")
    facts["source_keys_missing"] = missing.num_rows
    problems = []
    if missing.num_rows:
        problems.append(
            f"{missing.num_rows:,} source key(s) missing or stale, first: {_sample(missing)}"
        )
    if exact:
        extra = dest.join(src, columns, join_type="left anti")
        facts["destination_keys_extra"] = extra.num_rows
        if extra.num_rows:
            problems.append(
                f"{extra.num_rows:,} destination key(s) not in the source, first: {_sample(extra)}"
            )
    return problems


def _joinable(table: pa.Table, cursor: str | None) -> pa.Table:
    """The cursor as text with NULL spelled out: a join never matches NULL with NULL."""
    if cursor is None or cursor not in table.column_names:
        return table
    import pyarrow.compute as pc

    i = table.column_names.index(cursor)
    text = pc.fill_null(pc.cast(table.column(i), pa.string()), "NULL")
    return table.set_column(i, cursor, text)


def _sample(table: pa.Table) -> str:
    rows = table.slice(0, SAMPLE).to_pylist()
    return ", ".join("(" + ", ".join(f"{k}={v!s}" for k, v in r.items()) + ")" for r in rows)
