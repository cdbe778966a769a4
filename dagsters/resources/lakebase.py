"""The ``lakebase`` resource: where the control database is and how to log in to it.

Built at the edge with ``LakebaseResource.from_settings(settings)`` from ``Settings.lakebase`` (the
spec's ``LAKEBASE_*`` variables, parsed once in ``dagsters/settings.py``). The password is passed
as ``dg.EnvVar("LAKEBASE_PASSWORD")``, so it never shows in the UI's resource configuration.

- ``host`` / ``port`` / ``database`` / ``user`` / ``password`` / ``sslmode``: the connection.
- ``auth_mode``: ``password`` (default) or ``oauth``. With ``oauth`` every new physical connection
  logs in with a fresh Databricks database credential, minted through the injected
  ``databricks_workspace`` resource (``workspace``: host from settings, or the SDK's own
  ``DATABRICKS_HOST``; any SDK auth): ``instance_name`` for a provisioned database instance, or
  ``endpoint`` (``projects/<p>/branches/<b>/endpoints/<e>``) for an autoscaling Lakebase project.

``lakebase_connection(settings.lakebase, ...)`` is the one place a connection is described; the
resource and the migrations runner both use it. The resource itself always needs a host: with
none, the edge (``definitions.py``, the CLI) gives it the embedded local server's instead.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from dagsters.resources.databricks_workspace import (
    DatabricksWorkspaceResource,
    workspace_or_default,
)
from dagsters.settings import LAKEBASE_AUTH_MODES, LakebaseSettings, Settings
from dagsters.utils.lakebase_client import LakebaseClient, LakebaseError
from databricks_scripts.redaction import redact

_clients: dict[tuple, LakebaseClient] = {}
_clients_lock = threading.Lock()

# Autoscaling Lakebase (projects/branches/endpoints) mints credentials here. The installed
# databricks-sdk (pinned < 0.61 by dagster-databricks) has no typed ``w.postgres`` API yet, so
# the request goes through the SDK's own authenticated HTTP client when the typed API is absent.
_POSTGRES_CREDENTIALS_PATH = "/api/2.0/postgres/credentials"


@dataclass(frozen=True)
class LakebaseConnection:
    """How to open a connection: conninfo without secrets, plus what logs in."""

    conninfo: str
    connect_kwargs: dict | None = None
    connection_class: type[psycopg.Connection] | None = None

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        connection_class = self.connection_class or psycopg.Connection
        return connection_class.connect(self.conninfo, **{**(self.connect_kwargs or {}), **kwargs})


def lakebase_connection(
    settings: LakebaseSettings,
    *,
    workspace: DatabricksWorkspaceResource | None = None,
    connect_timeout_seconds: int = 10,
) -> LakebaseConnection:
    """The connection ``settings`` describe (password or OAuth login); never the embedded one."""
    if not settings.host:
        raise LakebaseError("no Lakebase host: set LAKEBASE_HOST (or use the local CLI)")
    if settings.auth_mode not in LAKEBASE_AUTH_MODES:
        raise LakebaseError(f"auth_mode must be 'password' or 'oauth', not {settings.auth_mode!r}")
    conninfo = psycopg.conninfo.make_conninfo(
        host=settings.host,
        port=settings.port,
        dbname=settings.database,
        user=settings.user,
        sslmode=settings.sslmode,
        connect_timeout=connect_timeout_seconds,
        application_name="dataloader",
    )
    if settings.auth_mode == "oauth":
        if not settings.user:
            raise LakebaseError(
                "auth_mode=oauth needs LAKEBASE_USER: the Databricks identity (user e-mail or "
                "service principal application id) that owns the database role"
            )
        provider = databricks_token_provider(
            instance_name=settings.instance_name,
            endpoint=settings.endpoint,
            workspace=workspace,
        )
        return LakebaseConnection(conninfo, connection_class=oauth_connection_class(provider))
    password = {"password": settings.password} if settings.password else None
    return LakebaseConnection(conninfo, connect_kwargs=password)


class LakebaseResource(dg.ConfigurableResource):
    """Connection settings for the Lakebase control database; ``get_client()`` does the rest."""

    host: str | None = Field(default=None, description="LAKEBASE_HOST")
    port: int = Field(default=5432, description="LAKEBASE_PORT")
    database: str = Field(default="dataloader", description="LAKEBASE_DATABASE")
    user: str | None = Field(default=None, description="LAKEBASE_USER")
    password: str | None = Field(
        default=None, description="LAKEBASE_PASSWORD (auth_mode=password only; an EnvVar)"
    )
    sslmode: str = Field(default="require", description="LAKEBASE_SSLMODE")
    auth_mode: str = Field(default="password", description="password | oauth")
    instance_name: str | None = Field(
        default=None, description="Provisioned database instance (DATALOADER_LAKEBASE_INSTANCE)"
    )
    endpoint: str | None = Field(
        default=None,
        description="Autoscaling endpoint projects/<p>/branches/<b>/endpoints/<e> "
        "(DATALOADER_LAKEBASE_ENDPOINT)",
    )
    workspace: DatabricksWorkspaceResource | None = Field(
        default=None,
        description="The code location's databricks_workspace, minting OAuth credentials; unset: "
        "the SDK's own host",
    )
    min_pool_size: int = 1
    max_pool_size: int = 4
    connect_timeout_seconds: int = 10
    pool_timeout_seconds: float = Field(
        default=30.0, description="How long a caller waits for a pooled connection"
    )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LakebaseResource:
        """The resource for ``settings.lakebase``; the password stays an environment reference
        (``overrides``: other fields, such as ``workspace``, the code location's shared one)."""
        lakebase = settings.lakebase
        values: dict[str, Any] = {
            "host": lakebase.host,
            "port": lakebase.port,
            "database": lakebase.database,
            "user": lakebase.user,
            "password": dg.EnvVar("LAKEBASE_PASSWORD") if lakebase.password else None,
            "sslmode": lakebase.sslmode,
            "auth_mode": lakebase.auth_mode,
            "instance_name": lakebase.instance_name,
            "endpoint": lakebase.endpoint,
            "workspace": DatabricksWorkspaceResource.from_settings(settings),
        }
        return cls(**{**values, **overrides})

    # -- never show secrets -----------------------------------------------------------------------

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._settings().__dict__.items() if k != "password"}
        shown["password"] = "***" if self.password else None
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    # -- connection -------------------------------------------------------------------------------

    def _settings(self) -> LakebaseSettings:
        password = self.password
        if isinstance(password, dg.EnvVar):  # used outside a run: Dagster has not resolved it
            password = password.get_value()
        return LakebaseSettings(
            host=self.host,
            port=self.port,
            database=self.database,
            user=self.user,
            password=password,
            sslmode=self.sslmode,
            auth_mode=self.auth_mode,
            instance_name=self.instance_name,
            endpoint=self.endpoint,
        )

    def connection(self) -> LakebaseConnection:
        return lakebase_connection(
            self._settings(),
            workspace=self.workspace,
            connect_timeout_seconds=self.connect_timeout_seconds,
        )

    def conninfo(self) -> str:
        """The connection string without any password or token (safe to log)."""
        return self.connection().conninfo

    def get_client(self) -> LakebaseClient:
        """A pooled :class:`LakebaseClient`, one per process and configuration."""
        s = self._settings()
        key = (
            os.getpid(),  # a forked worker must not share its parent's pool
            type(self).__name__,
            self.workspace.host if self.workspace else None,
            tuple(sorted((k, _fingerprint(k, v)) for k, v in s.__dict__.items())),
        )
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                connection = self.connection()
                client = LakebaseClient(
                    connection.conninfo,
                    min_size=self.min_pool_size,
                    max_size=self.max_pool_size,
                    timeout=self.pool_timeout_seconds,
                    connect_kwargs=connection.connect_kwargs,
                    connection_class=connection.connection_class,
                )
                _clients[key] = client
            return client


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
    *,
    instance_name: str | None,
    endpoint: str | None,
    workspace: DatabricksWorkspaceResource | None = None,
) -> Callable[[], str]:
    """A function returning a new Lakebase OAuth token each call, minted through ``workspace``
    (the injected ``databricks_workspace``; None: the SDK's own host). Its client is built at the
    first mint and kept."""
    if not instance_name and not endpoint:
        raise LakebaseError(
            "auth_mode=oauth needs DATALOADER_LAKEBASE_INSTANCE (provisioned database instance) "
            "or DATALOADER_LAKEBASE_ENDPOINT (autoscaling projects/<p>/branches/<b>/endpoints/<e>)"
        )
    minter = workspace_or_default(workspace)

    def mint() -> str:
        w = minter.get_client()
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
