"""The ``databricks_workspace`` resource: the one place the code location builds a databricks-sdk
``WorkspaceClient``.

One :class:`DatabricksWorkspaceResource`, built at the edge with
:meth:`DatabricksWorkspaceResource.from_settings`, is registered in ``dagsters/definitions.py`` and
injected into everything that talks to the workspace: the long-queued monitor (a sensor resource
argument), the Databricks runners (through ``pipes_databricks``), the SQL warehouse resource, the
models repository's secret-held push token and the Lakebase OAuth credentials. Each of those
resources holds the same object, so a process builds one client and reuses it.

The host comes from ``Settings.databricks.workspace_host`` (the spec's ``DATABRICKS_WORKSPACE_URL``
when ``DATABRICKS_HOST`` is unset; see ``dagsters.settings.workspace_host``); unset, the SDK
resolves it itself (``DATABRICKS_HOST``, a profile). Credentials always come from the SDK's own
chain (``DATABRICKS_TOKEN``, OAuth M2M, a config profile, the cluster's identity): no secret is
resource config. The client is built on first use only, so local mode (which never calls
Databricks) never imports databricks-sdk nor builds a client.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from dagsters.settings import Settings

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

_build_lock = threading.Lock()


class DatabricksWorkspaceResource(dg.ConfigurableResource):
    """The Databricks workspace; :meth:`get_client` is its databricks-sdk client."""

    host: str | None = Field(
        default=None,
        description="Databricks workspace URL handed to databricks-sdk; unset: the SDK's own.",
    )

    _client: Any = PrivateAttr(default=None)
    _pid: int | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabricksWorkspaceResource:
        """The resource the code location uses: the host from ``settings``, nothing secret."""
        return cls(host=settings.databricks.workspace_host)

    def get_client(self) -> WorkspaceClient:
        """The ``WorkspaceClient`` (SDK auth), built on first use and kept for this process."""
        with _build_lock:
            # A forked worker builds its own: the parent's HTTP session must not be shared.
            if self._client is None or self._pid != os.getpid():
                from databricks.sdk import WorkspaceClient

                self._client = WorkspaceClient(**({"host": self.host} if self.host else {}))
                self._pid = os.getpid()
            return self._client


def workspace_or_default(
    workspace: DatabricksWorkspaceResource | None,
) -> DatabricksWorkspaceResource:
    """``workspace``, or (for a resource built without one, as tests and tools do) a workspace
    whose host the SDK resolves itself. The code location always injects its own."""
    return workspace if workspace is not None else DatabricksWorkspaceResource()
