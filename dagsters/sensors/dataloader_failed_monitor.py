"""failed_monitor: one ``dataloader__retry_analysis`` run per failed attempt.

Rows that are Failed, not marked for review and not already being analysed are stamped
``retry_analysis_requested_at`` in the same statement that selects them, so each failure is handled
once. Rows under the retry limit (``settings.retry``, ``DATALOADER_MAX_RETRIES``) get an analysis
run (run key: the failed attempt's history row); rows that have used their retries are marked for
review here, by rule, without asking anyone.

An analysis that died before writing its decision (run crashed, Databricks unreachable) would
leave the stamp for ever; a stamp older than ``DATALOADER_RETRY_ANALYSIS_TIMEOUT_MINUTES`` (60) is
therefore taken back by the same guarded claim, and the failure gets a second analysis run with a
new run key, unless the first analysis run is in fact still queued or running in Dagster.

A failure that is a person's termination (``last_failure_kind`` ``cancelled``: ``Cancelled - Dagster
run <id> was terminated``) is not claimed at all: it is not analysed, uses no retry, and the row
stays Failed with its message until someone loads it again. Every other failure DataLoader gave a
kind (a monitor's, the load script's own) is decided by its kind here, by rule, without a run;
only foreign errors (no kind) get an analysis run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

from dagsters.alerts import Alert, notifier_from_settings
from dagsters.control.rows import AnalysisClaim, ControlRow
from dagsters.partitions import control_key_partitions
from dagsters.policy.retry_analysis import apply_decision, decide_without_asking
from dagsters.policy.run_requests import (
    TAG_METADATA_ID,
    environment_tags,
    retry_run_config,
    retry_run_key,
    retry_run_tags,
)
from dagsters.resources.lakebase import LakebaseResource
from dagsters.review_status import review_events
from dagsters.sensors import (
    alert_on_error,
    default_status,
    fail_row_that_raised,
    fail_uncomputable_rows,
)
from dagsters.settings import RetryPolicy, Settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator
from dagsters.utils.lakebase_client import LakebaseClient
from databricks_scripts.contract import Decision

RETRY_JOB = "dataloader__retry_analysis_job"
_ANY_RETRY_COUNT = 2**31 - 1
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass
class FailureTriage:
    """What one tick does with the failures it claimed."""

    analyse: list[AnalysisClaim] = field(default_factory=list)
    # Decided by rule without a run: retries used up (review), or a failure with a kind
    # (failures.KIND_RULES: stuck in queue: retry; over the run timeout: review; ...).
    by_rule: list[tuple[AnalysisClaim, Decision]] = field(default_factory=list)
    # (row, active analysis run)
    waiting: list[tuple[AnalysisClaim, str]] = field(default_factory=list)
    again: list[AnalysisClaim] = field(default_factory=list)  # earlier analysis never decided


def analysis_run_key(row: AnalysisClaim) -> str:
    stamp = row.retry_analysis_requested_at  # the claim's now(): set on every claimed row
    if row.previous_analysis_requested_at is None or stamp is None:
        return retry_run_key(row)
    # A second analysis of the same attempt: the first run key is spent (Dagster would drop it).
    return f"{retry_run_key(row)}:again-{int(stamp.timestamp())}"


def triage_failures(
    claimed: Iterable[AnalysisClaim],
    policy: RetryPolicy,
    active_run: Callable[[ControlRow], str | None],
) -> FailureTriage:
    """Split claimed failures: out of retries, to analyse, or still being analysed.

    ``active_run(row)`` is asked only for rows whose earlier analysis never decided (rare).
    """
    triage = FailureTriage()
    for row in claimed:
        decision = decide_without_asking(row, policy)
        if decision is not None:
            triage.by_rule.append((row, decision))
            continue
        if row.previous_analysis_requested_at is not None:
            active = active_run(row)
            if active:
                triage.waiting.append((row, active))
                continue
            triage.again.append(row)
        triage.analyse.append(row)
    return triage


def apply_rule_decisions(
    client: LakebaseClient,
    decided: Iterable[tuple[ControlRow, Decision]],
    settings: Settings,
    on_review: Callable[[ControlRow, str], None] | None = None,
) -> list[tuple[ControlRow, str]]:
    """Apply the decisions made by rule; one (row, outcome) pair per row. ``on_review(row,
    reason)`` for each row sent to review."""
    notifier = notifier_from_settings(settings)

    def told(row: ControlRow) -> Callable[[str], None] | None:
        return None if on_review is None else (lambda reason: on_review(row, reason))

    return [
        (
            row,
            apply_decision(
                client,
                row,
                decision,
                secrets=settings.secrets,
                notifier=notifier,
                on_review=told(row),
            ),
        )
        for row, decision in decided
    ]


def alert_repeated_failures(rows: Iterable[ControlRow], settings: Settings) -> int:
    """Tell someone about each table that has just failed ``alert_after_failures`` times in a row.

    ``retry_count`` counts the automatic retries of the current streak, so this attempt is failure
    number ``retry_count + 1``; each failure is claimed once, so each streak alerts once.
    """
    notifier = notifier_from_settings(settings)
    due = [r for r in rows if int(r.retry_count or 0) + 1 == settings.alert_after_failures]
    if notifier.enabled:
        notifier.send_all(
            Alert.for_row(f"DataLoader: a table failed {settings.alert_after_failures} times", r)
            for r in due
        )
    return len(due)


def analysis_requests(rows: list[AnalysisClaim], settings: Settings) -> dg.SensorResult:
    # Every claimed key goes in the add request: the sensor daemon adds only the keys it does not
    # have yet (one lookup per key there), so checking them here as well would only double that
    # cost on every tick.
    keys = sorted({row.control_key for row in rows})
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=analysis_run_key(row),
                run_config=retry_run_config(row),
                tags={**retry_run_tags(row), **environment_tags(settings.environment)},
                partition_key=row.control_key,
            )
            for row in rows
        ],
        dynamic_partitions_requests=[control_key_partitions.build_add_request(keys)],
    )


def _record_review(
    context: dg.SensorEvaluationContext, translator: DataLoaderTranslator
) -> Callable[[ControlRow, str], None]:
    """A row sent to review by rule: said on its load partition and its table's asset."""

    def record(row: ControlRow, reason: str) -> None:
        for event in review_events(row, reason, translator):
            context.instance.report_runless_asset_event(event)

    return record


def _active_analysis_run(
    context: dg.SensorEvaluationContext,
) -> Callable[[ControlRow], str | None]:
    def active_run(row: ControlRow) -> str | None:
        """Run id of an analysis run for this attempt that is still queued or running, if any."""
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=RETRY_JOB,
                statuses=_ACTIVE,
                tags={TAG_METADATA_ID: str(row.last_metadata_id)},
            ),
            limit=1,
        )
        return records[0].dagster_run.run_id if records else None

    return active_run


def build_failed_monitor(
    settings: Settings, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.SensorDefinition:
    """``failed_monitor``; a row it sends to review is reported on ``translator``'s table key."""
    timeout = settings.retry.analysis_timeout_minutes
    max_retries = settings.retry.max_retries

    @dg.sensor(
        name="failed_monitor",
        job_name=RETRY_JOB,
        minimum_interval_seconds=settings.failed_interval_seconds,
        default_status=default_status(settings),
        description=f"Requests a retry decision for each failure (at most {max_retries} "
        "retries per table).",
    )
    @alert_on_error(settings, "failed_monitor")
    def failed_monitor(
        context: dg.SensorEvaluationContext, lakebase: LakebaseResource
    ) -> dg.SensorResult | dg.SkipReason:
        client = lakebase.get_client()
        fail_uncomputable_rows(context, client)
        # Every failure not yet handled, whatever its retry count: those decided by rule are settled
        # here, so they do not sit Failed without a review marker.
        claimed = client.claim_failed_for_analysis(
            settings.failed_batch_size, _ANY_RETRY_COUNT, stale_after_minutes=timeout
        )
        alert_repeated_failures(claimed, settings)
        triage = triage_failures(claimed, settings.retry, _active_analysis_run(context))
        for row, active in triage.waiting:
            context.log.info(
                f"{row.control_key}: analysis run {active} is still in flight after "
                f"{timeout} min; waiting for it"
            )
        for row in triage.again:
            context.log.warning(
                f"{row.control_key}: analysis requested at "
                f"{row.previous_analysis_requested_at} never decided; analysing again"
            )
        decided = []
        for row, decision in triage.by_rule:
            try:
                [(_, outcome)] = apply_rule_decisions(
                    client,
                    [(row, decision)],
                    settings,
                    on_review=_record_review(context, translator),
                )
            except Exception as exc:  # noqa: BLE001 - this row fails; the others go on
                fail_row_that_raised(context, client, row, {"Failed"}, "the retry decision", exc)
                continue
            decided.append((row, outcome))
            context.log.info(
                f"{row.control_key}: {decision.decision} by rule ({decision.reason}); {outcome}"
            )
        if triage.analyse:
            return analysis_requests(triage.analyse, settings)
        return dg.SkipReason(
            f"No failure to analyse (Failed, retry_count < {max_retries}, not under review, not "
            "already being analysed)." + (f" Decided {len(decided)} by rule." if decided else "")
        )

    return failed_monitor
