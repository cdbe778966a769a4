"""The row-count check of one load: do the counts the load script reported add up?

``reconcile_row_counts(reported)`` is plain Python (no Dagster): it reads the wire contract's
counts (``LoadMetadata``) and says whether they agree, with both numbers when they do not.

- full load: the rows the source's one statement returned (one snapshot, counted by the reader)
  must equal the rows written and the destination's row count after the write (read from the
  Delta log, independently of the writer);
- incremental (append): the destination must have grown by exactly the rows written, and no more
  rows can be written than were read (look-back rows already loaded are dropped, never added);
- merge: the destination grows by the rows inserted, so its change lies between 0 and the rows
  read (an update changes no count).

A load that recorded an earlier attempt's commit (nothing read) or whose counts the engine could
not give (Delta statistics missing) is not checked: no evaluation is reported, the log says why.
``row_count_evaluation`` turns the result into a ``dg.AssetCheckEvaluation`` on the destination
table's asset key (``table_assets.destination_asset_key``). It is reported after the status
write-back, with severity WARN, so a failed check never blocks or fails the load: it flags it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from databricks_scripts.contract import LoadMetadata

ROW_COUNT_CHECK = "row_count_reconciliation"
ROW_COUNT_CHECK_DESCRIPTION = (
    "The load's row counts add up: full loads write every source row of one snapshot; "
    "incremental and merge loads change the destination by what they read."
)


@dataclass(frozen=True)
class RowCountCheck:
    """The outcome of the reconciliation: passed, a sentence with the numbers, and the numbers."""

    passed: bool
    description: str
    counts: dict[str, int] = field(default_factory=dict)


def _count(reported: Mapping[str, Any], key: str) -> int | None:
    value = reported.get(key)
    value = getattr(value, "value", value)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def reconcile_row_counts(reported: Mapping[str, Any]) -> RowCountCheck | None:
    """The check of one load's reported counts; None when the load cannot be checked."""
    if _count(reported, LoadMetadata.RECONCILED_METADATA_ID) is not None:
        return None  # nothing read: an earlier attempt's commit was recorded instead
    strategy = getattr(reported.get(LoadMetadata.LOAD_STRATEGY), "value", None) or reported.get(
        LoadMetadata.LOAD_STRATEGY
    )
    read = _count(reported, LoadMetadata.ROWS_READ)
    written = _count(reported, LoadMetadata.ROWS_WRITTEN)
    before = _count(reported, LoadMetadata.DESTINATION_ROWS_BEFORE)
    after = _count(reported, LoadMetadata.ROW_COUNT)
    if strategy == "full":
        return _full(_count(reported, LoadMetadata.SOURCE_ROWS), written, after)
    if None in (read, written, before, after):
        return None
    change = after - before  # type: ignore[operator]
    counts = {
        "rows_read": read,
        "rows_written": written,
        "destination_rows_before": before,
        "destination_rows_after": after,
        "destination_change": change,
    }
    if strategy == "merge":
        ok = 0 <= change <= read  # type: ignore[operator]
        text = (
            f"merge read {read:,} rows; the destination changed by {change:,} rows "
            f"({before:,} -> {after:,})"
        )
        if not ok:
            text += ", more than the rows read (or fewer than before): rows were lost or doubled"
        return RowCountCheck(ok, text, counts)
    ok = change == written and written <= read  # type: ignore[operator]
    text = (
        f"incremental load read {read:,} rows and wrote {written:,}; the destination changed by "
        f"{change:,} rows ({before:,} -> {after:,})"
    )
    if not ok:
        text += ": the destination's change does not match the rows read and written"
    return RowCountCheck(ok, text, counts)


def _full(source: int | None, written: int | None, after: int | None) -> RowCountCheck | None:
    if None in (source, written, after):
        return None
    counts = {"source_rows": source, "rows_written": written, "destination_rows_after": after}
    ok = source == written == after
    text = (
        f"full load: source snapshot {source:,} rows, written {written:,}, destination now "
        f"holds {after:,}"
    )
    if not ok:
        text += ": the counts differ"
    return RowCountCheck(ok, text, counts)  # type: ignore[arg-type]


def row_count_evaluation(
    asset_key: dg.AssetKey, check: RowCountCheck, *, control_key: str, metadata_id: int
) -> dg.AssetCheckEvaluation:
    """The check's evaluation on the destination table's asset key (severity WARN)."""
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=ROW_COUNT_CHECK,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=check.description,
        metadata={
            **check.counts,
            "control_key": dg.MetadataValue.text(control_key),
            "metadata_id": dg.MetadataValue.text(str(metadata_id)),
        },
    )
