"""The Databricks runner: a script from ``databricks_scripts/`` as a ``spark_python_task``.

Submitted through dagster-databricks' ``PipesDatabricksClient`` (an existing cluster, or a
new-cluster spec) or ``PipesDatabricksServerlessClient`` (Pipes files in a Unity Catalog volume).
The workspace client is the injected ``databricks_workspace`` resource's
(``dagsters.resources.databricks_workspace``: host from settings, credentials from databricks-sdk's
own chain), handed over by ``pipes_databricks``. The run id is reported as soon as the run exists; a
terminated Dagster run cancels the Databricks run and raises ``DagsterExecutionInterruptedError``;
the outcome is read from the run's own final state, not from the client's return.
"""

from __future__ import annotations

import importlib.metadata
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from dagsters.dagster_compat import DagsterPipesExecutionError, tracked_databricks_client
from dagsters.resources.databricks_workspace import (
    DatabricksWorkspaceResource,
    workspace_or_default,
)
from dagsters.runners.cluster_spec import parse_new_cluster
from dagsters.runners.outcome import (
    ScriptOutcome,
    error_code_from,
    error_from_custom_messages,
    error_kind_from,
)
from dagsters.settings import LOCAL_DAGSTER_BASE_URL
from databricks_scripts.redaction import redact

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

DEFAULT_WORKSPACE_SCRIPTS = "/Workspace/Shared/dataloader/databricks_scripts"


def pinned(package: str) -> str:
    """``package==<the version installed here>``: the cluster runs the version the orchestrator
    runs and was tested with (dagster-pipes speaks the orchestrator's Pipes protocol), not
    whatever PyPI has on the day of the run."""
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


# What each script needs on the cluster; any other script gets DEFAULT_LIBRARIES.
# The retry script asks a chat model through the openai client (it falls back to rules without it,
# which would silently turn every analysis into a rule decision).
DEFAULT_LIBRARIES = (pinned("dagster-pipes"),)
SCRIPT_LIBRARIES: dict[str, tuple[str, ...]] = {
    "dataloader_pipe.py": DEFAULT_LIBRARIES,
    "dataloader_retry_pipe.py": (*DEFAULT_LIBRARIES, pinned("openai")),
}
# Serverless environment version 2: Python 3.11, like the 15.4 LTS floor of classic compute.
SERVERLESS_ENVIRONMENT_VERSION = "2"


def library_spec(entry: str) -> dict[str, Any]:
    """A task library: a wheel by its workspace / volume path (workspaces without PyPI egress),
    else a PyPI requirement."""
    if entry.endswith(".whl"):
        return {"whl": entry}
    return {"pypi": {"package": entry}}


_ENVIRONMENT_KEY = "dataloader"
# runs/get-output's ``error`` for a script that ended with ``sys.exit(<code>)``: no cause in it.
_BARE_EXIT = re.compile(r"SystemExit: (-?\d+)")
_TRACE_CHARS = 8_000  # the end of a long traceback is where its cause is
# How long a run that had to be cancelled (polling it failed) is watched until it stops.
CANCEL_WAIT_SECONDS = 120.0

OnExternalRun = Callable[[str | None, str], None]


def databricks_run_name(
    label: str,
    dagster_run_id: str,
    environment: str | None,
    *,
    dagster_base_url: str = LOCAL_DAGSTER_BASE_URL,
) -> str:
    """The Databricks run's name: environment, table and a link back to the Dagster run.

    One-time runs (``runs/submit``) take no job tags, so the name is where the Databricks side
    links to Dagster (the spec's bidirectional traceability). The link has the shape of
    ``Settings.dagster_run_url``.
    """
    prefix = f"dataloader [{environment}]" if environment else "dataloader"
    link = f"{dagster_base_url}/runs/{dagster_run_id}"
    return f"{prefix} {label} (dagster run {link})"[:4096]


def idempotency_token(dagster_run_id: str) -> str:
    """A fresh ``runs/submit`` idempotency token (at most 64 characters) for one attempt.

    Unique per attempt, not per Dagster run: a step retried in the same Dagster run must start a
    new Databricks run, while the SDK's own retries of this one POST reuse it.
    """
    return f"{dagster_run_id[:36]}-{uuid.uuid4().hex[:16]}"


CLASSIC_PIPES_NEEDS_A_VOLUME = (
    "Classic compute keeps the Dagster Pipes files in a Unity Catalog volume: set "
    "DATALOADER_DATABRICKS_VOLUME_PATH=/Volumes/<catalog>/<schema>/pipes (the bundle's pipes "
    "volume), or DATALOADER_DATABRICKS_PIPES_DBFS=true to keep them on the DBFS root"
)


@dataclass(frozen=True)
class DatabricksRunner:
    """Submits one script as a one-time Databricks run and waits for it."""

    timeout_seconds: int
    scripts_path: str | None = None
    cluster_id: str | None = None
    new_cluster_json: str | None = None
    serverless: bool = False
    volume_path: str | None = None
    pipes_dbfs: bool = False  # classic compute: Pipes files on DBFS root, only when asked
    libraries: Sequence[str] | None = None  # None: per script (SCRIPT_LIBRARIES)
    poll_interval_seconds: float = 5.0
    environment: str | None = None
    dagster_base_url: str = LOCAL_DAGSTER_BASE_URL
    workspace: DatabricksWorkspaceResource | None = None  # None: the SDK's own host

    def workspace_client(self) -> WorkspaceClient:
        """The injected workspace's databricks-sdk client (built once per process)."""
        return workspace_or_default(self.workspace).get_client()

    def libraries_for(self, script: str) -> list[str]:
        """PyPI packages the Databricks task for ``script`` installs."""
        if self.libraries is not None:
            return list(self.libraries)
        return list(SCRIPT_LIBRARIES.get(script, DEFAULT_LIBRARIES))

    def task(self, script: str) -> dict[str, Any]:
        """The ``SubmitTask`` (as a dict) that runs ``script``."""
        base = (self.scripts_path or DEFAULT_WORKSPACE_SCRIPTS).rstrip("/")
        task: dict[str, Any] = {
            "task_key": "dataloader_task",
            "spark_python_task": {"python_file": f"{base}/{script}", "parameters": []},
            "timeout_seconds": self.timeout_seconds,
        }
        if self.serverless:
            task["environment_key"] = _ENVIRONMENT_KEY
            return task
        task["libraries"] = [library_spec(lib) for lib in self.libraries_for(script)]
        if self.cluster_id:
            task["existing_cluster_id"] = self.cluster_id
        elif self.new_cluster_json:
            try:
                task["new_cluster"] = parse_new_cluster(self.new_cluster_json)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from None
        else:
            raise dg.Failure(
                "DATALOADER_EXECUTION=databricks needs DATABRICKS_CLUSTER_ID, "
                "DATALOADER_DATABRICKS_NEW_CLUSTER (JSON spec) or DATALOADER_DATABRICKS_SERVERLESS=1"
            )
        return task

    def run(
        self,
        context: dg.AssetExecutionContext,
        script: str,
        extras: Mapping[str, Any],
        label: str,
        on_external_run: OnExternalRun | None = None,
    ) -> ScriptOutcome:
        from databricks.sdk.service import jobs

        workspace = self.workspace_client()
        task = jobs.SubmitTask.from_dict(self.task(script))
        submit_args: dict[str, Any] = {
            "run_name": databricks_run_name(
                label, context.run.run_id, self.environment, dagster_base_url=self.dagster_base_url
            ),
            "timeout_seconds": self.timeout_seconds,
            # databricks-sdk retries a POST that timed out: with the token, Databricks starts
            # exactly one run for it (a retried submit returns the first run's id).
            "idempotency_token": idempotency_token(context.run.run_id),
        }
        tracker = _RunTracker(
            workspace, on_external_run, poll_interval_seconds=self.poll_interval_seconds
        )
        client, reader = self._client(workspace, task, script, submit_args, tracker)

        pipes_error: str | None = None
        invocation = None
        try:
            invocation = client.run(
                context=context, extras=dict(extras), task=task, submit_args=submit_args
            )
        except DagsterPipesExecutionError as exc:
            pipes_error = str(exc)
        if tracker.interrupted:
            # PipesDatabricksClient.run() cancels the run on termination but then swallows the
            # interrupt and returns as if it succeeded; the interrupt is re-raised here.
            raise dg.DagsterExecutionInterruptedError(
                f"Dagster run terminated; Databricks run {tracker.run_id} cancelled"
            )
        if tracker.run_id is None:
            raise dg.Failure(f"Databricks run was not submitted: {pipes_error}")
        return self._outcome(context, workspace, tracker, reader, invocation, pipes_error)

    def _client(
        self,
        workspace: Any,
        task: Any,
        script: str,
        submit_args: dict[str, Any],
        tracker: _RunTracker,
    ) -> tuple[Any, _RecordingMessageReader]:
        """The dagster-databricks client for this backend and the reader it reports through."""
        # The serverless client and UC volume reader are not re-exported at the package top level.
        from dagster_databricks.pipes import (
            PipesDatabricksClient,
            PipesDatabricksServerlessClient,
            PipesUnityCatalogVolumesMessageReader,
        )
        from databricks.sdk.service import compute, jobs

        if not self.serverless:
            if not self.pipes_dbfs:
                # DBFS root is deprecated and absent from new accounts: the volume by default.
                return self._classic_volume_client(workspace, tracker)
            default = PipesDatabricksClient(client=workspace).get_default_message_reader(task)
            reader = _RecordingMessageReader(default)
            client = tracked_databricks_client(
                PipesDatabricksClient,
                tracker,
                client=workspace,
                message_reader=reader,
                poll_interval_seconds=self.poll_interval_seconds,
            )
            return client, reader
        if not self.volume_path:
            raise dg.Failure("Serverless execution needs DATALOADER_DATABRICKS_VOLUME_PATH")
        submit_args["environments"] = [
            jobs.JobEnvironment(
                environment_key=_ENVIRONMENT_KEY,
                spec=compute.Environment(
                    environment_version=SERVERLESS_ENVIRONMENT_VERSION,
                    dependencies=self.libraries_for(script),  # requirements or wheel paths
                ),
            )
        ]
        reader = _RecordingMessageReader(
            PipesUnityCatalogVolumesMessageReader(client=workspace, volume_path=self.volume_path)
        )
        client = tracked_databricks_client(
            PipesDatabricksServerlessClient,
            tracker,
            client=workspace,
            volume_path=self.volume_path,
            message_reader=reader,
            poll_interval_seconds=self.poll_interval_seconds,
        )
        return client, reader

    def _classic_volume_client(
        self, workspace: Any, tracker: _RunTracker
    ) -> tuple[Any, _RecordingMessageReader]:
        """A classic cluster whose Pipes context and messages live in the Unity Catalog volume
        (``DATALOADER_DATABRICKS_VOLUME_PATH``), not on DBFS."""
        if not self.volume_path:
            raise dg.Failure(CLASSIC_PIPES_NEEDS_A_VOLUME)
        from dagster_databricks.pipes import (
            PipesDatabricksClient,
            PipesUnityCatalogVolumesContextInjector,
            PipesUnityCatalogVolumesMessageReader,
        )

        reader = _RecordingMessageReader(
            PipesUnityCatalogVolumesMessageReader(client=workspace, volume_path=self.volume_path)
        )
        client = tracked_databricks_client(
            PipesDatabricksClient,
            tracker,
            client=workspace,
            context_injector=PipesUnityCatalogVolumesContextInjector(
                client=workspace, volume_path=self.volume_path
            ),
            message_reader=reader,
            poll_interval_seconds=self.poll_interval_seconds,
        )
        return client, reader

    def _outcome(
        self,
        context: dg.AssetExecutionContext,
        workspace: Any,
        tracker: _RunTracker,
        reader: _RecordingMessageReader,
        invocation: Any,
        pipes_error: str | None,
    ) -> ScriptOutcome:
        from databricks.sdk.service import jobs

        # Do not trust the client's return: read the run's own final state.
        run = workspace.jobs.get_run(tracker.run_id)
        state = run.state
        result_state = state.result_state if state else None
        error: str | None = None
        if pipes_error is not None or result_state != jobs.RunResultState.SUCCESS:
            error = (
                error_from_custom_messages(reader.custom_messages())
                or _task_error(context, workspace, run)
                or (state.state_message if state and state.state_message else None)
                or pipes_error
                or f"Databricks run ended {result_state}"
            )
        results = invocation.get_results() if (invocation and error is None) else ()
        return ScriptOutcome(
            results=results,
            custom_messages=reader.custom_messages(),
            error=error,
            error_kind=None if error is None else error_kind_from(reader.custom_messages()),
            error_code=None if error is None else error_code_from(reader.custom_messages()),
            external_run_url=run.run_page_url or tracker.url,
            external_run_id=str(tracker.run_id),
        )


class _RecordingMessageReader(dg.PipesMessageReader):
    """Delegates to a real reader and remembers the session's message handler.

    dagster-databricks' clients raise on a failed run before returning the session, which holds
    the script's custom messages (its own error text). Keeping the handler lets us read them.
    """

    def __init__(self, inner: dg.PipesMessageReader):
        self.inner = inner
        self.handler: dg.PipesMessageHandler | None = None

    @contextmanager
    def read_messages(self, handler: dg.PipesMessageHandler) -> Iterator[Any]:
        self.handler = handler
        with self.inner.read_messages(handler) as params:
            yield params

    def on_opened(self, opened_payload: Any) -> None:
        self.inner.on_opened(opened_payload)

    def on_launched(self, launched_payload: Any) -> None:
        self.inner.on_launched(launched_payload)

    @property
    def expected_writer_count(self) -> int:
        return self.inner.expected_writer_count

    def no_messages_debug_text(self) -> str:
        return self.inner.no_messages_debug_text()

    def custom_messages(self) -> Sequence[Any]:
        return self.handler.get_custom_messages() if self.handler else ()


# Life-cycle states in which the task no longer executes. PENDING, QUEUED, BLOCKED (held by an
# upstream dependency or a concurrency limit) and RUNNING are a run still going: waited for by
# dagster-databricks' polling, cancelled by ``poll_failed``.
_FINISHED = ("TERMINATING", "TERMINATED", "SKIPPED", "INTERNAL_ERROR")


class _RunTracker:
    """Learns the Databricks run id as soon as the client starts polling it, and makes sure the
    run does not outlive the step when polling it fails (``poll_failed``)."""

    def __init__(
        self,
        workspace: Any,
        callback: OnExternalRun | None,
        *,
        poll_interval_seconds: float = 5.0,
        cancel_wait_seconds: float = CANCEL_WAIT_SECONDS,
    ):
        self.workspace = workspace
        self.callback = callback
        self.poll_interval_seconds = poll_interval_seconds
        self.cancel_wait_seconds = cancel_wait_seconds
        self.run_id: int | None = None
        self.url: str | None = None
        self.interrupted = False

    def poll_failed(self, run_id: int, error: Exception) -> None:
        """Polling failed: use the run's final state if it already has one, else cancel it and
        wait until it stops, then fail with what happened (never leave it running unnoticed)."""
        reason = f"{type(error).__name__}: {error}"
        state = self._state(run_id)
        if state is not None and _name(state.life_cycle_state) in _FINISHED:
            if _name(state.result_state) == "SUCCESS":
                return  # it finished while we could not look: its outcome is read as usual
            raise DagsterPipesExecutionError(f"Error running Databricks job: {state.state_message}")
        cancel_error = None
        try:
            self.workspace.jobs.cancel_run(run_id)
        except Exception as exc:  # noqa: BLE001 - reported in the failure below
            cancel_error = f"{type(exc).__name__}: {exc}"
        stopped = self._wait_stopped(run_id) if cancel_error is None else None
        where = self.url or f"Databricks run {run_id}"
        if stopped:
            raise dg.Failure(
                f"Lost track of Databricks run {run_id} while polling it ({reason}); the run was "
                f"cancelled ({stopped}) so it cannot commit after this attempt: {where}"
            )
        raise dg.Failure(
            f"Lost track of Databricks run {run_id} while polling it ({reason}) and could not "
            f"confirm its cancellation ({cancel_error or 'still running'}): it may still be "
            f"running and commit later; cancel it before the next attempt: {where}"
        )

    def _state(self, run_id: int) -> Any:
        try:
            return self.workspace.jobs.get_run(run_id).state
        except Exception:  # noqa: BLE001 - unknown state: treated as still running
            return None

    def _wait_stopped(self, run_id: int) -> str | None:
        """The life-cycle state once the cancelled run stops executing; None past the wait."""
        deadline = time.monotonic() + self.cancel_wait_seconds
        while True:
            state = self._state(run_id)
            if state is not None and _name(state.life_cycle_state) in _FINISHED:
                return _name(state.life_cycle_state)
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll_interval_seconds)

    def submitted(self, run_id: int) -> None:
        self.run_id = run_id
        try:
            self.url = self.workspace.jobs.get_run(run_id).run_page_url
        except Exception:  # noqa: BLE001 - a link is helpful, not essential: never fail the load over it
            self.url = None
        if self.callback:
            self.callback(self.url, str(run_id))


def _name(value: Any) -> str | None:
    """An SDK enum's name (``RunLifeCycleState.TERMINATED`` -> ``TERMINATED``)."""
    return getattr(value, "value", value)


def _task_error(
    context: dg.AssetExecutionContext, workspace: Any, run: Any, task: Any = None
) -> str | None:
    """Why the task failed, from the Jobs API (``runs/get-output``), when the script reported no
    error over Pipes (it failed before its Pipes session opened, or its messages were lost).

    The service's ``error`` is the exception that ended the task (``Type: message``), its
    ``error_trace`` the traceback, which goes to the Dagster event log. Both are masked of
    secret-shaped text here (the asset masks the values it knows again). A bare
    ``SystemExit: <code>`` (the script chose its exit status) names no cause: the message says
    where the cause is instead.
    """
    try:
        task = task if task is not None else (run.tasks or [None])[0]  # one-task run: its task
        if task is None or task.run_id is None:
            return None
        output = workspace.jobs.get_run_output(task.run_id)
    except Exception:  # noqa: BLE001 - the Jobs API is a fallback source here; its absence is not an error
        return None
    error = redact((output.error or "").strip())
    if output.error_trace:
        trace = redact(output.error_trace[-_TRACE_CHARS:])
        context.log.error(f"Databricks run {run.run_id} failed; runs/get-output trace:\n{trace}")
    exit_code = _BARE_EXIT.fullmatch(error)
    if exit_code:
        where = run.run_page_url or f"Databricks run {run.run_id}"
        return (
            f"the script exited with status {exit_code.group(1)} ({error}) without reporting its "
            f"error over Dagster Pipes; its driver log (stderr) says why: {where}"
        )
    return error or None
