"""A row sent to review says so where a person looks: its load partition and its table's page.

The decision used to live only on ``dataloader__retry_analysis`` (whose other partitions read
"Missing") and in the control row; the failed load partition said only "Run ... failed". Now a
``needs_review`` asset check fails, with the reason and the command that releases the row, on the
load asset's partition (a partitioned check) and on the destination table's asset, and an
observation carries the same words. A successful load, and executing the check once the row is
released, make it pass again.
"""

from __future__ import annotations

from dataclasses import replace

import dagster as dg

from dagsters.control.rows import ControlRow
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator

NEEDS_REVIEW = "needs review"
NEEDS_REVIEW_CHECK = "needs_review"
NEEDS_REVIEW_CHECK_DESCRIPTION = (
    "Fails while the table's control row is Failed and marked for review (retry analysis sent it "
    "to a person): says why, and the command that releases it once the cause is fixed."
)
RELEASE_JOB = "dataloader__release_review_job"


def release_command(control_key: str) -> str:
    return f"dataloader release {control_key}"


def release_how(control_key: str) -> str:
    return (
        f"fix the cause, then `{release_command(control_key)}` (or launch {RELEASE_JOB} with "
        f"control_key {control_key})"
    )


def table_key(
    row: ControlRow, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.AssetKey | None:
    """The table's asset key (the translator's; None for a row without a destination)."""
    parts = [row.destination_catalog, row.destination_schema_name, row.destination_table_name]
    return translator.get_asset_key(row) if all(parts) else None


def review_verdict(row: ControlRow, reason: str | None = None) -> tuple[bool, str, dict]:
    """(passed, description, metadata) of the ``needs_review`` check for the row as it is now;
    ``reason`` (already redacted) instead of the row's last message when the caller knows it."""
    key = str(row.control_key)
    if not row.needs_review:
        return True, f"Not under review ({row.last_status or 'ready'}).", {}
    why = reason or str(row.last_message or "no reason recorded")
    how = release_how(key)
    metadata = {
        "status": dg.MetadataValue.text(NEEDS_REVIEW),
        "reason": dg.MetadataValue.text(why),
        "release": dg.MetadataValue.text(how),
        "control_key": dg.MetadataValue.text(key),
    }
    return False, f"Needs review: {why}. To load it again: {how}.", metadata


def review_evaluations(
    row: ControlRow,
    reason: str | None = None,
    translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
) -> list[dg.AssetCheckEvaluation]:
    """The ``needs_review`` evaluations of the row's load partition and of its table's asset
    (keyed by ``translator``)."""
    passed, description, metadata = review_verdict(row, reason)
    targets = [(dg.AssetKey(LOAD_ASSET), str(row.control_key)), (table_key(row, translator), None)]
    return [
        dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=NEEDS_REVIEW_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata=metadata,
            partition=partition,
        )
        for asset_key, partition in targets
        if asset_key is not None
    ]


def review_events(
    row: ControlRow, reason: str, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """What tells a person this row needs them (``reason`` already redacted): the failing
    checks and an observation on the load partition and on the table's asset."""
    under_review = replace(row, needs_review=True)
    _, description, metadata = review_verdict(under_review, reason)
    observed: list[dg.AssetObservation | dg.AssetCheckEvaluation] = [
        dg.AssetObservation(
            asset_key=dg.AssetKey(LOAD_ASSET),
            partition=str(row.control_key),
            description=description,
            metadata=metadata,
        )
    ]
    table = table_key(row, translator)
    if table is not None:
        observed.append(
            dg.AssetObservation(asset_key=table, description=description, metadata=metadata)
        )
    return [*observed, *review_evaluations(under_review, reason, translator)]
