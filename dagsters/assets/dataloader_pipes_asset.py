"""The two assets: ``dataloader__table_load`` (one table load) and ``dataloader__retry_analysis``.

Both are partitioned by ``control_key`` (one dynamic partition per table_control row, kept in step
by master_sensor), so the Dagster UI shows each table's own status, history and row-count plot, and
a person reruns one table, or many as a backfill, by materializing its partitions.

Both run a script from ``databricks_scripts/`` through the ``pipes_databricks`` resource (local
subprocess or Databricks), and record the outcome in Lakebase: the control row and the history row.

``build_definitions(settings)`` builds them with ``build_load_asset(settings)`` and
``build_retry_asset(settings)``: the environment tag, the run links, the secrets to mask and the
retry policy come from that one ``Settings`` object, not from the environment at run time.
"""

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import dagster as dg

from dagsters.alerts import notifier_from_settings
from dagsters.assets.forced_reload import forced_by, loaded_message
from dagsters.assets.launch_config import LoadConfig, launched_control_key, tag_ui_run
from dagsters.assets.table_assets import (
    analysis_metadata,
    load_asset_kinds,
    load_metadata,
    load_partition_metadata,
    report_destination_table,
    retry_asset_kinds,
    schema_changed,
)
from dagsters.control.rows import FAILED, SUCCEEDED, ControlRow
from dagsters.control.source_connections import ResolvedSource, SourceConnectionError, fit_compute
from dagsters.partitions import PARTITIONS_NAME, control_key_partitions
from dagsters.policy.retry_analysis import (
    apply_decision,
    build_analysis_request,
    decide_by_rules,
    decide_without_asking,
)
from dagsters.policy.run_requests import LOAD_ASSET, RETRY_ASSET, environment_tags, load_params
from dagsters.policy.writeback import is_connection_error, with_writeback_retries
from dagsters.resources.lakebase import LakebaseResource
from dagsters.resources.pipes_databricks import PipesDatabricksResource
from dagsters.review_status import review_evaluations, review_events
from dagsters.runners.outcome import ScriptOutcome
from dagsters.settings import Settings
from dagsters.translator import DEFAULT_TRANSLATOR, DataLoaderTranslator
from dagsters.utils.lakebase_client import (
    LakebaseClient,
    LakebaseError,
    LoadAlreadyActive,
    UnknownControlKey,
)
from databricks_scripts import contract, local_secrets
from databricks_scripts.contract import (
    RECORDED_METADATA_ID_PARAM,
    Decision,
    LoadReport,
)
from databricks_scripts.redaction import redact

LOAD_SCRIPT = "dataloader_pipe.py"
RETRY_SCRIPT = "dataloader_retry_pipe.py"


class AttemptConfig(dg.Config):
    """Which failed attempt a retry analysis run works on; failed_monitor fills all three. The
    load asset's config is ``LoadConfig`` (dagsters/assets/launch_config.py)."""

    config_id: int | None = None
    control_key: str | None = None
    metadata_id: int | None = None


def _safe(text: object, settings: Settings) -> str:
    """``text`` without any secret this process holds (settings.secrets), any value in the local
    secret store (``dataloader secret set``, read now: it may have changed since the code location
    loaded; never in a deployment) or secret shape."""
    stored = [] if settings.deployment else local_secrets.values(settings.paths.home)
    return redact(text, [*settings.secrets, *stored])


def _tag_environment(context: dg.AssetExecutionContext, settings: Settings) -> None:
    """Tag this run with DAGSTER_ENVIRONMENT when its launcher did not (UI materializations)."""
    tags = environment_tags(settings.environment)
    if tags and any(context.run.tags.get(k) != v for k, v in tags.items()):
        context.instance.add_run_tags(context.run.run_id, tags)


def _control_key(context: dg.AssetExecutionContext, configured: str | None) -> str:
    partition = context.partition_key if context.has_partition_key else None
    if configured and partition and configured != partition:
        raise dg.Failure(
            f"Run config control_key {configured!r} does not match partition {partition!r}; "
            "launch the partition of the table you want to load (or leave control_key out)."
        )
    key = configured or partition
    if not key:
        raise dg.Failure("No control_key: launch a partition, or set control_key in the config.")
    return key


def _begin_attempt(
    context: dg.AssetExecutionContext,
    client: LakebaseClient,
    config: LoadConfig,
    control_key: str,
    settings: Settings,
) -> tuple[int, int, str]:
    """Put this run's attempt In Progress; returns (config_id, metadata_id, triggered_by).

    The sensor's attempt (metadata_id in the config) is started as claimed. A launch without one,
    or a re-execution of an earlier run, queues a fresh attempt with its own history row, so an old
    attempt's history is never overwritten.
    """
    run_id = context.run.run_id
    url = settings.dagster_run_url(run_id)
    reexecution = context.run.parent_run_id is not None
    if config.metadata_id is not None and config.config_id is not None and not reexecution:
        if client.start_load(
            config.config_id, config.metadata_id, dagster_run_id=run_id, dagster_run_url=url
        ):
            return config.config_id, config.metadata_id, "sensor"
        row = client.get_table_by_id(config.config_id)
        raise dg.Failure(
            f"{control_key}: attempt {config.metadata_id} is no longer queued (row is "
            f"{row and row.last_status!r}: {row and row.last_message!r}); nothing was loaded. "
            "Re-execute this run or launch the partition to load it again."
        )
    try:
        claimed = client.queue_manual_load(control_key, triggered_by="ui")
    except (UnknownControlKey, LoadAlreadyActive) as exc:
        raise dg.Failure(str(exc)) from None
    config_id, metadata_id = int(claimed.config_id), int(claimed.metadata_id)
    if not client.start_load(config_id, metadata_id, dagster_run_id=run_id, dagster_run_url=url):
        message = f"{control_key}: could not start attempt {metadata_id} (row changed)"
        # Never leave it Queued; another actor moved the row on meanwhile.
        client.record_failure(
            config_id, metadata_id, message, failure_kind=contract.KIND_STALE_ATTEMPT
        )
        raise dg.Failure(message)
    context.log.info(f"{control_key}: new attempt {metadata_id} (triggered from the UI)")
    return config_id, metadata_id, "ui"


def _reported_metadata(outcome: ScriptOutcome) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for result in outcome.results:
        if isinstance(result, dg.MaterializeResult):
            merged.update(result.metadata or {})
    return merged


class _ResultNotWritten(dg.Failure):
    """The load committed but its result could not be written to the control database."""


class _Attempt:
    """One load attempt of one row: runs the script and writes its outcome to the control row."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        client: LakebaseClient,
        settings: Settings,
        control_key: str,
        translator: DataLoaderTranslator = DEFAULT_TRANSLATOR,
    ):
        self.context = context
        self.client = client
        self.settings = settings
        self.control_key = control_key
        self.translator = translator  # names the destination table's asset
        self.config_id = 0
        self.metadata_id = 0
        self.databricks_url: str | None = None
        self.row: ControlRow  # the control row as loaded (set before the script runs), its source
        self.forced_by: str | None = None  # who asked for a full reload (every message says so)
        self.resolved: ResolvedSource | None = None

    def link_external_run(self, url: str | None, external_run_id: str) -> None:
        self.databricks_url = url
        self.context.log.info(f"{self.control_key}: Databricks run {external_run_id} {url or ''}")
        self.client.update_run_tracking(
            self.config_id, databricks_url=url, metadata_id=self.metadata_id
        )

    def fail(
        self,
        message: str,
        run_link: str | None = None,
        *,
        retry: bool = True,
        note: bool = True,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        """End the attempt Failed with ``kind`` (None: a foreign error, with its driver's ``code``);
        ``note``: if the row is not this attempt's any more, add the message to its history row."""
        if self.forced_by:
            message = f"{message} [full reload forced by {self.forced_by}]"

        def write() -> bool:
            return self.client.record_failure(
                self.config_id,
                self.metadata_id,
                message,
                databricks_run_url=run_link or self.databricks_url,
                failure_kind=kind,
                failure_code=code,
            )

        if not retry:  # a terminated run: one try, the interrupt must not wait
            try:
                write()
            except LakebaseError as exc:
                self.context.log.error(f"{self.control_key}: could not record the failure: {exc}")
            return
        if not self._write_back(write) and note:
            # Already failed or taken over (a stale attempt): its history row still says why.
            self._write_back(
                lambda: self.client.note_on_attempt(self.config_id, self.metadata_id, message)
            )

    def _write_back(self, write):
        """``write()`` with bounded retries while the control database is unreachable."""
        return with_writeback_retries(
            write,
            bound_seconds=self.settings.writeback_retry_seconds,
            log=lambda text: self.context.log.warning(f"{self.control_key}: {text}"),
        )

    def source(self, row: ControlRow, compute: Any = None) -> ResolvedSource:
        """The row's source if ``compute`` (pipes_databricks) can read it; else fails the row."""
        try:
            return fit_compute(row, compute, self.client.resolve_source(row))
        except SourceConnectionError as exc:
            message = _safe(f"{self.control_key}: source refused: {exc}", self.settings)
            self.fail(message, kind=contract.KIND_BAD_CONFIG)
            raise dg.Failure(message) from None

    def settle(self, exc: BaseException, kind: str | None = None) -> None:
        """Any exception after the attempt went In Progress ends it Failed with its text.

        Guarded like every transition: when the attempt was already settled (the script's own
        error, a terminate, a monitor) this changes nothing. If even this write fails (the
        control database is down) the original error is kept and the monitors settle the row.
        """
        if isinstance(exc, _ResultNotWritten):
            return  # the write-back already waited its bound; the row's next load records it
        if isinstance(exc, dg.Failure):
            text = exc.description or str(exc)
        else:
            text = f"Load failed after it started: {type(exc).__name__}: {exc}"
        try:
            # Already settled (the script's error, a terminate, a monitor): nothing to add.
            self.fail(_safe(text, self.settings), note=False, kind=kind)
        except Exception as write_error:  # noqa: BLE001 - the load's own error is what matters
            self.context.log.error(
                _safe(
                    f"{self.control_key}: could not record the failure: {write_error}",
                    self.settings,
                )
            )

    def run(self, pipes_databricks: PipesDatabricksResource, params: dict) -> ScriptOutcome:
        try:
            return pipes_databricks.run_script(
                self.context,
                script=LOAD_SCRIPT,
                params=params,
                label=self.control_key,
                on_external_run=self.link_external_run,
            )
        except dg.DagsterExecutionInterruptedError as exc:
            said = getattr(exc, "said", None)  # the script's own account of its stop
            self.fail(
                _safe(
                    f"Cancelled - Dagster run {self.context.run.run_id} was terminated"
                    + (f": {said}" if said else ""),
                    self.settings,
                ),
                retry=False,
                kind=contract.KIND_CANCELLED,
            )
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to run must end the attempt Failed
            message = _safe(f"Load could not run: {type(exc).__name__}: {exc}", self.settings)
            self.fail(message)
            raise dg.Failure(message) from None

    def record(self, outcome: ScriptOutcome) -> tuple[dict[str, Any], str | None]:
        """Write the script's outcome to the row; the reported metadata and the run link."""
        run_link = outcome.external_run_url or self.databricks_url
        if outcome.error is not None:
            message = _safe(outcome.error, self.settings)
            self.fail(message, run_link, kind=outcome.error_kind, code=outcome.error_code)
            raise dg.Failure(
                description=message,
                metadata={
                    "control_key": self.control_key,
                    "metadata_id": self.metadata_id,
                    **({"databricks_run": dg.MetadataValue.url(run_link)} if run_link else {}),
                },
            )
        reported = _reported_metadata(outcome)
        if not reported:
            message = "Load script finished without reporting a materialization (rows, watermark)"
            self.fail(message, run_link, kind=contract.KIND_INTERNAL)
            raise dg.Failure(message)
        try:
            recorded = self._write_back(lambda: self._record_result(reported, run_link))
        except LakebaseError as exc:
            if not is_connection_error(exc):
                raise  # a refused statement (bad metadata, a full disk): settle() fails the row
            message = _safe(
                f"{self.control_key}: the load finished (attempt {self.metadata_id}) but its "
                f"result could not be written to the control database: {exc}. The row stays "
                "In Progress until longrunning_monitor fails it; what this attempt committed is "
                "recorded by the row's next load, never loaded again.",
                self.settings,
            )
            raise _ResultNotWritten(message) from None
        if not recorded:
            self._say_why_not_recorded()
        return reported, run_link

    def _record_result(self, reported: Mapping[str, Any], run_link: str | None) -> bool:
        """Succeeded with the reported result, or with the earlier unrecorded commit's."""
        report = LoadReport.from_metadata(reported)
        watermark = None if report.watermark_after is None else str(report.watermark_after)
        if report.reconciled_metadata_id is not None:
            self.context.log.warning(
                f"{self.control_key}: attempt {report.reconciled_metadata_id} had committed "
                "without being recorded; recording it instead of loading again"
            )
            return self.client.record_reconciled(
                self.config_id,
                self.metadata_id,
                committed_metadata_id=int(report.reconciled_metadata_id),
                destination_version=report.reconciled_version,
                watermark_after=watermark,
                databricks_run_url=run_link,
            )
        return self.client.record_success(
            self.config_id,
            self.metadata_id,
            report,
            message=loaded_message(
                report.rows_written, report.notes, self.forced_by, report.load_strategy
            ),
            databricks_run_url=run_link,
            schema_changed=schema_changed(
                self.context, self.translator.get_asset_key(self.row), reported
            ),
        )

    def _say_why_not_recorded(self) -> None:
        """The data was written but the row was not ours any more: say what happened instead."""
        row = self.client.get_table_by_id(self.config_id)
        if row is None:
            self.context.log.warning(
                f"{self.control_key}: the table_control row (config_id {self.config_id}) was "
                "deleted while this attempt was loading; the data written stays in the "
                "destination and nothing was recorded"
            )
            return
        # A monitor (or a person) settled the row meanwhile. Say so instead of hiding it.
        self.context.log.warning(
            f"{self.control_key}: load finished but attempt {self.metadata_id} was no longer "
            f"In Progress (row is {row.last_status!r}: {row.last_message!r}); the "
            "control row keeps that state"
        )

    def partition_gone(self) -> bool:
        """Was this partition deleted meanwhile (row deleted, or its control_key renamed)?"""
        if not self.context.has_partition_key:
            return False
        return not self.context.instance.has_dynamic_partition(
            PARTITIONS_NAME, self.context.partition_key
        )


def _load_params(
    attempt: _Attempt, pipes_databricks: PipesDatabricksResource, config: LoadConfig, trigger: str
) -> dict[str, Any]:
    """The script's parameters for the attempt's row. Once claimed, the row is found by its
    config_id: a control_key renamed while Queued still loads the row that was claimed. A row
    ``pipes_databricks``' compute cannot read (a JDBC source on serverless) fails here."""
    row = attempt.client.get_table_by_id(attempt.config_id)
    if row is None:  # deleted between the claim and now
        raise dg.Failure(
            f"{attempt.control_key}: the table_control row (config_id {attempt.config_id}) was "
            "deleted before the load started; nothing was loaded"
        )
    if trigger == "ui":
        tag_ui_run(attempt.context, row, attempt.metadata_id)
    attempt.forced_by = forced_by(row, config)
    attempt.row, attempt.resolved = row, attempt.source(row, pipes_databricks)
    params = load_params(row, attempt.resolved, metadata_id=attempt.metadata_id)
    if config.force_full_reload:
        # A person's one-off full reload takes the path of the row's own flag (the script
        # overwrites the destination); the row's flag itself is left as it is.
        params["force_full_reload"] = True
    if attempt.forced_by:
        attempt.context.log.info(
            f"{attempt.control_key}: full reload forced by {attempt.forced_by}"
        )
    # What the destination's last commit is compared with (databricks_scripts/engines/arrow/commits).
    params[RECORDED_METADATA_ID_PARAM] = attempt.client.last_recorded_attempt(attempt.config_id)
    return params


def build_load_asset(
    settings: Settings, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.AssetsDefinition:
    """``dataloader__table_load``: one load of the partition's table, with these settings; it
    reports the destination table's materialization on ``translator``'s key."""

    @dg.asset(
        name=LOAD_ASSET,
        partitions_def=control_key_partitions,
        group_name="dataloader",
        kinds=load_asset_kinds(settings.execution),
        description="Loads one source table (the partition's control_key) into its Delta "
        "destination.",
    )
    def dataloader_table_load(
        context: dg.AssetExecutionContext,
        config: LoadConfig,
        lakebase: LakebaseResource,
        pipes_databricks: PipesDatabricksResource,
    ) -> Iterator[dg.MaterializeResult]:
        control_key = launched_control_key(context, config.control_key)
        _tag_environment(context, settings)
        client = lakebase.get_client()
        attempt = _Attempt(context, client, settings, control_key, translator)
        attempt.config_id, attempt.metadata_id, trigger = _begin_attempt(
            context, client, config, control_key, settings
        )
        try:
            params = _load_params(attempt, pipes_databricks, config, trigger)
            reported, run_link = attempt.record(attempt.run(pipes_databricks, params))
        except dg.DagsterExecutionInterruptedError:
            # Recorded where it is caught while the script runs (_Attempt.run); a terminate that
            # lands elsewhere (the write-back) is recorded here. Guarded: never twice.
            attempt.settle(
                dg.Failure(f"Cancelled - Dagster run {context.run.run_id} was terminated"),
                contract.KIND_CANCELLED,
            )
            raise
        except Exception as exc:
            attempt.settle(exc)
            raise
        if attempt.partition_gone():
            # A Pipes asset must yield its output; a clear failure instead of Dagster's
            # partition error. The control row already holds the truth.
            raise dg.Failure(
                f"{control_key}: partition {control_key!r} no longer exists (the row was "
                "deleted or its control_key renamed while loading), so nothing is materialized "
                "in Dagster; the table_control row and its history say what was recorded"
            )
        metadata = load_metadata(
            reported,
            attempt.row,
            attempt.resolved,
            trigger=trigger,
            run_link=run_link,
            translator=translator,
        )
        metadata.update(control_key=control_key, metadata_id=str(attempt.metadata_id))
        report_destination_table(
            context,
            attempt.row,
            metadata,
            control_key=control_key,
            metadata_id=attempt.metadata_id,
            translator=translator,
        )
        # The table's columns, row count and name are its own asset's (reported just above).
        yield dg.MaterializeResult(metadata=load_partition_metadata(metadata))
        # Loaded, so not under review: needs_review passes on the partition and the table.
        for passed in review_evaluations(
            replace(attempt.row, needs_review=False, last_status=SUCCEEDED), translator=translator
        ):
            context.log_event(passed)

    return dataloader_table_load


def _analysis_to_do(
    context: dg.AssetExecutionContext, config: AttemptConfig, row: ControlRow | None, key: str
) -> ControlRow | None:
    """The row if it is still failed, unreviewed, and on the attempt this run was launched for."""
    if row is None:
        raise dg.Failure(f"No table_control row with control_key {key!r}")
    if row.last_status != FAILED or row.needs_review:
        context.log.info(
            f"{key}: nothing to analyse (status {row.last_status!r}, "
            f"needs_review={row.needs_review})"
        )
        return None
    if config.metadata_id is not None and row.last_metadata_id != config.metadata_id:
        context.log.info(f"{key}: attempt {config.metadata_id} is no longer the latest")
        return None
    return row


def _ask_the_script(
    context: dg.AssetExecutionContext,
    client: LakebaseClient,
    pipes_databricks: PipesDatabricksResource,
    row: ControlRow,
    settings: Settings,
) -> Decision:
    """The retry script's decision; the deterministic rules' when it could not run or answer."""
    history = client.get_recent_history(row.config_id, limit=5)
    request = build_analysis_request(row, history, settings)
    decision, error = None, None
    try:
        outcome = pipes_databricks.run_script(
            context, script=RETRY_SCRIPT, params=request, label=f"retry {row.control_key}"
        )
    except dg.DagsterExecutionInterruptedError:
        raise  # a person terminated the analysis run: nothing is decided
    except Exception as exc:  # noqa: BLE001 - the run could not even start: rules decide below
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = outcome.error
        if outcome.error is None:
            decision = Decision.from_mapping(_reported_metadata(outcome))
    if decision is None:
        # The analysis itself could not run (cluster gone, model down): the same rules the script
        # falls back to decide here, so a transient load failure is still retried (within the
        # retry budget) instead of every affected table going to review.
        why = _safe(f"retry analysis did not decide: {error or 'no answer'}", settings)
        context.log.warning(f"{row.control_key}: {why}; deciding by the rules")
        decision = decide_by_rules(row, why)
    return decision


def build_retry_asset(
    settings: Settings, translator: DataLoaderTranslator = DEFAULT_TRANSLATOR
) -> dg.AssetsDefinition:
    """``dataloader__retry_analysis``: retry or review one failed load, with these settings; a
    review is reported on the table's asset under ``translator``'s key."""

    @dg.asset(
        name=RETRY_ASSET,
        partitions_def=control_key_partitions,
        group_name="dataloader",
        kinds=retry_asset_kinds(settings.execution),
        output_required=False,
        description="Decides whether a failed load is retried or needs a person (failed_monitor).",
    )
    def dataloader_retry_analysis(
        context: dg.AssetExecutionContext,
        config: AttemptConfig,
        lakebase: LakebaseResource,
        pipes_databricks: PipesDatabricksResource,
    ) -> Iterator[dg.MaterializeResult]:
        control_key = _control_key(context, config.control_key)
        _tag_environment(context, settings)
        client = lakebase.get_client()
        row = _analysis_to_do(context, config, client.get_table_details(control_key), control_key)
        if row is None:
            return
        decision = decide_without_asking(row, settings.retry) or _ask_the_script(
            context, client, pipes_databricks, row, settings
        )
        applied = apply_decision(
            client,
            row,
            decision,
            secrets=settings.secrets,
            notifier=notifier_from_settings(settings),
            on_review=lambda reason: [
                context.log_event(o) for o in review_events(row, reason, translator)
            ],
        )
        yield dg.MaterializeResult(
            metadata={
                **analysis_metadata(
                    replace(row, last_message=_safe(row.last_message or "", settings)),
                    settings.dagster_run_url,
                ),
                **decision.as_dict(),
                "applied": str(applied),
            }
        )

    return dataloader_retry_analysis
