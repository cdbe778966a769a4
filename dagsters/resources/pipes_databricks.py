"""The execution backend: runs a script from ``databricks_scripts/`` through Dagster Pipes.

One resource, two backends, chosen by ``DATALOADER_EXECUTION``:

- ``local``: the script runs as a subprocess of the step (``sys.executable``), with Pipes context
  and messages in temp files.
- ``databricks``: the script runs as a ``spark_python_task`` through dagster-databricks'
  ``PipesDatabricksClient`` (existing cluster ``DATABRICKS_CLUSTER_ID`` or a new-cluster spec) or
  ``PipesDatabricksServerlessClient`` (Unity Catalog volume for Pipes files), with databricks-sdk
  authentication from the environment (``DATABRICKS_HOST``, else ``DATABRICKS_WORKSPACE_URL``;
  ``DATABRICKS_TOKEN`` or any sdk auth).

Both return a :class:`ScriptOutcome`: the results the script reported, its own error text when it
failed, and the external run link. When the Dagster run is terminated, the external work is
stopped (subprocess killed / Databricks run cancelled) and ``DagsterExecutionInterruptedError`` is
raised, so the caller can record the cancellation and nothing is materialized.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from dagster._core.pipes.client import PipesMessageReader
from dagster._core.pipes.context import PipesMessageHandler
from pydantic import Field

from dagsters.settings import PROJECT_ROOT, load_settings
from dagsters.utils.databricks_workspace import workspace_client


# Interim glue on rewire-core only (the runner branch replaces this module): the removed helpers.
def dataloader_home():
    return load_settings().paths.home


def execution_mode(env=None):
    return load_settings(env).execution


def dagster_environment(env=None):
    return load_settings(env).environment


def dagster_run_url(run_id, env=None):
    return load_settings(env).dagster_run_url(run_id)


LOCAL_SCRIPTS_DIR = PROJECT_ROOT / "databricks_scripts"
DEFAULT_TIMEOUT_SECONDS = 10_800  # spec: 3 hours per load
ERROR_MESSAGE_KEY = "dataloader_error"
STDERR_ERROR_PREFIX = "DATALOADER_ERROR: "
_STDERR_TAIL_LINES = 200
# PyPI packages each script needs on the cluster; any other script gets DEFAULT_LIBRARIES.
# The retry script asks a chat model through the openai client (it falls back to rules without it,
# which would silently turn every analysis into a rule decision).
DEFAULT_LIBRARIES = ("dagster-pipes",)
SCRIPT_LIBRARIES: dict[str, tuple[str, ...]] = {
    "dataloader_pipe.py": ("dagster-pipes",),
    "dataloader_retry_pipe.py": ("dagster-pipes", "openai"),
}


@dataclass
class ScriptOutcome:
    """What one script execution produced."""

    results: Sequence[Any] = ()
    custom_messages: Sequence[Any] = ()
    error: str | None = None  # the script's own error text when it failed, else None
    external_run_url: str | None = None
    external_run_id: str | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.error is None


def error_from_custom_messages(messages: Sequence[Any]) -> str | None:
    """The last ``{"dataloader_error": text}`` the script reported, if any."""
    for message in reversed(list(messages)):
        if isinstance(message, Mapping) and message.get(ERROR_MESSAGE_KEY):
            return str(message[ERROR_MESSAGE_KEY])
    return None


def error_from_stderr(lines: Sequence[str]) -> str | None:
    """The script's ``DATALOADER_ERROR: ...`` line; else the last non-empty stderr line."""
    for line in reversed(lines):
        if line.startswith(STDERR_ERROR_PREFIX):
            return line[len(STDERR_ERROR_PREFIX) :].strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return None


class _RecordingMessageReader(PipesMessageReader):
    """Delegates to a real reader and remembers the session's message handler.

    dagster-databricks' clients raise on a failed run before returning the session, which holds
    the script's custom messages (its own error text). Keeping the handler lets us read them.
    """

    def __init__(self, inner: PipesMessageReader):
        self.inner = inner
        self.handler: PipesMessageHandler | None = None

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[Any]:
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


class PipesDatabricksResource(dg.ConfigurableResource):
    """Runs DataLoader scripts locally or on Databricks through Dagster Pipes."""

    execution: str = Field(default="local", description="local or databricks")
    scripts_path: str | None = Field(
        default=None,
        description="Directory holding the scripts: a local directory (local) or a workspace / "
        "volume path such as /Workspace/Shared/dataloader/databricks_scripts (databricks).",
    )
    python_executable: str | None = Field(default=None, description="Local: default this Python.")
    lake_root: str | None = Field(default=None, description="Local: DATALOADER_LAKE_ROOT.")
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    termination_grace_seconds: float = 20.0
    cluster_id: str | None = None
    new_cluster_json: str | None = Field(
        default=None, description="JSON new_cluster spec, used when no cluster_id is set."
    )
    serverless: bool = False
    volume_path: str | None = Field(
        default=None, description="Serverless: Unity Catalog volume for Pipes context/messages."
    )
    libraries: list[str] | None = Field(
        default=None,
        description="PyPI packages for every script's task; unset: per script (SCRIPT_LIBRARIES).",
    )
    poll_interval_seconds: float = 5.0
    environment: str | None = Field(
        default=None, description="DAGSTER_ENVIRONMENT (npd | prod), shown in Databricks run names."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipesDatabricksResource:
        env = os.environ if env is None else env
        # DATALOADER_DATABRICKS_LIBRARIES replaces the per-script lists for every script.
        libraries = [
            lib.strip()
            for lib in (env.get("DATALOADER_DATABRICKS_LIBRARIES") or "").split(",")
            if lib.strip()
        ] or None
        return cls(
            execution=execution_mode(env),
            scripts_path=env.get("DATALOADER_SCRIPTS_PATH") or None,
            lake_root=env.get("DATALOADER_LAKE_ROOT") or None,
            timeout_seconds=int(
                env.get("DATALOADER_LOAD_TIMEOUT_SECONDS") or DEFAULT_TIMEOUT_SECONDS
            ),
            cluster_id=env.get("DATABRICKS_CLUSTER_ID") or None,
            new_cluster_json=env.get("DATALOADER_DATABRICKS_NEW_CLUSTER") or None,
            serverless=(env.get("DATALOADER_DATABRICKS_SERVERLESS") or "").lower()
            in ("1", "true", "yes"),
            volume_path=env.get("DATALOADER_DATABRICKS_VOLUME_PATH") or None,
            libraries=libraries,
            poll_interval_seconds=float(env.get("DATALOADER_DATABRICKS_POLL_SECONDS") or 5.0),
            environment=dagster_environment(env),
        )

    # ------------------------------------------------------------------ public

    def libraries_for(self, script: str) -> list[str]:
        """PyPI packages the Databricks task for ``script`` installs."""
        if self.libraries is not None:
            return list(self.libraries)
        return list(SCRIPT_LIBRARIES.get(script, DEFAULT_LIBRARIES))

    def run_script(
        self,
        context: dg.AssetExecutionContext,
        *,
        script: str,
        params: Mapping[str, Any],
        label: str,
        on_external_run: Callable[[str | None, str], None] | None = None,
    ) -> ScriptOutcome:
        """Run ``script`` with Pipes extras ``{"params": params}`` and wait for it.

        ``on_external_run(url, run_id)`` is called once the Databricks run exists, so the control
        row can link to it while the load is still running.
        """
        extras = {"params": dict(params)}
        if self.execution == "databricks":
            return self._run_on_databricks(context, script, extras, label, on_external_run)
        return self._run_locally(context, script, extras)

    # ------------------------------------------------------------------ local

    def _local_env(self) -> dict[str, str]:
        home = dataloader_home()
        return {
            "DATALOADER_HOME": str(home),
            "DATALOADER_LAKE_ROOT": self.lake_root
            or os.environ.get("DATALOADER_LAKE_ROOT")
            or str(home / "lake"),
            "PYTHONUNBUFFERED": "1",
        }

    def _run_locally(
        self, context: dg.AssetExecutionContext, script: str, extras: dict[str, Any]
    ) -> ScriptOutcome:
        # Not PipesSubprocessClient.run(): on failure it raises before handing back the session
        # (which holds the script's own error message), it cannot both show and keep stderr, and on
        # termination it leaves a child that ignores SIGINT running after 20 s. Same Pipes parts,
        # driven here.
        script_path = Path(self.scripts_path or LOCAL_SCRIPTS_DIR) / script
        command = [self.python_executable or sys.executable, str(script_path)]
        stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        returncode: int | None = None
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras=extras,
        ) as session:
            process = subprocess.Popen(
                command,
                cwd=str(script_path.parent),
                env={**os.environ, **self._local_env(), **session.get_bootstrap_env_vars()},
                stdout=None,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            tee = threading.Thread(
                target=_tee_stderr, args=(process, stderr_tail), daemon=True, name="stderr-tee"
            )
            tee.start()
            try:
                returncode = self._wait(process)
            except DagsterExecutionInterruptedError:
                context.log.info("Dagster run terminated: stopping the load subprocess.")
                self._stop(process)
                raise
            finally:
                tee.join(timeout=5)
        if returncode is None:
            error = f"Timed out after {self.timeout_seconds} seconds; the load process was killed."
        elif returncode != 0:
            error = (
                error_from_custom_messages(session.get_custom_messages())
                or error_from_stderr(list(stderr_tail))
                or f"Load process exited with code {returncode}"
            )
        else:
            error = None
        return ScriptOutcome(
            results=session.get_reported_results() if error is None else (),
            custom_messages=session.get_custom_messages(),
            error=error,
        )

    def _wait(self, process: subprocess.Popen) -> int | None:
        """Exit code, or None after killing a process that outlived the timeout."""
        try:
            return process.wait(timeout=self.timeout_seconds)
        except subprocess.TimeoutExpired:
            self._stop(process)
            return None

    def _stop(self, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        # SIGINT first so the script can close its source connection and say why it stopped.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=self.termination_grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)

    # ------------------------------------------------------------------ databricks

    def _task(self, script: str) -> dict[str, Any]:
        base = (self.scripts_path or "/Workspace/Shared/dataloader/databricks_scripts").rstrip("/")
        task: dict[str, Any] = {
            "task_key": "dataloader_task",
            "spark_python_task": {"python_file": f"{base}/{script}", "parameters": []},
            "timeout_seconds": self.timeout_seconds,
        }
        if self.serverless:
            task["environment_key"] = "dataloader"
            return task
        task["libraries"] = [{"pypi": {"package": lib}} for lib in self.libraries_for(script)]
        if self.cluster_id:
            task["existing_cluster_id"] = self.cluster_id
        elif self.new_cluster_json:
            task["new_cluster"] = json.loads(self.new_cluster_json)
        else:
            raise dg.Failure(
                "DATALOADER_EXECUTION=databricks needs DATABRICKS_CLUSTER_ID, "
                "DATALOADER_DATABRICKS_NEW_CLUSTER (JSON spec) or DATALOADER_DATABRICKS_SERVERLESS=1"
            )
        return task

    def _run_on_databricks(
        self,
        context: dg.AssetExecutionContext,
        script: str,
        extras: dict[str, Any],
        label: str,
        on_external_run: Callable[[str | None, str], None] | None,
    ) -> ScriptOutcome:
        # The serverless client and UC volume reader are not re-exported at the package top level.
        from dagster_databricks.pipes import (
            PipesDatabricksClient,
            PipesDatabricksServerlessClient,
            PipesUnityCatalogVolumesMessageReader,
        )
        from databricks.sdk.service import compute, jobs

        workspace = workspace_client()  # sdk auth from the environment
        task = jobs.SubmitTask.from_dict(self._task(script))
        submit_args: dict[str, Any] = {
            "run_name": databricks_run_name(label, context.run.run_id, self.environment),
            "timeout_seconds": self.timeout_seconds,
        }
        tracker = _RunTracker(workspace, on_external_run)
        if self.serverless:
            if not self.volume_path:
                raise dg.Failure("Serverless execution needs DATALOADER_DATABRICKS_VOLUME_PATH")
            submit_args["environments"] = [
                jobs.JobEnvironment(
                    environment_key="dataloader",
                    spec=compute.Environment(client="2", dependencies=self.libraries_for(script)),
                )
            ]
            reader = _RecordingMessageReader(
                PipesUnityCatalogVolumesMessageReader(
                    client=workspace, volume_path=self.volume_path
                )
            )
            client: Any = _tracked(PipesDatabricksServerlessClient)(
                client=workspace,
                volume_path=self.volume_path,
                message_reader=reader,
                poll_interval_seconds=self.poll_interval_seconds,
            )
        else:
            default_reader = PipesDatabricksClient(client=workspace).get_default_message_reader(
                task
            )
            reader = _RecordingMessageReader(default_reader)
            client = _tracked(PipesDatabricksClient)(
                client=workspace,
                message_reader=reader,
                poll_interval_seconds=self.poll_interval_seconds,
            )
        client.dataloader_tracker = tracker

        pipes_error: str | None = None
        invocation = None
        try:
            invocation = client.run(
                context=context, extras=extras, task=task, submit_args=submit_args
            )
        except DagsterPipesExecutionError as exc:
            pipes_error = str(exc)
        if tracker.interrupted:
            # PipesDatabricksClient.run() cancels the run on termination but then swallows the
            # interrupt and returns as if it succeeded; the interrupt is re-raised here.
            raise DagsterExecutionInterruptedError(
                f"Dagster run terminated; Databricks run {tracker.run_id} cancelled"
            )
        if tracker.run_id is None:
            raise dg.Failure(f"Databricks run was not submitted: {pipes_error}")

        # Do not trust the client's return: read the run's own final state.
        run = workspace.jobs.get_run(tracker.run_id)
        state = run.state
        result_state = state.result_state if state else None
        error: str | None = None
        if pipes_error is not None or result_state != jobs.RunResultState.SUCCESS:
            error = (
                error_from_custom_messages(reader.custom_messages())
                or _task_error(workspace, run)
                or (state.state_message if state and state.state_message else None)
                or pipes_error
                or f"Databricks run ended {result_state}"
            )
        results = invocation.get_results() if (invocation and error is None) else ()
        return ScriptOutcome(
            results=results,
            custom_messages=reader.custom_messages(),
            error=error,
            external_run_url=run.run_page_url or tracker.url,
            external_run_id=str(tracker.run_id),
        )


def databricks_run_name(label: str, dagster_run_id: str, environment: str | None) -> str:
    """The Databricks run's name: environment, table and a link back to the Dagster run.

    One-time runs (``runs/submit``) take no job tags, so the name is where the Databricks side
    links to Dagster (the spec's bidirectional traceability).
    """
    prefix = f"dataloader [{environment}]" if environment else "dataloader"
    return f"{prefix} {label} (dagster run {dagster_run_url(dagster_run_id)})"[:4096]


class _RunTracker:
    """Learns the Databricks run id as soon as the client starts polling it."""

    def __init__(self, workspace: Any, callback: Callable[[str | None, str], None] | None):
        self.workspace = workspace
        self.callback = callback
        self.run_id: int | None = None
        self.url: str | None = None
        self.interrupted = False

    def submitted(self, run_id: int) -> None:
        self.run_id = run_id
        try:
            self.url = self.workspace.jobs.get_run(run_id).run_page_url
        except Exception:  # noqa: BLE001 - a link is helpful, not essential: never fail the load over it
            self.url = None
        if self.callback:
            self.callback(self.url, str(run_id))


_TRACKED_CLASSES: dict[type, type] = {}


def _tracked(base: type) -> type:
    """``base`` with its polling loop reporting the run id and remembering interrupts."""
    if base not in _TRACKED_CLASSES:

        def _poll_til_success(self: Any, context: Any, run_id: int) -> None:
            self.dataloader_tracker.submitted(run_id)
            try:
                base._poll_til_success(self, context, run_id)  # type: ignore[attr-defined]
            except DagsterExecutionInterruptedError:
                self.dataloader_tracker.interrupted = True
                raise

        _TRACKED_CLASSES[base] = type(
            f"DataLoader{base.__name__}", (base,), {"_poll_til_success": _poll_til_success}
        )
    return _TRACKED_CLASSES[base]


def _task_error(workspace: Any, run: Any) -> str | None:
    """The task's own exception text from the Jobs API (``runs/get-output``), when available."""
    try:
        tasks = run.tasks or []
        if not tasks or tasks[0].run_id is None:
            return None
        output = workspace.jobs.get_run_output(tasks[0].run_id)
        return output.error or None
    except Exception:  # noqa: BLE001 - the Jobs API is a fallback source here; its absence is not an error
        return None


def _tee_stderr(process: subprocess.Popen, tail: collections.deque[str]) -> None:
    """Copy the script's stderr to ours (the Dagster compute log) and keep the last lines."""
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line.rstrip("\n"))
        sys.stderr.write(line)
        sys.stderr.flush()
