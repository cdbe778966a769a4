"""A row sent to review says so where a person looks: its load partition and its table's page.

The decision used to live only on ``dataloader__retry_analysis`` (whose other partitions read
"Missing") and in the control row; the failed load partition said only "Run ... failed". An
observation on the load asset's partition and one on the destination table's asset carry the
status, the reason and the command that releases the row once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagsters.control.run_requests import LOAD_ASSET

NEEDS_REVIEW = "needs review"
RELEASE_JOB = "dataloader__release_review_job"


def release_command(control_key: str) -> str:
    return f"dataloader release {control_key}"


def review_observations(row: Mapping[str, Any], reason: str) -> list[dg.AssetObservation]:
    """The observations that tell a person this row needs them (``reason`` already redacted)."""
    key = str(row["control_key"])
    how = (
        f"fix the cause, then `{release_command(key)}` (or launch {RELEASE_JOB} with "
        f"control_key {key})"
    )
    metadata = {
        "status": dg.MetadataValue.text(NEEDS_REVIEW),
        "reason": dg.MetadataValue.text(reason),
        "release": dg.MetadataValue.text(how),
        "control_key": dg.MetadataValue.text(key),
    }
    description = f"Needs review: {reason}. To load it again: {how}."
    observed = [
        dg.AssetObservation(
            asset_key=dg.AssetKey(LOAD_ASSET),
            partition=key,
            description=description,
            metadata=metadata,
        )
    ]
    # The table's asset key, as dagsters.assets.table_assets.destination_asset_key builds it
    # (sensors do not import the assets package).
    table = [
        row.get(c)
        for c in ("destination_catalog", "destination_schema_name", "destination_table_name")
    ]
    if all(table):
        observed.append(
            dg.AssetObservation(
                asset_key=dg.AssetKey([str(p) for p in table]),
                description=description,
                metadata=metadata,
            )
        )
    return observed
