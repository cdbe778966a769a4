"""Retry rules decide our own failure kinds by kind; the classifier and the model read only foreign
errors (issue 24, item 3).

Each kind's row carries a message the classifier would decide the other way, so a decision that
follows the kind was not taken from the text. In the code location the classifier is replaced by
one that fails the test when called; in the retry script (a subprocess) the OpenAI stand-in counts
the model's requests: none for a kind, one for the foreign error next to them.
"""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
import pytest
from helpers import control_row, failed_row, lakebase_for, make_row, tick, typed_control_row
from openai_standin import OpenAIStandIn, good_answer, openai_standin

from dagsters.assets.dataloader_pipes_asset import build_retry_asset
from dagsters.partitions import PARTITIONS_NAME
from dagsters.policy import retry_analysis
from dagsters.policy.retry_analysis import decide_by_rules, decide_without_asking
from dagsters.policy.run_requests import RETRY_ASSET, retry_run_config
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.sensors.dataloader_failed_monitor import build_failed_monitor
from dagsters.settings import RetryPolicy, Settings, load_settings
from databricks_scripts.contract import FAILURE_KINDS, REQUIRES_REVIEW, RETRY_RECOMMENDED
from databricks_scripts.failures import KIND_RULES
from databricks_scripts.retry import advisor as retry_advisor
from databricks_scripts.retry.advisor import AdvisorConfig, decide_retry
from databricks_scripts.retry.classifier import classify_error

__all__ = ["openai_standin"]  # the fixture, imported so pytest finds it in this module

# Text the classifier decides the other way from each kind's rule.
RETRYABLE_TEXT = "could not connect to server: Connection refused"
REVIEWABLE_TEXT = 'permission denied for table "orders"'


def _contradicting(kind: str) -> str:
    decision, _ = KIND_RULES[kind]
    text = REVIEWABLE_TEXT if decision == RETRY_RECOMMENDED else RETRYABLE_TEXT
    assert classify_error(text).decision != decision
    return text


@pytest.fixture
def no_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(message):  # pragma: no cover - reached only when the rules read a kind's text
        raise AssertionError(f"the classifier was asked about {message!r}")

    monkeypatch.setattr(retry_analysis, "classify_error", refuse)
    monkeypatch.setattr(retry_advisor, "classify_error", refuse)


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_each_kind_is_decided_by_its_rule_without_the_classifier(kind, no_classifier):
    row = make_row(retry_count=0, last_message=_contradicting(kind), last_failure_kind=kind)
    decision, _ = KIND_RULES[kind]

    ruled = decide_without_asking(row, RetryPolicy(max_retries=3))
    assert ruled is not None
    assert (ruled.decision, ruled.decider, ruled.confidence) == (decision, "rules", 1.0)
    assert kind in ruled.reason
    assert decide_by_rules(row, "the analysis run failed").decision == decision
    # The retry budget still comes first: a kind that retries goes to review once it is used up.
    spent = decide_without_asking(replace(row, retry_count=3), RetryPolicy(max_retries=3))
    assert spent is not None and spent.decision == REQUIRES_REVIEW


def test_a_foreign_error_is_left_to_the_script_and_classified_there():
    assert decide_without_asking(make_row(last_message="x"), RetryPolicy()) is None
    assert decide_by_rules(make_row(last_message=RETRYABLE_TEXT), "why").decision == (
        RETRY_RECOMMENDED
    )


def test_the_script_decides_a_kind_without_the_model_or_the_classifier(
    openai_standin: OpenAIStandIn, no_classifier
):
    config = AdvisorConfig(model="gpt-standin", base_url=openai_standin.base_url, api_key="k")
    for kind in FAILURE_KINDS:
        request = {"error_message": _contradicting(kind), "failure_kind": kind}
        result = decide_retry(request, config)
        assert (result["decision"], result["decider"]) == (KIND_RULES[kind][0], "rules")
        assert result["rule_category"] == "kind"
    assert openai_standin.requests == []


def test_failed_monitor_decides_kinds_by_rule_and_asks_the_model_only_for_the_foreign_error(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    openai_standin.queue(good_answer("Retry Recommended", 0.95, "The network blipped."))
    for kind in FAILURE_KINDS:
        failed_row(db, f"k.{kind}", _contradicting(kind), kind=kind)
    failed_row(db, "foreign", "read ECONNRESET while streaming rows")

    [request] = tick(build_failed_monitor(Settings()), instance, control_db).run_requests

    assert request.partition_key == "foreign"
    for kind in FAILURE_KINDS:
        row = control_row(db, f"k.{kind}")
        if kind == "cancelled":  # a person's terminate: not claimed, not decided
            assert (row["last_status"], row["needs_review"], row["retry_count"]) == (
                "Failed",
                False,
                0,
            )
            assert row["retry_analysis_requested_at"] is None
            continue
        retried = KIND_RULES[kind][0] == RETRY_RECOMMENDED
        expected = (None, False, 1) if retried else ("Failed", True, 0)
        assert (row["last_status"], row["needs_review"], row["retry_count"]) == expected, kind
        assert kind in row["last_message"] and "(decided by rules)" in row["last_message"]
        # The decision is about the kind; the kind itself stays what the failure was.
        assert row["last_failure_kind"] == kind
    assert openai_standin.requests == []

    instance.add_dynamic_partitions(PARTITIONS_NAME, ["foreign"])
    dg.materialize(
        [build_retry_asset(load_settings())],
        partition_key="foreign",
        run_config=request.run_config,
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource(execution="local"),
        },
        instance=instance,
    )
    assert len(openai_standin.requests) == 1
    assert control_row(db, "foreign")["last_message"].startswith("[AI Analysis - Retry")


def test_a_persons_analysis_of_a_kinded_failure_asks_no_model(
    control_db, db, instance, openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATALOADER_AI_MODEL", "gpt-standin")
    monkeypatch.setenv("DATALOADER_AI_BASE_URL", openai_standin.base_url)
    openai_standin.queue(good_answer("Requires Review", 0.99, "Permissions."))
    metadata_id = failed_row(db, "k.stuck", REVIEWABLE_TEXT, kind="stuck_queued")
    row = typed_control_row(db, "k.stuck")
    instance.add_dynamic_partitions(PARTITIONS_NAME, ["k.stuck"])

    result = dg.materialize(
        [build_retry_asset(load_settings())],
        partition_key="k.stuck",
        run_config=retry_run_config(replace(row, last_metadata_id=metadata_id)),
        resources={
            "lakebase": lakebase_for(control_db),
            "pipes_databricks": PipesDatabricksResource(execution="local"),
        },
        instance=instance,
    )

    [materialization] = result.asset_materializations_for_node(RETRY_ASSET)
    assert materialization.metadata["decision"].value == RETRY_RECOMMENDED
    assert materialization.metadata["decider"].value == "rules"
    assert openai_standin.requests == []
    after = control_row(db, "k.stuck")
    assert (after["last_status"], after["retry_count"]) == (None, 1)
