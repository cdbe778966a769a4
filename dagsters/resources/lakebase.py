"""The ``lakebase`` resource: where the control database is and how to log in to it.

Configuration (every field may also be given as ``dg.EnvVar(...)``; unset fields read the spec's
environment variables when the client is built, so secrets never enter run config):

- ``host`` / ``port`` / ``database`` / ``user`` / ``password``: ``LAKEBASE_HOST``, ``LAKEBASE_PORT``
  (5432), ``LAKEBASE_DATABASE`` (``dataloader``), ``LAKEBASE_USER``, ``LAKEBASE_PASSWORD``.
- ``sslmode``: ``LAKEBASE_SSLMODE``, default ``require`` for a remote host.
- ``auth_mode``: ``password`` (default) or ``oauth`` (``DATALOADER_LAKEBASE_AUTH_MODE``). With
  ``oauth`` every new physical connection logs in with a fresh Databricks database credential,
  minted through databricks-sdk (``DATABRICKS_HOST``, else ``DATABRICKS_WORKSPACE_URL``;
  ``DATABRICKS_TOKEN`` or any SDK auth):
  ``instance_name`` (``DATALOADER_LAKEBASE_INSTANCE``) for a provisioned database instance, or
  ``endpoint`` (``DATALOADER_LAKEBASE_ENDPOINT``, ``projects/<p>/branches/<b>/endpoints/<e>``)
  for an autoscaling Lakebase project.

With no host at all, the project's embedded PostgreSQL is started, migrated and seeded.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from dagsters.resources.databricks_workspace import workspace_client as _new_workspace_client
from dagsters.settings import workspace_host
from dagsters.utils.lakebase_client import LakebaseClient, LakebaseError
from databricks_scripts.redaction import redact

_clients: dict[tuple, LakebaseClient] = {}
_clients_lock = threading.Lock()

# Autoscaling Lakebase (projects/branches/endpoints) mints credentials here. The installed
# databricks-sdk (pinned < 0.61 by dagster-databricks) has no typed ``w.postgres`` API yet, so
# the request goes through the SDK's own authenticated HTTP client when the typed API is absent.
_POSTGRES_CREDENTIALS_PATH = "/api/2.0/postgres/credentials"


class LakebaseResource(dg.ConfigurableResource):
    """Connection settings for the Lakebase control database; ``get_client()`` does the rest."""

    host: str | None = Field(default=None, description="LAKEBASE_HOST; unset: embedded server")
    port: int | None = Field(default=None, description="LAKEBASE_PORT (default 5432)")
    database: str | None = Field(default=None, description="LAKEBASE_DATABASE (dataloader)")
    user: str | None = Field(default=None, description="LAKEBASE_USER")
    password: str | None = Field(
        default=None, description="LAKEBASE_PASSWORD (auth_mode=password only)"
    )
    sslmode: str | None = Field(default=None, description="LAKEBASE_SSLMODE (require)")
    auth_mode: str | None = Field(
        default=None, description="password | oauth (DATALOADER_LAKEBASE_AUTH_MODE)"
    )
    instance_name: str | None = Field(
        default=None, description="Provisioned database instance (DATALOADER_LAKEBASE_INSTANCE)"
    )
    endpoint: str | None = Field(
        default=None,
        description="Autoscaling endpoint projects/<p>/branches/<b>/endpoints/<e> "
        "(DATALOADER_LAKEBASE_ENDPOINT)",
    )
    min_pool_size: int = 1
    max_pool_size: int = 4
    connect_timeout_seconds: int = 10
    pool_timeout_seconds: float = Field(
        default=30.0, description="How long a caller waits for a pooled connection"
    )

    # -- never show secrets -----------------------------------------------------------------------

    def __repr__(self) -> str:
        settings = self._settings()
        shown = {k: v for k, v in settings.items() if k != "password"}
        shown["password"] = "***" if settings["password"] else None
        return f"LakebaseResource({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    # -- settings ---------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        env = os.environ
        host = self.host or env.get("LAKEBASE_HOST") or None
        auth_mode = self.auth_mode or env.get("DATALOADER_LAKEBASE_AUTH_MODE") or "password"
        if auth_mode not in ("password", "oauth"):
            raise LakebaseError(f"auth_mode must be 'password' or 'oauth', not {auth_mode!r}")
        return {
            "host": host,
            "port": int(self.port or env.get("LAKEBASE_PORT") or 5432),
            "database": self.database or env.get("LAKEBASE_DATABASE") or "dataloader",
            "user": self.user or env.get("LAKEBASE_USER") or None,
            "password": self.password or env.get("LAKEBASE_PASSWORD") or None,
            "sslmode": self.sslmode or env.get("LAKEBASE_SSLMODE") or "require",
            "auth_mode": auth_mode,
            "instance_name": self.instance_name or env.get("DATALOADER_LAKEBASE_INSTANCE") or None,
            "endpoint": self.endpoint or env.get("DATALOADER_LAKEBASE_ENDPOINT") or None,
        }

    def conninfo(self) -> str:
        """The connection string without any password or token (safe to log)."""
        s = self._settings()
        if not s["host"]:
            from dagsters.utils.embedded_lakebase import CONTROL_DATABASE, ensure_embedded_lakebase

            return ensure_embedded_lakebase().conninfo(CONTROL_DATABASE)
        return psycopg.conninfo.make_conninfo(
            host=s["host"],
            port=s["port"],
            dbname=s["database"],
            user=s["user"],
            sslmode=s["sslmode"],
            connect_timeout=self.connect_timeout_seconds,
            application_name="dataloader",
        )

    def get_client(self) -> LakebaseClient:
        """A pooled :class:`LakebaseClient`, one per process and configuration."""
        s = self._settings()
        key = (os.getpid(), tuple(sorted((k, _fingerprint(k, v)) for k, v in s.items())))
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = self._build_client(s)
                _clients[key] = client
            return client

    def _build_client(self, s: dict[str, Any]) -> LakebaseClient:
        conninfo = self.conninfo()
        if not s["host"]:
            return LakebaseClient(
                conninfo,
                min_size=self.min_pool_size,
                max_size=self.max_pool_size,
                timeout=self.pool_timeout_seconds,
            )
        if s["auth_mode"] == "oauth":
            if not s["user"]:
                raise LakebaseError(
                    "auth_mode=oauth needs LAKEBASE_USER: the Databricks identity (user e-mail or "
                    "service principal application id) that owns the database role"
                )
            provider = databricks_token_provider(
                instance_name=s["instance_name"], endpoint=s["endpoint"]
            )
            return LakebaseClient(
                conninfo,
                min_size=self.min_pool_size,
                max_size=self.max_pool_size,
                timeout=self.pool_timeout_seconds,
                connection_class=oauth_connection_class(provider),
            )
        connect_kwargs = {"password": s["password"]} if s["password"] else None
        return LakebaseClient(
            conninfo,
            min_size=self.min_pool_size,
            max_size=self.max_pool_size,
            timeout=self.pool_timeout_seconds,
            connect_kwargs=connect_kwargs,
        )


def _fingerprint(key: str, value: Any) -> Any:
    # The cache key must not keep the password itself in a long-lived structure.
    if key == "password" and value:
        import hashlib

        return hashlib.sha256(value.encode()).hexdigest()
    return value


def oauth_connection_class(token_provider: Callable[[], str]) -> type[psycopg.Connection]:
    """A psycopg Connection class that logs in with a freshly minted token on every connect.

    Lakebase checks the token only at login, so pooled connections outlive the token's hour;
    each new physical connection (pool growth, reconnect) gets a new one.
    """

    class OAuthConnection(psycopg.Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> OAuthConnection:  # type: ignore[override]
            token = token_provider()
            try:
                return super().connect(conninfo, **{**kwargs, "password": token})
            except psycopg.Error as exc:
                raise LakebaseError(f"cannot log in to Lakebase: {redact(exc, [token])}") from None

    return OAuthConnection


def databricks_token_provider(
    *, instance_name: str | None, endpoint: str | None, workspace_client: Any = None
) -> Callable[[], str]:
    """A function returning a new Lakebase OAuth token each call (databricks-sdk auth)."""
    if not instance_name and not endpoint:
        raise LakebaseError(
            "auth_mode=oauth needs DATALOADER_LAKEBASE_INSTANCE (provisioned database instance) "
            "or DATALOADER_LAKEBASE_ENDPOINT (autoscaling projects/<p>/branches/<b>/endpoints/<e>)"
        )
    lock = threading.Lock()
    holder: dict[str, Any] = {"client": workspace_client}

    def _workspace():
        with lock:
            if holder["client"] is None:
                holder["client"] = _new_workspace_client(host=workspace_host(os.environ))
            return holder["client"]

    def mint() -> str:
        w = _workspace()
        try:
            if instance_name:
                credential = w.database.generate_database_credential(
                    instance_names=[instance_name], request_id=str(uuid.uuid4())
                )
                token = credential.token
            else:
                postgres_api = getattr(w, "postgres", None)
                if postgres_api is not None:
                    token = postgres_api.generate_database_credential(endpoint=endpoint).token
                else:
                    token = w.api_client.do(
                        "POST", _POSTGRES_CREDENTIALS_PATH, body={"endpoint": endpoint}
                    )["token"]
        # Any SDK, HTTP or auth failure: report which credential failed, without secrets.
        except Exception as exc:  # noqa: BLE001
            raise LakebaseError(
                f"could not mint a Lakebase credential for "
                f"{instance_name or endpoint}: {redact(exc)}"
            ) from None
        if not token:
            raise LakebaseError(f"Databricks returned no token for {instance_name or endpoint}")
        return token

    return mint


def reset_client_cache() -> None:
    """Close cached clients (for tools that reconfigure the resource inside one process)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
