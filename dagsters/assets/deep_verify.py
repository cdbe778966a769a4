"""Deep verification: the ``deep_verification`` check of every declared keyed table, run by
``dataloader__deep_verify_job`` (on demand from the UI, or on its schedule, off by default).

For each selected table the check runs the load script in deep-verify mode where loads run
(locally or on Databricks, with the row's one secret): it compares every key and every row's values
of the source with the destination (``databricks_scripts/engines/arrow/deep_verify``). Drift fails the
check at ERROR severity, naming the first differing keys. The control row is never touched: a
deep verification is not a load and changes no status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagsters.control.rows import ControlRow
from dagsters.policy.run_requests import load_params
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.runners.local import LOAD_SCRIPT
from dagsters.settings import Settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator
from databricks_scripts.contract import DEEP_VERIFY_KEY, DEEP_VERIFY_MODE, MODE_PARAM

DEEP_CHECK = "deep_verification"
DEEP_CHECK_DESCRIPTION = (
    "Every key and every row's values of the source compared with the destination, range by "
    "range (dataloader__deep_verify_job; docs/loader.md, 'Deep verification')."
)
DEEP_VERIFY_JOB = "dataloader__deep_verify_job"
DEEP_CHECKS = "destination_table_deep_checks"


def _found(messages: Sequence[Any]) -> Mapping[str, Any] | None:
    for message in reversed(list(messages)):
        if isinstance(message, Mapping) and isinstance(message.get(DEEP_VERIFY_KEY), Mapping):
            return message[DEEP_VERIFY_KEY]
    return None


def _verify_one(
    context: dg.AssetCheckExecutionContext,
    row: ControlRow,
    lakebase: LakebaseResource,
    pipes: PipesDatabricksResource,
) -> tuple[bool, str, dict[str, Any]]:
    client = lakebase.get_client()
    try:
        resolved = client.resolve_source(row)
    except Exception as exc:  # noqa: BLE001 - a refused source fails this table's check only
        return False, f"source refused: {exc}", {}
    params = {**load_params(row, resolved), MODE_PARAM: DEEP_VERIFY_MODE, "metadata_id": None}
    outcome = pipes.run_script(
        context.op_execution_context,
        script=LOAD_SCRIPT,
        params=params,
        label=str(row.control_key),
    )
    found = _found(outcome.custom_messages)
    if outcome.error is not None or found is None:
        return False, f"deep verification could not run: {outcome.error or 'no result'}", {}
    facts = {k: int(v) for k, v in dict(found.get("facts") or {}).items()}
    return bool(found.get("passed")), str(found.get("description")), facts


def deep_checks(
    specs: Sequence[dg.AssetSpec],
    settings: Settings,
    translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
) -> dg.AssetChecksDefinition:
    """The ``deep_verification`` check of every declared keyed table (a check's asset is matched
    to its row by ``translator``'s key, as the specs were keyed)."""

    @dg.multi_asset_check(
        name=DEEP_CHECKS,
        specs=[
            dg.AssetCheckSpec(DEEP_CHECK, asset=s.key, description=DEEP_CHECK_DESCRIPTION)
            for s in specs
        ],
        can_subset=True,
        required_resource_keys={"lakebase", "pipes_databricks"},
    )
    def destination_table_deep_checks(context):  # an AssetCheckExecutionContext
        lakebase = context.resources.lakebase
        pipes = context.resources.pipes_databricks
        client = lakebase.get_client()
        rows = {
            translator.get_asset_key(r): r.config_id
            for r in client.active_tables(settings.table_assets_max + 1)
        }
        for check_key in context.selected_asset_check_keys:
            config_id = rows.get(check_key.asset_key)
            row = None if config_id is None else client.get_table_by_id(config_id)
            if row is None:
                passed, text, facts = False, "no active table_control row loads this table", {}
            else:
                passed, text, facts = _verify_one(context, row, lakebase, pipes)
            if not passed:
                context.log.error(f"{check_key.asset_key.to_user_string()}: {text}")
            yield dg.AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=DEEP_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=text,
                metadata=facts,
            )

    return destination_table_deep_checks


def deep_verify_job(checks: dg.AssetChecksDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        DEEP_VERIFY_JOB,
        selection=dg.AssetSelection.checks(checks),
        description="Deep verification of the declared keyed tables (pick tables in the "
        "launchpad, or run all): every key and row compared with the source.",
    )


def deep_verify_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="dataloader__deep_verify_schedule",
        cron_schedule="0 3 * * 0",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Weekly deep verification (Sunday 03:00); off until a person turns it on.",
    )
