"""The destination tables declared as assets when the code location loads (up to a cap).

Declared, a table gets what only a definition gives in the Dagster UI: its kinds and group, a
freshness policy derived from its own schedule (the freshness daemon shows it late when a load is
overdue, ``policy/freshness.py``), and the row-count check on its Checks tab. The loads report
its materializations and check evaluations at run time either way (``table_assets``); a table
that is not declared still gets them, as an external asset, with no checks tab or freshness.

``DATALOADER_TABLE_ASSETS_MAX`` (default 0: declare none; ``dataloader dev`` sets 1000) bounds
how many active rows are declared. More active rows than the cap: none is declared and the load
log says so once. At 100k tables the declared graph would cost a control-database read on every
code-location load, a reload before a new row's asset shows its checks, and an asset graph the
UI and the freshness daemon walk in full (docs/assets.md, "How this scales"); the runtime-reported
keys cost one event per load.
"""

import logging
import re
from collections.abc import Iterable, Sequence

import dagster as dg

from dagsters.assets.deep_verify import deep_checks
from dagsters.assets.load_checks import (
    ROW_COUNT_CHECK,
    ROW_COUNT_CHECK_DESCRIPTION,
    reconcile_row_counts,
)
from dagsters.control.table_listing import DeclaredTable, rows_to_declare
from dagsters.resources.lakebase import LakebaseResource
from dagsters.review_status import (
    NEEDS_REVIEW_CHECK,
    NEEDS_REVIEW_CHECK_DESCRIPTION,
    review_verdict,
)
from dagsters.settings import Settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator

TABLE_CHECKS = "destination_table_checks"
_log = logging.getLogger(__name__)
# What Dagster accepts in the names it derives from an asset key (a check's op, the UI's paths).
_DAGSTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def declared_rows(settings: Settings, lakebase: LakebaseResource) -> list[DeclaredTable]:
    """The rows whose tables this code location declares ([] when none; warnings say why)."""
    cap = settings.table_assets_max
    if cap <= 0:
        return []
    try:
        rows, over_cap = rows_to_declare(lakebase.get_client(), cap)
    except Exception as exc:  # noqa: BLE001 - the code location must load without its tables
        _log.warning(f"Destination tables not declared as assets: control database: {exc}")
        return []
    if over_cap:
        _log.warning(
            f"More than DATALOADER_TABLE_ASSETS_MAX={cap} active tables: none is declared as an "
            "asset; loads still record each table's materializations (docs/assets.md)"
        )
        return []
    return rows


def _unique(specs: Iterable[dg.AssetSpec]) -> list[dg.AssetSpec]:
    """One spec per key: two rows loading into one table share its asset (the first declares)."""
    seen: dict[dg.AssetKey, dg.AssetSpec] = {}
    for spec in specs:
        seen.setdefault(spec.key, spec)
    return list(seen.values())


def row_count_checks(specs: Sequence[dg.AssetSpec]) -> dg.AssetChecksDefinition:
    """The row-count and ``needs_review`` checks of every declared table. Loads report the
    row-count evaluations and review decisions the other's; executing them from the UI
    re-evaluates the counts of the table's latest materialization / reads the row as it is now."""
    control_keys = {s.key: str(getattr(s.metadata["control_key"], "value", "")) for s in specs}

    @dg.multi_asset_check(
        name=TABLE_CHECKS,
        specs=[
            *(
                dg.AssetCheckSpec(
                    ROW_COUNT_CHECK, asset=s.key, description=ROW_COUNT_CHECK_DESCRIPTION
                )
                for s in specs
            ),
            *(
                dg.AssetCheckSpec(
                    NEEDS_REVIEW_CHECK, asset=s.key, description=NEEDS_REVIEW_CHECK_DESCRIPTION
                )
                for s in specs
            ),
        ],
        can_subset=True,
    )
    def destination_table_checks(
        context: dg.AssetCheckExecutionContext, lakebase: LakebaseResource
    ):
        for check_key in context.selected_asset_check_keys:
            if check_key.name == NEEDS_REVIEW_CHECK:
                yield _review_result(lakebase, check_key, control_keys[check_key.asset_key])
                continue
            event = context.instance.get_latest_materialization_event(check_key.asset_key)
            materialization = event.asset_materialization if event else None
            result = reconcile_row_counts(materialization.metadata if materialization else {})
            yield dg.AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=check_key.name,
                passed=bool(result and result.passed),
                severity=dg.AssetCheckSeverity.ERROR,
                description=result.description if result else "no load with counts to check yet",
                metadata=dict(result.counts) if result else {},
            )

    return destination_table_checks


def _review_result(
    lakebase: LakebaseResource, check_key: dg.AssetCheckKey, control_key: str
) -> dg.AssetCheckResult:
    row = lakebase.get_client().get_table_details(control_key)
    passed, description, metadata = (
        review_verdict(row) if row else (True, "No table_control row any more.", {})
    )
    return dg.AssetCheckResult(
        asset_key=check_key.asset_key,
        check_name=check_key.name,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )


def table_asset_definitions(
    settings: Settings,
    lakebase: LakebaseResource,
    rows: list[DeclaredTable] | None = None,
    translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
) -> tuple[list[dg.AssetSpec], list[dg.AssetChecksDefinition]]:
    """The declared table specs (then their source tables as external assets) and their
    checks ([] and [] when none is declared); ``rows``: what ``declared_rows`` read (read
    here when not given); ``translator``: the specs' keys, groups, kinds, tags, metadata."""
    rows = declared_rows(settings, lakebase) if rows is None else rows
    declarable = [r for r in rows if all(map(_DAGSTER_NAME.match, _key_parts(r, translator)))]
    if len(declarable) < len(rows):
        skipped = sorted({str(r.control_key) for r in rows if r not in declarable})
        _log.warning(
            "Not declared as assets (a destination name Dagster cannot use; their loads still "
            f"record materializations): {', '.join(skipped[:10])}"
        )
    specs = _unique(
        translator.get_asset_spec(row, settings.execution, settings.dagster_base_url)
        for row in declarable
    )
    if not specs:
        return [], []
    keyed = {translator.get_asset_key(r) for r in declarable if r.merge_keys}
    try:
        checks = [row_count_checks(specs)]
        if keyed:
            checks.append(deep_checks([s for s in specs if s.key in keyed], settings, translator))
        return specs + _unique(translator.get_source_spec(r) for r in declarable), checks
    except Exception as exc:  # noqa: BLE001 - one bad row must not stop the code location loading
        _log.warning(f"Destination tables not declared as assets: {exc}")
        return [], []


def _key_parts(row: DeclaredTable, translator: DataLoaderTranslator) -> list[str]:
    return [str(part) for part in translator.get_asset_key(row).path]
