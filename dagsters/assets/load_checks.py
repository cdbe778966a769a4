"""The reconciliation check of one load: facts read from the source and from the destination.

The load script reads them itself after its commit (``databricks_scripts/engines/arrow/verify``): the
source's rows in the load's scope, inside the snapshot it read the rows in, and the committed
destination's rows, open versions and distinct keys in the same scope; with
``verify_depth = 'keys'`` the key (and cursor) sets too. It reports the verdict, its sentence and
the facts in the materialization (``LoadMetadata.VERIFIED`` / ``VERIFICATION`` / ``VERIFY_DEPTH``).
Nothing here compares what the writer says it wrote.

``reconcile_row_counts(reported)`` is plain Python (no Dagster): it reads those keys back. A load
that recorded an earlier attempt's commit (nothing read), a row with ``verify_depth = 'none'`` and
an engine that does not verify report nothing: no evaluation, the log says why.
``row_count_evaluation`` turns the result into a ``dg.AssetCheckEvaluation`` on the destination
table's asset key (the translator's ``get_asset_key``), severity ERROR: a destination that
differs from its source is never green. It is reported after the status write-back, so it never
blocks the load's own record; the row's message says so too (docs/loader.md, "Reconciliation").
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dagsters.dagster_compat import preview_partitioned_checks
from dagsters.partitions import control_key_partitions
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.resources.lakebase import LakebaseResource
from dagsters.review_status import (
    NEEDS_REVIEW_CHECK,
    NEEDS_REVIEW_CHECK_DESCRIPTION,
    review_verdict,
)
from databricks_scripts.contract import LoadMetadata

ROW_COUNT_CHECK = "row_count_reconciliation"
ROW_COUNT_CHECK_DESCRIPTION = (
    "After each load, the source's rows in the load's scope (read in the load's own snapshot) "
    "are compared with the committed destination's rows, open versions and keys in that scope."
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


FACTS = (
    "source_rows",
    "destination_rows",
    "destination_keys",
    "source_rows_in_scope",
    "destination_rows_in_scope",
    "source_rows_new",
    "destination_rows_new",
    "source_keys_missing",
    "destination_keys_extra",
)


def _value(reported: Mapping[str, Any], key: str) -> Any:
    value = reported.get(key)
    return getattr(value, "value", value)


def reconcile_row_counts(reported: Mapping[str, Any]) -> RowCountCheck | None:
    """The load's reconciliation as the script reported it; None when the load was not checked."""
    if _count(reported, LoadMetadata.RECONCILED_METADATA_ID) is not None:
        return None  # nothing read: an earlier attempt's commit was recorded instead
    passed = _value(reported, LoadMetadata.VERIFIED)
    if not isinstance(passed, bool):
        return None
    depth = _value(reported, LoadMetadata.VERIFY_DEPTH) or "counts"
    text = str(_value(reported, LoadMetadata.VERIFICATION) or "")
    counts = {k: c for k in FACTS if (c := _count(reported, k)) is not None}
    prefix = f"reconciliation ({depth})" + (" passed" if passed else " FAILED")
    return RowCountCheck(passed, f"{prefix}: {text}", counts)


def row_count_evaluation(
    asset_key: dg.AssetKey, check: RowCountCheck, *, control_key: str, metadata_id: int
) -> dg.AssetCheckEvaluation:
    """The check's evaluation on the destination table's asset key (severity ERROR)."""
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=ROW_COUNT_CHECK,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=check.description,
        metadata={
            **check.counts,
            "control_key": dg.MetadataValue.text(control_key),
            "metadata_id": dg.MetadataValue.text(str(metadata_id)),
        },
    )


def load_review_check() -> dg.AssetChecksDefinition:
    """``needs_review`` on each partition of the load asset (a partitioned check: Dagster 1.13
    preview). Its failures are reported by whoever sends the row to review; executing it from the
    UI reads the row as it is now (passes once the row is released)."""
    with preview_partitioned_checks():

        @dg.asset_check(
            asset=LOAD_ASSET,
            name=NEEDS_REVIEW_CHECK,
            partitions_def=control_key_partitions,
            description=NEEDS_REVIEW_CHECK_DESCRIPTION,
        )
        def load_needs_review(
            context: dg.AssetCheckExecutionContext, lakebase: LakebaseResource
        ) -> dg.AssetCheckResult:
            row = lakebase.get_client().get_table_details(context.partition_key)
            passed, description, metadata = (
                review_verdict(row) if row else (True, "No table_control row any more.", {})
            )
            return dg.AssetCheckResult(
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=description,
                metadata=metadata,
            )

    return load_needs_review
