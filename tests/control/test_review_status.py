"""A row sent to review says so on its load partition and on its table's asset, with the release
command, whether rules decided (failed_monitor) or the model (the retry analysis run).

A real Dagster instance and control database; the observations are read back from the instance,
as the asset pages show them.
"""

from __future__ import annotations

import warnings

import dagster as dg
import pytest
from helpers import control_row, declared_table, failed_row, lakebase_for
from openai_standin import OpenAIStandIn, good_answer, openai_standin
from test_retry_end_to_end import analyse, monitor_tick, run_monitor_then_analysis

from dagsters.assets.load_checks import load_review_check
from dagsters.assets.table_specs import row_count_checks
from dagsters.partitions import control_key_partitions
from dagsters.policy.run_requests import LOAD_ASSET
from dagsters.review_status import NEEDS_REVIEW, NEEDS_REVIEW_CHECK
from dagsters.translator import DEFAULT_TRANSLATOR

__all__ = ["openai_standin"]

pytestmark = pytest.mark.usefixtures("no_ai_model")


def _observed(instance: dg.DagsterInstance, key: dg.AssetKey) -> list:
    records = instance.fetch_observations(key, limit=10).records
    return [r.asset_observation for r in records]


def _table_key(row: dict) -> dg.AssetKey:
    return dg.AssetKey(
        [row["destination_catalog"], row["destination_schema_name"], row["destination_table_name"]]
    )


def _latest_review_check(instance: dg.DagsterInstance, key: dg.AssetKey):
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(key, NEEDS_REVIEW_CHECK), limit=1
    )
    return record.event.dagster_event.event_specific_data


def _assert_said(instance, row: dict, reason_words: str) -> None:
    key = row["control_key"]
    [load] = _observed(instance, dg.AssetKey(LOAD_ASSET))
    [table] = _observed(instance, _table_key(row))
    assert load.partition == key
    for seen in (load, table):
        meta = {k: v.value for k, v in seen.metadata.items()}
        assert meta["status"] == NEEDS_REVIEW
        assert reason_words in meta["reason"]
        assert f"dataloader release {key}" in meta["release"]
        assert seen.description.startswith("Needs review: ")
    # The failing needs_review check, on the partition and on the table, says the same.
    for asset_key, partition in ((dg.AssetKey(LOAD_ASSET), key), (_table_key(row), None)):
        check = _latest_review_check(instance, asset_key)
        assert (check.passed, check.partition) == (False, partition)
        assert check.severity == dg.AssetCheckSeverity.ERROR
        assert reason_words in check.description
        assert f"dataloader release {key}" in check.description


def test_a_review_by_rule_is_said_on_the_partition_and_the_table(control_db, db, instance):
    failed_row(
        db,
        "pg.gone",
        "load of public.gone failed at step 'load': relation \"public.gone\" does not exist",
    )
    run_monitor_then_analysis(control_db, instance)
    row = control_row(db, "pg.gone")
    assert row["needs_review"] is True
    _assert_said(instance, row, "does not exist")


def test_a_review_by_the_model_is_said_too_and_a_retry_says_nothing(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    openai_standin.queue(good_answer("Requires Review", 0.9, "The table was dropped at source."))
    failed_row(db, "refunds", 'relation "public.refunds" does not exist')
    [request] = monitor_tick(instance, control_db).run_requests
    analyse(instance, control_db, "refunds", request.run_config)
    _assert_said(instance, control_row(db, "refunds"), "The table was dropped at source.")

    openai_standin.queue(good_answer("Retry Recommended", 0.95, "A network blip."))
    failed_row(db, "blips", "connection reset by peer")
    [request] = [
        r for r in monitor_tick(instance, control_db).run_requests if r.partition_key == "blips"
    ]
    analyse(instance, control_db, "blips", request.run_config)
    assert control_row(db, "blips")["needs_review"] is False
    assert [o.partition for o in _observed(instance, dg.AssetKey(LOAD_ASSET))] == ["refunds"]


def _execute(instance, control_db: str, checks) -> dict:
    """Execute ``checks`` as the UI's "Execute" does; the needs_review evaluations by asset."""
    result = dg.materialize(
        [checks],
        instance=instance,
        resources={"lakebase": lakebase_for(control_db)},
        selection=dg.AssetSelection.all_asset_checks(),
    )
    return {
        e.event_specific_data.asset_key: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.check_name == NEEDS_REVIEW_CHECK
    }


def test_the_load_asset_declares_needs_review_per_partition_without_a_preview_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", dg.PreviewWarning)
        [spec] = load_review_check().check_specs
    assert (spec.asset_key, spec.name) == (dg.AssetKey(LOAD_ASSET), NEEDS_REVIEW_CHECK)
    assert spec.partitions_def == control_key_partitions


def test_executing_the_tables_check_reads_the_row_and_passes_once_it_is_released(
    control_db, db, instance
):
    failed_row(db, "pg.gone", 'relation "public.gone" does not exist')
    run_monitor_then_analysis(control_db, instance)
    checks = row_count_checks(
        [DEFAULT_TRANSLATOR.get_asset_spec(declared_table(control_db, "pg.gone"), "local")]
    )

    [failing] = _execute(instance, control_db, checks).values()
    assert not failing.passed
    assert "dataloader release pg.gone" in failing.description

    lakebase_for(control_db).get_client().release_reviewed("pg.gone")
    [passing] = _execute(instance, control_db, checks).values()
    assert passing.passed
    assert passing.description.startswith("Not under review")
