"""The one place the code location builds a databricks-sdk ``WorkspaceClient``.

The host comes from ``Settings.databricks.workspace_host`` (the spec's ``DATABRICKS_WORKSPACE_URL``
when ``DATABRICKS_HOST`` is unset; see ``dagsters.settings.workspace_host``). Credentials always
come from the SDK's own chain (``DATABRICKS_TOKEN``, OAuth M2M, a config profile, the cluster's
identity), so no secret passes through here.

Plain module: imports nothing from Dagster (databricks-sdk only when a client is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient


def workspace_client(host: str | None = None, **kwargs: Any) -> WorkspaceClient:
    """A ``WorkspaceClient`` with SDK auth; ``host`` (when given) is the workspace's address."""
    from databricks.sdk import WorkspaceClient

    if host and "host" not in kwargs:
        kwargs["host"] = host
    return WorkspaceClient(**kwargs)
