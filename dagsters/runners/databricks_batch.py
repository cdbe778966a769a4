"""A batch on Databricks: ONE job run with one ``spark_python_task`` per table on shared compute.

``DATALOADER_RUN_BATCH_SIZE`` > 1 with the Databricks backend (``dagsters/assets/load_batch.py``):

- compute starts once per batch: a ``new_cluster`` spec becomes the one job cluster
  (``job_clusters`` + each task's ``job_cluster_key``) of a transient job (``runs/submit`` takes
  no job clusters, see :func:`_start`); serverless tasks share the run's one environment; an
  existing cluster is shared as it is;
- the tasks run one after the other (``depends_on`` the previous task, ``run_if: ALL_DONE``, so a
  failed table does not skip the next): a batch holds one slot of its source, as a local batch
  run does, so it never opens more source connections than ``DATALOADER_SOURCE_CONCURRENCY``;
- each table has a Dagster Pipes session of its own (its own context with its own parameters, its
  own message directory, bootstrap as the task's CLI parameters, which a job cluster's shared
  ``spark_env_vars`` could not carry per table). dagster-databricks' ``run_multi_task`` opens one
  session for all tasks: one set of extras for every task and one message stream, so a table's
  results and its error could not be told from another's, and the run's failure would end every
  table. One session per task keeps each table's materialization and error its own;
- each table's outcome is its own task's: its messages, else its task run's ``runs/get-output``
  error, else its task state. A terminated Dagster run cancels the one Databricks run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import dagster as dg

from dagsters.runners.databricks import (
    CLASSIC_PIPES_NEEDS_A_VOLUME,
    DatabricksRunner,
    OnExternalRun,
    _name,
    _RecordingMessageReader,
    _RunTracker,
    _task_error,
    databricks_run_name,
    idempotency_token,
)
from dagsters.runners.outcome import ScriptOutcome, error_from_custom_messages, error_kind_from

JOB_CLUSTER_KEY = "dataloader_batch"
_TASK_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")


@dataclass(frozen=True)
class BatchItem:
    """One table of the batch: its label (control_key), Pipes extras and run-link callback."""

    label: str
    extras: Mapping[str, Any]
    on_external_run: OnExternalRun | None = None


def task_key(index: int, label: str) -> str:
    """A task key the Jobs API accepts (letters, digits, ``-``, ``_``; at most 100), unique by
    its position in the batch."""
    return f"t{index:03d}_{_TASK_KEY_CHARS.sub('_', label)}"[:100]


def batch_tasks(
    runner: DatabricksRunner, script: str, keys: Sequence[str], parameters: Sequence[list[str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, job_clusters) of the run, as ``SubmitTask`` / ``JobCluster`` dicts."""
    one = runner.task(script)  # the one-table task: compute and libraries checked as for a run
    job_clusters: list[dict[str, Any]] = []
    if "new_cluster" in one:
        job_clusters.append({"job_cluster_key": JOB_CLUSTER_KEY, "new_cluster": one["new_cluster"]})
        del one["new_cluster"]
        one["job_cluster_key"] = JOB_CLUSTER_KEY
    tasks = []
    for index, (key, params) in enumerate(zip(keys, parameters, strict=True)):
        task = {
            **one,
            "task_key": key,
            "spark_python_task": {**one["spark_python_task"], "parameters": list(params)},
        }
        if index:
            task["depends_on"] = [{"task_key": keys[index - 1]}]
            task["run_if"] = "ALL_DONE"
        tasks.append(task)
    return tasks, job_clusters


def _pipes_io(runner: DatabricksRunner, workspace: Any) -> tuple[Any, _RecordingMessageReader]:
    """A context injector and a message reader of one table's own."""
    from dagster_databricks.pipes import (
        PipesDbfsContextInjector,
        PipesDbfsMessageReader,
        PipesUnityCatalogVolumesContextInjector,
        PipesUnityCatalogVolumesMessageReader,
    )

    if runner.pipes_dbfs and not runner.serverless:
        return PipesDbfsContextInjector(client=workspace), _RecordingMessageReader(
            PipesDbfsMessageReader(client=workspace, interval=runner.poll_interval_seconds)
        )
    if not runner.volume_path:
        raise dg.Failure(
            "Serverless execution needs DATALOADER_DATABRICKS_VOLUME_PATH"
            if runner.serverless
            else CLASSIC_PIPES_NEEDS_A_VOLUME
        )
    injector = PipesUnityCatalogVolumesContextInjector(
        client=workspace, volume_path=runner.volume_path
    )
    reader = PipesUnityCatalogVolumesMessageReader(
        client=workspace, volume_path=runner.volume_path, interval=runner.poll_interval_seconds
    )
    return injector, _RecordingMessageReader(reader)


def run_batch(
    runner: DatabricksRunner,
    context: dg.OpExecutionContext,
    script: str,
    items: Sequence[BatchItem],
) -> list[ScriptOutcome]:
    """Run ``script`` once per item as the tasks of ONE Databricks run; one outcome per item."""

    workspace = runner.workspace_client()  # the injected databricks_workspace resource's
    keys = [task_key(i, item.label) for i, item in enumerate(items)]
    readers: list[_RecordingMessageReader] = []
    sessions: list[Any] = []
    tracker = _RunTracker(workspace, None, poll_interval_seconds=runner.poll_interval_seconds)
    with ExitStack() as stack:
        for item in items:
            injector, reader = _pipes_io(runner, workspace)
            session = stack.enter_context(
                dg.open_pipes_session(
                    context=context,
                    extras=dict(item.extras),
                    context_injector=injector,
                    message_reader=reader,
                )
            )
            readers.append(reader)
            sessions.append(session)
        parameters = [
            [part for pair in s.get_bootstrap_cli_arguments().items() for part in pair]
            for s in sessions
        ]
        tasks, job_clusters = batch_tasks(runner, script, keys, parameters)
        submit = _submit_args(runner, context, items, script)
        run_id, job_id = _start(workspace, tasks, job_clusters, submit)
        interrupted: dg.DagsterExecutionInterruptedError | None = None
        try:
            tracker.submitted(run_id)
            _link_tasks(context, workspace, run_id, keys, items)
            _wait(context, workspace, tracker, run_id, runner.poll_interval_seconds)
        except dg.DagsterExecutionInterruptedError as stopped:  # cancelled in _wait
            interrupted = stopped
        finally:
            if job_id is not None:
                _delete_job(context, workspace, job_id)
    run = workspace.jobs.get_run(run_id)
    by_key = {t.task_key: t for t in run.tasks or []}
    triples = list(zip(keys, readers, sessions, strict=True))
    if interrupted is not None:
        # The tables whose task finished before the cancel keep their load: their outcomes ride
        # the interrupt, so the asset records them instead of failing a written table.
        finished = {
            index: _task_outcome(context, workspace, run, by_key.get(key), reader, session)
            for index, (key, reader, session) in enumerate(triples)
            if _succeeded(by_key.get(key))
        }
        raise BatchInterrupted(str(interrupted), finished) from None
    return [
        _task_outcome(context, workspace, run, by_key.get(key), reader, session)
        for key, reader, session in triples
    ]


class BatchInterrupted(dg.DagsterExecutionInterruptedError):
    """The Dagster run was terminated and the batch's Databricks run cancelled; ``finished``: the
    outcomes of the tasks that had ended SUCCESS before the cancel, by their index in the batch."""

    def __init__(self, message: str, finished: dict[int, ScriptOutcome]):
        super().__init__(message)
        self.finished = finished


def _succeeded(task: Any) -> bool:
    state = task.state if task is not None else None
    return bool(state) and _name(state.result_state) == "SUCCESS"


def _submit_args(
    runner: DatabricksRunner,
    context: dg.OpExecutionContext,
    items: Sequence[BatchItem],
    script: str,
) -> dict[str, Any]:
    from databricks.sdk.service import compute, jobs

    label = f"batch of {len(items)}: " + ", ".join(item.label for item in items)
    args: dict[str, Any] = {
        "run_name": databricks_run_name(
            label[:1000],
            context.run.run_id,
            runner.environment,
            dagster_base_url=runner.dagster_base_url,
        ),
        # Each task has its own timeout; the run's covers the tasks one after the other.
        "timeout_seconds": runner.timeout_seconds * len(items),
        "idempotency_token": idempotency_token(context.run.run_id),
    }
    if runner.serverless:
        args["environments"] = [
            jobs.JobEnvironment(
                environment_key="dataloader",
                spec=compute.Environment(
                    environment_version="2", dependencies=runner.libraries_for(script)
                ),
            )
        ]
    return args


def _start(
    workspace: Any,
    tasks: list[dict[str, Any]],
    job_clusters: list[dict[str, Any]],
    submit: dict[str, Any],
) -> tuple[int, int | None]:
    """Start the run: (run id, the transient job's id or None).

    A one-time run (``runs/submit``) takes no ``job_clusters`` (``SubmitTask`` has no
    ``job_cluster_key``): there, each task's ``new_cluster`` would start a cluster of its own.
    So a batch on a new cluster is a transient job (``jobs/create`` with one job cluster,
    ``jobs/run-now``, ``jobs/delete`` once the run ended); an existing cluster or serverless
    batch is one ``runs/submit`` of all its tasks.
    """
    from databricks.sdk.service import jobs

    if not job_clusters:
        run = workspace.jobs.submit(tasks=[jobs.SubmitTask.from_dict(t) for t in tasks], **submit)
        return int(run.bind()["run_id"]), None
    created = workspace.jobs.create(
        name=submit["run_name"],
        tasks=[jobs.Task.from_dict(t) for t in tasks],
        job_clusters=[jobs.JobCluster.from_dict(c) for c in job_clusters],
        timeout_seconds=submit["timeout_seconds"],
        max_concurrent_runs=1,
        tags={"dataloader": "batch"},
    )
    try:
        run = workspace.jobs.run_now(created.job_id, idempotency_token=submit["idempotency_token"])
        return int(run.bind()["run_id"]), created.job_id
    except BaseException:
        workspace.jobs.delete(created.job_id)
        raise


def _delete_job(context: dg.OpExecutionContext, workspace: Any, job_id: int) -> None:
    """The transient job goes once its run ended (its run stays in the job runs list)."""
    try:
        workspace.jobs.delete(job_id)
    except Exception as exc:  # noqa: BLE001 - the loads' outcome does not depend on it
        context.log.warning(f"Databricks job {job_id} (this batch's) was not deleted: {exc}")


def _link_tasks(
    context: dg.OpExecutionContext,
    workspace: Any,
    run_id: int,
    keys: Sequence[str],
    items: Sequence[BatchItem],
) -> None:
    """Each row links to its own task run's page (else the run's) as soon as the run exists."""
    try:
        run = workspace.jobs.get_run(run_id)
        pages = {t.task_key: t.run_page_url for t in run.tasks or []}
        run_page = run.run_page_url
    except Exception:  # noqa: BLE001 - a link is helpful, not essential
        pages, run_page = {}, None
    context.log.info(f"Databricks run {run_id} carries {len(keys)} table(s) {run_page or ''}")
    for key, item in zip(keys, items, strict=True):
        if item.on_external_run:
            item.on_external_run(pages.get(key) or run_page, str(run_id))


def _wait(
    context: dg.OpExecutionContext,
    workspace: Any,
    tracker: _RunTracker,
    run_id: int,
    interval: float,
) -> None:
    """Poll the run until it ends; a terminate cancels it, a lost poll cancels it (tracker)."""
    try:
        while True:
            try:
                state = workspace.jobs.get_run(run_id).state
            except Exception as exc:  # noqa: BLE001 - the tracker cancels and says why
                tracker.poll_failed(run_id, exc)
                return
            if state is not None and _name(state.life_cycle_state) in _TERMINAL:
                return
            time.sleep(interval)
    except dg.DagsterExecutionInterruptedError:
        context.log.info(f"Dagster run terminated: cancelling Databricks run {run_id}")
        workspace.jobs.cancel_run(run_id)
        tracker._wait_stopped(run_id)
        raise dg.DagsterExecutionInterruptedError(
            f"Dagster run terminated; Databricks run {run_id} cancelled"
        ) from None


def _task_outcome(
    context: dg.OpExecutionContext,
    workspace: Any,
    run: Any,
    task: Any,
    reader: _RecordingMessageReader,
    session: Any,
) -> ScriptOutcome:
    """One table's outcome, from its own task and its own Pipes session only."""
    state = task.state if task is not None else None
    result = _name(state.result_state) if state else None
    messages = reader.custom_messages()
    error: str | None = None
    if result != "SUCCESS":
        error = (
            error_from_custom_messages(messages)
            or (_task_error(context, workspace, run, task) if task is not None else None)
            or (state.state_message if state and state.state_message else None)
            or f"Databricks task ended {result or 'without a state'}"
        )
    return ScriptOutcome(
        results=session.get_results() if error is None else (),
        custom_messages=messages,
        error=error,
        error_kind=None if error is None else error_kind_from(messages),
        external_run_url=(task.run_page_url if task is not None else None) or run.run_page_url,
        external_run_id=str(run.run_id),
    )
