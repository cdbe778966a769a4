"""The one module of the code location that depends on Dagster internals.

Everything else uses public names (``dg.DagsterExecutionInterruptedError``,
``dg.PipesMessageReader``, ``dg.PipesMessageHandler``, ...). What has no public equivalent lives
here, so a Dagster or dagster-databricks upgrade that moves it breaks in one place, and
``tests/dagster/test_dagster_compat.py`` says so loudly:

- ``DagsterPipesExecutionError``: what dagster-databricks' clients raise when the Databricks run
  ends in anything but success. Dagster does not export it at the top level.
- The polling hook: dagster-databricks' ``PipesDatabricksClient`` and
  ``PipesDatabricksServerlessClient`` submit the run inside ``run()`` and then call
  ``self._poll_til_success(context, run_id)``, catching ``DagsterExecutionInterruptedError`` to
  cancel the run. Overriding that private method is the only way to learn the run id while the run
  is still going (to link it from the control row at once) and to notice a termination, which
  ``run()`` cancels and then swallows. :func:`tracked_databricks_client` makes that override.
  Everything from the moment the run id is known is guarded: the tracker's own bookkeeping
  (linking the control row) runs inside it, an interrupt there still cancels the run, and any
  other exception while polling (HTTP 500, expired credentials, the SDK's retry budget) goes to
  the tracker's ``poll_failed``, which must not let the run outlive the step.
- Partitioned asset checks (``partitions_def`` on a check) are a preview feature in Dagster 1.13:
  :func:`preview_partitioned_checks` silences that one warning where the load asset's partitioned
  ``needs_review`` check is built, so neither the terminal nor the code-location log repeats it.
- The run launcher's base classes (``RunLauncher``, ``ConfigurableClass`` and the health-check
  result) and :func:`execute_run`, the body of ``dagster api execute_run``: what every Dagster run
  launcher that starts its own worker process runs there (``dataloader dev``'s launcher,
  ``dagsters/local/run_launcher.py``). Dagster imports the first ones itself; ``execute_run``
  imports Dagster's CLI module only when a run worker calls it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from dagster._utils import get_run_crash_explanation

__all__ = [
    "LOG_RECORD_METADATA_ATTR",
    "POLL_METHOD",
    "POLL_PARAMETERS",
    "RUN_BODY",
    "RUN_BODY_PARAMETERS",
    "CheckRunHealthResult",
    "ConfigurableClass",
    "ConfigurableClassData",
    "DagsterPipesExecutionError",
    "LaunchRunContext",
    "RunLauncher",
    "RunTracker",
    "WorkerStatus",
    "execute_run",
    "get_run_crash_explanation",
    "preview_partitioned_checks",
    "tracked_databricks_client",
]

PARTITIONED_CHECK_PREVIEW = (
    "Specifying a partitions_def on an AssetCheckSpec is currently in preview"
)


@contextmanager
def preview_partitioned_checks() -> Iterator[None]:
    """Build a partitioned asset check without Dagster's preview warning about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=PARTITIONED_CHECK_PREVIEW, category=dg.PreviewWarning
        )
        yield


# The dagster-databricks method we override and the parameters we rely on (pinned by a test).
POLL_METHOD = "_poll_til_success"
POLL_PARAMETERS = ("self", "context", "run_id")


class RunTracker(Protocol):
    """Told the Databricks run id once it exists; remembers whether the run was interrupted."""

    interrupted: bool

    def submitted(self, run_id: int) -> None: ...

    def poll_failed(self, run_id: int, error: Exception) -> None:
        """Polling ``run_id`` raised ``error``: return only if the run ended in success, raise
        otherwise (after cancelling a run that is still going)."""


_TRACKED_CLASSES: dict[type, type] = {}


def _tracked_class(base: type) -> type:
    """``base`` with its polling loop reporting the run id and remembering interrupts."""
    if base not in _TRACKED_CLASSES:
        base_poll = getattr(base, POLL_METHOD)

        def _poll_til_success(self: Any, context: Any, run_id: int) -> None:
            tracker = self.dataloader_tracker
            try:
                tracker.submitted(run_id)
                base_poll(self, context, run_id)
            except dg.DagsterExecutionInterruptedError:
                # run() cancels the Databricks run on this exception (forward_termination).
                tracker.interrupted = True
                raise
            except DagsterPipesExecutionError:
                raise  # the run itself ended in failure: it is over
            except Exception as exc:  # noqa: BLE001 - any other fault must not orphan the run
                tracker.poll_failed(run_id, exc)

        _TRACKED_CLASSES[base] = type(
            f"DataLoader{base.__name__}", (base,), {POLL_METHOD: _poll_til_success}
        )
    return _TRACKED_CLASSES[base]


def tracked_databricks_client(base: type, tracker: RunTracker, **client_args: Any) -> Any:
    """An instance of the dagster-databricks client class ``base`` (``PipesDatabricksClient`` or
    ``PipesDatabricksServerlessClient``) built with ``client_args``, reporting to ``tracker``."""
    client = _tracked_class(base)(**client_args)
    client.dataloader_tracker = tracker
    return client


# The body of `dagster api execute_run` and the parameters we pass (pinned by a test).
RUN_BODY = "_execute_run_command_body"
RUN_BODY_PARAMETERS = ("run_id", "instance", "write_stream_fn", "set_exit_code_on_failure")


def execute_run(run_id: str, instance_ref: str, before: Callable[[], None] | None = None) -> int:
    """Execute run ``run_id`` in this process as ``dagster api execute_run`` does: with the
    instance of the serialized ``instance_ref``, SIGINT raising the interrupt Dagster turns into a
    cancelled run, "Started process for run (pid: ...)" and "Process for run exited" in the run's
    event log. ``before`` runs first, once a SIGINT would already be kept for the run. Returns the
    worker's exit code."""
    from dagster._cli import api
    from dagster._cli.utils import get_instance_for_cli
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    body = getattr(api, RUN_BODY)
    with capture_interrupts():
        if before is not None:
            before()
        ref = deserialize_value(instance_ref, InstanceRef)
        with get_instance_for_cli(instance_ref=ref) as instance:
            return body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
