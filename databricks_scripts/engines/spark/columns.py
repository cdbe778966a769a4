"""Column control and the schema contract on the Spark engine (sql/017, load.columns).

- ``columns_exclude``: dropped from the JDBC DataFrame before anything reads it; Spark's JDBC
  source prunes columns, so its SELECT names only the others (a Unity Catalog source reads only
  those columns' files).
- ``columns_hash``: replaced by ``load.columns.spark_hash_column`` (HMAC-SHA-256 hex built from
  ``sha2``; the key's pads are literals of the plan, on the cluster only).
- ``schema_change``: the columns the destination gets, or the failure naming every change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from databricks_scripts.failures import SchemaConflict
from databricks_scripts.load.columns import ColumnControlError, match_columns, spark_hash_column
from databricks_scripts.load.driver import column_control_rebuild
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.sql import spark_add_columns
from databricks_scripts.load.types import SchemaContractError

_LOADER_COLUMNS = {"__start_at", "__end_at", "__deleted_at"}


_WIDENING = {
    ("tinyint", "smallint"),
    ("tinyint", "int"),
    ("tinyint", "bigint"),
    ("smallint", "int"),
    ("smallint", "bigint"),
    ("int", "bigint"),
    ("float", "double"),
}


def spark_schema_changes(
    source: Sequence[tuple[str, str]], target: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(columns to add, problems) comparing (name, Spark simpleString) lists; names compare
    case-insensitively as Delta does."""
    target_types = {name.lower(): t for name, t in target}
    added, problems = [], []
    for name, t in source:
        have = target_types.get(name.lower())
        if have is None:
            added.append((name, t))
        elif have != t and (t, have) not in _WIDENING:
            problems.append(f"column {name!r} is {have} in the destination but {t} in the source")
    return added, problems


def controlled_frame(df: Any, spec: LoadSpec, hash_key: bytes | None) -> Any:
    """``df`` without the excluded columns and with the hashed ones as their HMAC."""
    exclude, hashed = spec.columns_exclude, spec.columns_hash
    if exclude:
        df = df.drop(*match_columns(exclude, df.columns, "columns_exclude"))
    if hashed:
        if hash_key is None:
            raise ColumnControlError("columns_hash is set but no hash key was resolved")
        types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        for name in match_columns(hashed, df.columns, "columns_hash"):
            df = df.withColumn(name, spark_hash_column(name, hash_key, types[name]))
    return df


def contract_changes(
    spec: LoadSpec,
    source: Sequence[tuple[str, str]],
    target: Sequence[tuple[str, str]],
    added: list[tuple[str, str]],
    problems: list[str],
) -> tuple[list[tuple[str, str]], list[str]]:
    """(columns to add, notes) under the row's ``schema_change``; ``freeze`` raises naming every
    added, dropped or retyped column."""
    change = spec.schema_change
    source_types = {n.lower(): t for n, t in source}
    dropped = [n for n, _ in target if n.lower() not in source_types]
    dropped = [n for n in dropped if n.lower() not in _LOADER_COLUMNS]
    if change == "freeze":
        target_types = {n.lower(): t for n, t in target}
        changes = [f"added column {n!r} ({t})" for n, t in added]
        changes += [f"dropped column {n!r}" for n in dropped]
        changes += [
            f"retyped column {n!r} ({target_types[n.lower()]} -> {t})"
            for n, t in source
            if n.lower() in target_types and target_types[n.lower()] != t
        ]
        if changes:
            raise SchemaContractError(
                "schema_change is 'freeze' and the source table changed: "
                + "; ".join(changes)
                + ". Nothing was written. To take the change set schema_change = 'evolve' (or "
                "force_full_reload to rebuild the table with the new columns)"
            )
    if problems:
        raise SchemaConflict("incompatible type change: " + "; ".join(problems))
    notes = []
    if change == "discard_new" and added:
        notes.append(
            f"new source column(s) {', '.join(n for n, _ in added)} not loaded "
            "(schema_change discard_new)"
        )
        added = []
    if dropped:
        notes.append(
            f"the source no longer has column(s) {', '.join(dropped)}: kept in the destination, "
            "NULL for new rows"
        )
    return added, notes


def recorded_commits(spark: Any, target: str) -> list[dict]:
    """The DataLoader properties (``userMetadata``) of ``target``'s newest commits, newest first."""
    commits = []
    for row in spark.sql(f"DESCRIBE HISTORY {target} LIMIT 50").collect():
        try:
            meta = json.loads(row.asDict().get("userMetadata") or "")
        except (ValueError, TypeError):
            meta = {}
        commits.append(meta if isinstance(meta, dict) else {})
    return commits


def rebuild_if_changed(
    spark: Any, spec: LoadSpec, target: str, exists: bool, log: Callable[[str], None]
) -> tuple[LoadSpec, str]:
    """(spec, note): ``load.driver.column_control_rebuild`` on ``target``'s recorded commits; the
    note says what changed ('' when nothing did)."""
    if not exists:
        return spec, ""
    spec, note = column_control_rebuild(spec, recorded_commits(spark, target), log)
    return spec, note or ""


def evolve_schema(
    spark: Any,
    spec: LoadSpec,
    target: str,
    source_fields: Sequence[tuple[str, str]],
    target_fields: Sequence[tuple[str, str]],
    log: Callable[[str], None],
) -> _Fields:
    """Add the source's new columns to ``target`` as the row's schema_change allows; an
    incompatible type change is refused. Returns the source fields the load writes (``.notes``:
    what the contract did)."""
    added, problems = spark_schema_changes(source_fields, target_fields)
    kept, notes = contract_changes(spec, source_fields, target_fields, added, problems)
    if kept:
        log(f"schema evolution: adding column(s) {', '.join(n for n, _ in kept)}")
        spark.sql(spark_add_columns(target, kept))
    discarded = {n for n, _ in added} - {n for n, _ in kept}
    return _Fields([f for f in source_fields if f[0] not in discarded], notes)


class _Fields(list[tuple[str, str]]):
    """The source fields a load writes, with the schema contract's notes."""

    def __init__(self, fields: Iterable[tuple[str, str]], notes: list[str]):
        super().__init__(fields)
        self.notes = notes
