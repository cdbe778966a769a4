"""The execution backend: runs a script from ``databricks_scripts/`` through Dagster Pipes.

One resource, two runners, chosen by ``execution`` (``Settings.execution``, the environment's
``DATALOADER_EXECUTION``):

- ``local``: :class:`dagsters.runners.local.LocalRunner`, the script as a subprocess of the step.
- ``databricks``: :class:`dagsters.runners.databricks.DatabricksRunner`, the script as a
  ``spark_python_task`` on an existing cluster, a new cluster or serverless.

Both return a :class:`~dagsters.runners.outcome.ScriptOutcome`: the results the script reported,
its own error text when it failed, and the external run link. When the Dagster run is terminated,
the external work is stopped (subprocess killed / Databricks run cancelled) and
``DagsterExecutionInterruptedError`` is raised, so the caller can record the cancellation and
nothing is materialized.

Built at the edge with :meth:`PipesDatabricksResource.from_settings`. No field holds a secret: the
Databricks runners talk to the workspace through the injected ``databricks_workspace`` resource
(``workspace``), whose credentials come from databricks-sdk's own chain; a local run never builds
its client.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.runners.local import LocalRunner
from dagsters.runners.outcome import ScriptOutcome
from dagsters.settings import (
    DEFAULT_LOAD_TIMEOUT_SECONDS,
    LOCAL_DAGSTER_BASE_URL,
    LOCAL_SCRIPTS_DIR,
    Settings,
)
from databricks_scripts.contract import PARAMS_EXTRA

if TYPE_CHECKING:
    # Imported by databricks_runner() when a load runs on Databricks: a local run worker never
    # needs the Databricks runner (tests/test_run_worker_imports.py).
    from dagsters.runners.databricks import DatabricksRunner, OnExternalRun


class PipesDatabricksResource(dg.ConfigurableResource):
    """Runs DataLoader scripts locally or on Databricks through Dagster Pipes."""

    execution: str = Field(default="local", description="local or databricks")
    scripts_path: str | None = Field(
        default=None,
        description="Directory holding the scripts: a local directory (local) or a workspace / "
        "volume path such as /Workspace/Shared/dataloader/databricks_scripts (databricks).",
    )
    python_executable: str | None = Field(default=None, description="Local: default this Python.")
    home: str | None = Field(default=None, description="Local: the script's DATALOADER_HOME.")
    lake_root: str | None = Field(default=None, description="Local: DATALOADER_LAKE_ROOT.")
    timeout_seconds: int = DEFAULT_LOAD_TIMEOUT_SECONDS
    termination_grace_seconds: float = 20.0
    cluster_id: str | None = None
    new_cluster_json: str | None = Field(
        default=None, description="JSON new_cluster spec, used when no cluster_id is set."
    )
    serverless: bool = False
    volume_path: str | None = Field(
        default=None,
        description="Unity Catalog volume for the Pipes context and messages (every compute).",
    )
    pipes_dbfs: bool = Field(
        default=False,
        description="Classic compute: Pipes files on the DBFS root instead of the volume.",
    )
    libraries: list[str] | None = Field(
        default=None,
        description="PyPI packages for every script's task; unset: per script (SCRIPT_LIBRARIES).",
    )
    poll_interval_seconds: float = 5.0
    environment: str | None = Field(
        default=None, description="DAGSTER_ENVIRONMENT (npd | prod), shown in Databricks run names."
    )
    dagster_base_url: str = Field(
        default=LOCAL_DAGSTER_BASE_URL,
        description="Where the Dagster UI is, for the run link in Databricks run names.",
    )
    workspace: DatabricksWorkspaceResource | None = Field(
        default=None,
        description="The code location's databricks_workspace; unset: the SDK's own host.",
    )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PipesDatabricksResource:
        """The resource the code location uses; ``overrides`` set other fields (``workspace``:
        the code location's shared one; tests)."""
        databricks = settings.databricks
        values: dict[str, Any] = {
            "execution": settings.execution,
            "scripts_path": settings.scripts_path,
            "home": str(settings.paths.home),
            "lake_root": str(settings.paths.lake_root),
            "timeout_seconds": settings.load_timeout_seconds,
            "cluster_id": databricks.cluster_id,
            "new_cluster_json": databricks.new_cluster_json,
            "serverless": databricks.serverless,
            "volume_path": databricks.volume_path,
            "pipes_dbfs": databricks.pipes_dbfs,
            # DATALOADER_DATABRICKS_LIBRARIES replaces the per-script lists for every script.
            "libraries": list(databricks.libraries) if databricks.libraries is not None else None,
            "poll_interval_seconds": databricks.poll_interval_seconds,
            "environment": settings.environment,
            "dagster_base_url": settings.dagster_base_url,
            "workspace": DatabricksWorkspaceResource.from_settings(settings),
        }
        return cls(**{**values, **overrides})

    # ------------------------------------------------------------------ runners

    def local_runner(self) -> LocalRunner:
        return LocalRunner(
            scripts_dir=Path(self.scripts_path or LOCAL_SCRIPTS_DIR),
            timeout_seconds=self.timeout_seconds,
            termination_grace_seconds=self.termination_grace_seconds,
            python_executable=self.python_executable or sys.executable,
            home=self.home,
            lake_root=self.lake_root,
        )

    def databricks_runner(self) -> DatabricksRunner:
        from dagsters.runners.databricks import DatabricksRunner

        return DatabricksRunner(
            timeout_seconds=self.timeout_seconds,
            scripts_path=self.scripts_path,
            cluster_id=self.cluster_id,
            new_cluster_json=self.new_cluster_json,
            serverless=self.serverless,
            volume_path=self.volume_path,
            pipes_dbfs=self.pipes_dbfs,
            libraries=tuple(self.libraries) if self.libraries is not None else None,
            poll_interval_seconds=self.poll_interval_seconds,
            environment=self.environment,
            dagster_base_url=self.dagster_base_url,
            workspace=self.workspace,
        )

    # ------------------------------------------------------------------ public

    def libraries_for(self, script: str) -> list[str]:
        """PyPI packages the Databricks task for ``script`` installs."""
        return self.databricks_runner().libraries_for(script)

    def run_script(
        self,
        context: dg.AssetExecutionContext,
        *,
        script: str,
        params: Mapping[str, Any],
        label: str,
        on_external_run: OnExternalRun | None = None,
    ) -> ScriptOutcome:
        """Run ``script`` with Pipes extras ``{"params": params}`` and wait for it.

        ``on_external_run(url, run_id)`` is called once the Databricks run exists, so the control
        row can link to it while the load is still running.
        """
        extras = {PARAMS_EXTRA: dict(params)}
        if self.execution == "databricks":
            return self.databricks_runner().run(context, script, extras, label, on_external_run)
        return self.local_runner().run(context, script, extras)

    def run_script_batch(
        self,
        context: dg.OpExecutionContext,
        *,
        script: str,
        items: Sequence[tuple[str, Mapping[str, Any], OnExternalRun | None]],
    ) -> list[ScriptOutcome]:
        """Databricks only: ``script`` once per ``(label, params, on_external_run)`` item, as the
        tasks of ONE Databricks run on shared compute; one outcome per item, in order."""
        from dagsters.runners.databricks_batch import BatchItem, run_batch

        batch = [
            BatchItem(label=label, extras={PARAMS_EXTRA: dict(params)}, on_external_run=callback)
            for label, params, callback in items
        ]
        return run_batch(self.databricks_runner(), context, script, batch)
