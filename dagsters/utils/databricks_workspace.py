"""The one place the code location builds a databricks-sdk ``WorkspaceClient``.

The spec names ``DATABRICKS_WORKSPACE_URL`` as the workspace's address; databricks-sdk reads
``DATABRICKS_HOST``. ``DATABRICKS_HOST`` wins when both are set (it is what the SDK and the
Databricks CLI already use); otherwise ``DATABRICKS_WORKSPACE_URL`` is handed to the SDK as its
host. Credentials always come from the SDK's own chain (``DATABRICKS_TOKEN``, OAuth M2M, a config
profile, the cluster's identity), so no secret passes through here.

Plain module: imports nothing from Dagster (databricks-sdk only when a client is built).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

WORKSPACE_URL_VAR = "DATABRICKS_WORKSPACE_URL"


def workspace_host(env: Mapping[str, str] | None = None) -> str | None:
    """The host to give the SDK explicitly, or None to let it resolve one by itself.

    None when ``DATABRICKS_HOST`` is set (the SDK reads it) or when neither variable is set (a
    config profile or the cluster's own runtime may still supply one).
    """
    env = os.environ if env is None else env
    if (env.get("DATABRICKS_HOST") or "").strip():
        return None
    url = (env.get(WORKSPACE_URL_VAR) or "").strip().rstrip("/")
    if not url:
        return None
    # People copy the address bar or just the host name (adb-123.4.azuredatabricks.net).
    return url if "://" in url else f"https://{url}"


def workspace_client(**kwargs: Any) -> WorkspaceClient:
    """A ``WorkspaceClient`` with SDK auth from the environment, honouring the spec's URL."""
    from databricks.sdk import WorkspaceClient

    host = workspace_host()
    if host and "host" not in kwargs:
        kwargs["host"] = host
    return WorkspaceClient(**kwargs)
