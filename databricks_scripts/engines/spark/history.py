"""Delete detection and SCD type 2 on the Spark engine: generated Delta MERGE statements.

Same rules as the Arrow engine (engines.arrow.deletes, engines.arrow.scd2; docs/loader.md "Deletes and
history"), as ONE Delta MERGE per load:

- deletes (merge / incremental with keys): the MERGE source is the rows read plus, as key-only
  rows, the source's keys that were not read (the key snapshot: only the key columns, which
  Spark prunes into the JDBC query). ``WHEN NOT MATCHED BY SOURCE`` then hits exactly the
  destination keys gone from the source: ``UPDATE SET __DELETED_AT`` (soft) or ``DELETE`` (hard).
- scd2: the staged-union pattern. Every row read comes once with its key as the merge key (it
  matches the current version, which it closes when a non-key column differs, NULL-safe
  ``<=>``; a new key is inserted), and once more with a NULL merge key when it changed (never
  matches: inserted as the new version). Key-only snapshot rows keep unread keys matched, so
  ``WHEN NOT MATCHED BY SOURCE AND __END_AT IS NULL`` closes the current version of a gone key.

Before the MERGE the number of rows it would delete or close is counted and compared with
``delete_max_fraction`` of the live rows (the floor): above it the load fails and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from databricks_scripts.contract import DELETED_AT, END_AT, START_AT
from databricks_scripts.engines.spark.commits import check_keys
from databricks_scripts.engines.spark.writes import MERGE, SparkWrite, created
from databricks_scripts.failures import SchemaConflict
from databricks_scripts.load.history_rules import check_floor
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import SPARK

KEY_ONLY = "__dataloader_key_only"
MERGE_KEY = "__dataloader_merge_key_"
PRESENT = "__dataloader_present"

_TECHNICAL = (DELETED_AT, START_AT, END_AT)


def _q(name: str) -> str:
    return SPARK.quote(name)


def timestamp_literal(value: dt.datetime) -> str:
    """A TIMESTAMP literal of the load's time (our own value, UTC; the session zone is UTC)."""
    text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"TIMESTAMP'{text}'"


def start_expression(cursor: str | None, cursor_type: str | None, load_ts: str, alias: str) -> str:
    """__START_AT of a version: the cursor (timestamp / date) or, without one, the load's time."""
    if cursor and cursor_type in ("timestamp", "timestamp_ntz", "date"):
        return f"coalesce(CAST({alias}.{_q(cursor)} AS TIMESTAMP), {load_ts})"
    return load_ts


def _same(columns: Sequence[str], left: str, right: str) -> str:
    if not columns:
        return "true"
    return " AND ".join(f"{left}.{_q(c)} <=> {right}.{_q(c)}" for c in columns)


def _on(keys: Sequence[str], left: str, right: str, right_prefix: str = "") -> str:
    return " AND ".join(f"{left}.{_q(k)} = {right}.{_q(right_prefix + k)}" for k in keys)


def _not_read(keys: Sequence[str], view: str) -> str:
    """For a key-snapshot row ``k``: its key is not among the rows read."""
    return f"NOT EXISTS (SELECT 1 FROM {_q(view)} AS r WHERE {_on(keys, 'r', 'k')})"


def deletes_source(view: str, keys_view: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    """The MERGE source of a delete-detecting upsert: rows read, then unread keys (key-only)."""
    cols = ", ".join(_q(c) for c in columns)
    key_only = ", ".join(f"k.{_q(c)}" if c in keys else f"NULL AS {_q(c)}" for c in columns)
    return (
        f"SELECT {cols}, false AS {_q(KEY_ONLY)} FROM {_q(view)} "
        f"UNION ALL SELECT {key_only}, true AS {_q(KEY_ONLY)} FROM {_q(keys_view)} AS k "
        f"WHERE {_not_read(keys, view)}"
    )


def deletes_merge(
    target: str,
    view: str,
    keys_view: str,
    keys: Sequence[str],
    columns: Sequence[str],
    *,
    soft: bool,
    load_ts: str,
) -> str:
    sets = [f"t.{_q(c)} = s.{_q(c)}" for c in columns]
    names = [_q(c) for c in columns]
    values = [f"s.{_q(c)}" for c in columns]
    if soft:
        sets.append(f"t.{_q(DELETED_AT)} = NULL")
        names.append(_q(DELETED_AT))
        values.append("NULL")
        gone = (
            f"WHEN NOT MATCHED BY SOURCE AND t.{_q(DELETED_AT)} IS NULL "
            f"THEN UPDATE SET t.{_q(DELETED_AT)} = {load_ts}"
        )
    else:
        gone = "WHEN NOT MATCHED BY SOURCE THEN DELETE"
    return (
        f"MERGE INTO {target} AS t USING ({deletes_source(view, keys_view, keys, columns)}) AS s "
        f"ON {_on(keys, 't', 's')} "
        f"WHEN MATCHED AND NOT s.{_q(KEY_ONLY)} THEN UPDATE SET {', '.join(sets)} "
        f"WHEN NOT MATCHED AND NOT s.{_q(KEY_ONLY)} THEN INSERT ({', '.join(names)}) "
        f"VALUES ({', '.join(values)}) {gone}"
    )


def scd2_source(
    target: str,
    view: str,
    keys_view: str | None,
    keys: Sequence[str],
    columns: Sequence[str],
    start: str,
) -> str:
    """The staged union: rows read with their merge key, changed rows again without one, and
    (with delete detection) unread snapshot keys as key-only rows."""
    others = [c for c in columns if c not in keys]
    cols = ", ".join(f"s.{_q(c)}" for c in columns)
    merge_keys = ", ".join(f"s.{_q(k)} AS {_q(MERGE_KEY + k)}" for k in keys)
    null_keys = ", ".join(f"NULL AS {_q(MERGE_KEY + k)}" for k in keys)
    parts = [
        (
            f"SELECT {merge_keys}, {cols}, {start} AS {_q(START_AT)}, false AS {_q(KEY_ONLY)} "
            f"FROM {_q(view)} AS s"
        ),
        (
            f"SELECT {null_keys}, {cols}, {start} AS {_q(START_AT)}, false AS {_q(KEY_ONLY)} "
            f"FROM {_q(view)} AS s JOIN {target} AS c ON {_on(keys, 'c', 's')} "
            f"AND c.{_q(END_AT)} IS NULL WHERE NOT ({_same(others, 's', 'c')})"
        ),
    ]
    if keys_view is not None:
        key_cols = ", ".join(f"k.{_q(k)} AS {_q(MERGE_KEY + k)}" for k in keys)
        nulls = ", ".join(f"NULL AS {_q(c)}" for c in columns)
        parts.append(
            f"SELECT {key_cols}, {nulls}, NULL AS {_q(START_AT)}, true AS {_q(KEY_ONLY)} "
            f"FROM {_q(keys_view)} AS k WHERE {_not_read(keys, view)}"
        )
    return " UNION ALL ".join(parts)


def scd2_merge(
    target: str,
    view: str,
    keys_view: str | None,
    keys: Sequence[str],
    columns: Sequence[str],
    *,
    start: str,
    soft: bool,
    load_ts: str,
) -> str:
    others = [c for c in columns if c not in keys]
    names = [_q(c) for c in columns] + [_q(START_AT), _q(END_AT)]
    values = [f"s.{_q(c)}" for c in columns] + [f"s.{_q(START_AT)}", "NULL"]
    if soft:
        names.append(_q(DELETED_AT))
        values.append("NULL")
    text = (
        f"MERGE INTO {target} AS t USING "
        f"({scd2_source(target, view, keys_view, keys, columns, start)}) AS s "
        f"ON {_on(keys, 't', 's', MERGE_KEY)} AND t.{_q(END_AT)} IS NULL "
        f"WHEN MATCHED AND NOT s.{_q(KEY_ONLY)} AND NOT ({_same(others, 't', 's')}) "
        f"THEN UPDATE SET t.{_q(END_AT)} = s.{_q(START_AT)} "
        f"WHEN NOT MATCHED AND NOT s.{_q(KEY_ONLY)} THEN INSERT ({', '.join(names)}) "
        f"VALUES ({', '.join(values)})"
    )
    if keys_view is not None:
        closing = f"t.{_q(END_AT)} = {load_ts}"
        if soft:
            closing += f", t.{_q(DELETED_AT)} = {load_ts}"
        text += f" WHEN NOT MATCHED BY SOURCE AND t.{_q(END_AT)} IS NULL THEN UPDATE SET {closing}"
    return text


def first_load_rows(view: str, *, scd2: bool, soft: bool, start: str) -> str:
    """The rows of a first load: every row read, with the technical columns."""
    extra = []
    if scd2:
        extra += [f"{start} AS {_q(START_AT)}", f"CAST(NULL AS TIMESTAMP) AS {_q(END_AT)}"]
    if soft:
        extra.append(f"CAST(NULL AS TIMESTAMP) AS {_q(DELETED_AT)}")
    return f"SELECT s.*, {', '.join(extra)} FROM {_q(view)} AS s"


def live_condition(*, scd2: bool, soft: bool) -> str:
    if scd2:
        return f"t.{_q(END_AT)} IS NULL"
    return f"t.{_q(DELETED_AT)} IS NULL" if soft else "true"


def floor_query(target: str, view: str, keys_view: str, keys: Sequence[str], live: str) -> str:
    """(live rows, rows the load would delete or close) of the destination.

    A live row is gone when its key is neither in the key snapshot nor among the rows read. Both
    are LEFT JOINs on distinct keys (one match at most, so nothing is counted twice), not
    ``NOT EXISTS`` inside the aggregate: a correlated subquery there is refused by Sail and is
    not portable across Spark versions.
    """
    cols = ", ".join(_q(k) for k in keys)
    present = _q(PRESENT)

    def keys_of(source: str, alias: str) -> str:
        return (
            f"LEFT JOIN (SELECT DISTINCT {cols}, true AS {present} FROM {_q(source)}) AS {alias} "
            f"ON {_on(keys, 't', alias)}"
        )

    gone = f"k.{present} IS NULL AND r.{present} IS NULL"
    return (
        f"SELECT count(*) AS live, coalesce(sum(CASE WHEN {gone} THEN 1 ELSE 0 END), 0) AS gone "
        f"FROM {target} AS t {keys_of(keys_view, 'k')} {keys_of(view, 'r')} WHERE {live}"
    )


def history_statement(
    spark: Any,
    spec: LoadSpec,
    password: str | None,
    target: str,
    view: str,
    fields: Sequence[tuple[str, str]],
    target_fields: Sequence[tuple[str, str]],
    exists: bool,
    applied: str,
    where: list[str],
    read_keys: Callable[[], Any],
    log: Callable[[str], None],
) -> SparkWrite | None:
    """The write for a table with delete detection or scd2 (None: not such a table).

    ``read_keys()`` gives the source's key-only DataFrame; ``where[0]`` names the failing step.
    """
    scd2 = spec.load_strategy == "scd2"
    detect, soft = spec.delete_detection != "none", spec.delete_detection == "soft"
    if not (scd2 or detect):
        return None
    columns = [n for n, _ in fields]
    clash = sorted(set(columns) & set(_TECHNICAL))
    if clash:
        raise SchemaConflict(f"source column(s) {clash} use a name reserved for technical columns")
    keys = list(spec.merge_keys)
    types = {n.lower(): t for n, t in fields}
    cursor = spec.incremental_column
    load_ts = timestamp_literal(dt.datetime.now(dt.UTC))
    start = start_expression(cursor, types.get((cursor or "").lower()), load_ts, "s")
    if not exists:
        if not scd2 and not soft:
            return None  # hard deletes on a first load: the plain CREATE TABLE AS SELECT
        query = first_load_rows(view, scd2=scd2, soft=soft, start=start)
        return created(target, query, columns, replace=False)
    if not scd2 and applied == "full":
        return None  # hard deletes on an overwrite: what is gone is left out anyway
    have = {n.lower(): t for n, t in target_fields}
    for key in keys:
        if have.get(key.lower()) != types.get(key.lower()):
            raise SchemaConflict(
                f"merge key {key!r} changed type: {have.get(key.lower())} in the destination, "
                f"{types.get(key.lower())} in the source; a key changing type is refused. On "
                f"the Spark engine keep the old history by renaming it (ALTER TABLE {target} "
                "RENAME TO <name>__archived_<date>); the next load starts a new history table "
                "(docs/loader.md, 'A key changes type')"
            )
    if soft and DELETED_AT.lower() not in have:
        log(f"adding column {DELETED_AT} for soft delete detection")
        spark.sql(f"ALTER TABLE {target} ADD COLUMNS ({_q(DELETED_AT)} TIMESTAMP)")
    check_keys(spark, view, keys)  # set and unique, before the MERGE starts
    keys_view = None
    if detect:
        where[0] = "read source keys"
        keys_view = f"dl_keys_{uuid.uuid4().hex[:12]}"
        read_keys().createOrReplaceTempView(keys_view)
        where[0] = "check deletes"
        live = live_condition(scd2=scd2, soft=soft)
        row = spark.sql(floor_query(target, view, keys_view, keys, live)).collect()[0]
        check_floor(spec, int(row["gone"]), int(row["live"]))
        where[0] = "write destination"
    if not scd2 and keys_view is not None:  # not scd2: deletes are detected, the keys were read
        text = deletes_merge(target, view, keys_view, keys, columns, soft=soft, load_ts=load_ts)
    else:
        text = scd2_merge(
            target, view, keys_view, keys, columns, start=start, soft=soft, load_ts=load_ts
        )
    return SparkWrite(MERGE, target, text)
