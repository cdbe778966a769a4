"""The ``databricks_rest`` resource: SQL on a Databricks SQL warehouse over the REST API.

Statements go through the SQL Statement Execution API with databricks-sdk's
``WorkspaceClient().statement_execution``. Built at the edge with
:meth:`DatabricksRestResource.from_settings`: the warehouse is ``Settings.databricks.warehouse_id``
(``DATABRICKS_WAREHOUSE_ID``) and the client the code location's one ``databricks_workspace``
resource (host from settings; credentials from the SDK's own authentication chain:
``DATABRICKS_TOKEN``, OAuth, a config profile...; see ``dagsters.resources.databricks_workspace``),
so no secret is ever part of this resource's config.

The API answers synchronously for up to ``wait_timeout_seconds``; a slower statement keeps running
and is polled until it finishes or ``statement_timeout_seconds`` have passed, after which it is
cancelled, so a stuck warehouse cannot hold a run forever.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from dagsters.resources.databricks_workspace import (
    DatabricksWorkspaceResource,
    workspace_or_default,
)
from dagsters.settings import Settings
from databricks_scripts.redaction import redact

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.sql import StatementResponse

# Terminal states of a statement (PENDING and RUNNING are the others).
_DONE_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "CLOSED")


class DatabricksSqlError(Exception):
    """A statement failed, was cancelled, timed out or could not be submitted."""


class DatabricksRestResource(dg.ConfigurableResource):
    """Runs SQL statements on a Databricks SQL warehouse and returns the rows as dicts."""

    warehouse_id: str | None = Field(
        default=None, description="SQL warehouse id (DATABRICKS_WAREHOUSE_ID)"
    )
    workspace: DatabricksWorkspaceResource | None = Field(
        default=None,
        description="The code location's databricks_workspace; unset: the SDK's own host.",
    )
    wait_timeout_seconds: int = Field(
        default=10,
        description="How long each submit waits server-side for the result (0 or 5..50).",
    )
    poll_interval_seconds: float = Field(
        default=1.0, description="Pause between status polls of a statement still running."
    )
    statement_timeout_seconds: float = Field(
        default=300.0, description="Give up (and cancel) a statement running longer than this."
    )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DatabricksRestResource:
        """The resource the code location uses; ``overrides`` set other fields (``workspace``:
        the code location's shared one; tests)."""
        values: dict[str, Any] = {
            "warehouse_id": settings.databricks.warehouse_id,
            "workspace": DatabricksWorkspaceResource.from_settings(settings),
        }
        return cls(**{**values, **overrides})

    def get_workspace_client(self) -> WorkspaceClient:
        """The injected workspace's databricks-sdk client (host from settings, SDK auth)."""
        return workspace_or_default(self.workspace).get_client()

    def resolved_warehouse_id(self) -> str:
        warehouse = self.warehouse_id
        if not warehouse:
            raise DatabricksSqlError(
                "no SQL warehouse configured: set DATABRICKS_WAREHOUSE_ID (or the resource's "
                "warehouse_id)"
            )
        return warehouse

    def execute_statement(
        self,
        statement: str,
        parameters: Mapping[str, str | None] | None = None,
        *,
        catalog: str | None = None,
        schema: str | None = None,
    ) -> list[dict[str, str | None]]:
        """Run ``statement`` (named ``:markers`` bound from ``parameters``) and return its rows.

        Values come back as the API's JSON_ARRAY strings (or None), keyed by column name.
        """
        from databricks.sdk.errors import DatabricksError
        from databricks.sdk.service.sql import (
            Disposition,
            ExecuteStatementRequestOnWaitTimeout,
            Format,
            StatementParameterListItem,
        )

        client = self.get_workspace_client()
        api = client.statement_execution
        params = [
            StatementParameterListItem(name=name, value=value)
            for name, value in (parameters or {}).items()
        ]
        try:
            response = api.execute_statement(
                statement=statement,
                warehouse_id=self.resolved_warehouse_id(),
                catalog=catalog,
                schema=schema,
                parameters=params or None,
                disposition=Disposition.INLINE,
                format=Format.JSON_ARRAY,
                wait_timeout=f"{self.wait_timeout_seconds}s",
                on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
            )
            response = self._wait(api, response)
            return self._rows(api, response)
        except DatabricksError as exc:
            raise DatabricksSqlError(self._redact(f"Databricks SQL API error: {exc}")) from None

    # -- internals ----------------------------------------------------------------------------

    def _wait(self, api: Any, response: StatementResponse) -> StatementResponse:
        deadline = time.monotonic() + self.statement_timeout_seconds
        while _state(response) not in _DONE_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                api.cancel_execution(response.statement_id)
                raise DatabricksSqlError(
                    f"statement {response.statement_id} still {_state(response)} after "
                    f"{self.statement_timeout_seconds:g}s; cancelled"
                )
            time.sleep(min(self.poll_interval_seconds, remaining))
            response = api.get_statement(response.statement_id)
        state = _state(response)
        if state != "SUCCEEDED":
            error = response.status.error if response.status else None
            code = getattr(error.error_code, "value", error.error_code) if error else None
            detail = f"{code}: {error.message}" if error else "no error detail"
            raise DatabricksSqlError(
                self._redact(f"statement {response.statement_id} {state}: {detail}")
            )
        return response

    def _rows(self, api: Any, response: StatementResponse) -> list[dict[str, str | None]]:
        manifest = response.manifest
        if manifest is None or manifest.schema is None:
            return []
        if manifest.truncated:
            # Partial metadata would silently drop columns; better to fail loudly.
            raise DatabricksSqlError(
                f"statement {response.statement_id} result was truncated by the API limits"
            )
        names = [c.name for c in sorted(manifest.schema.columns or [], key=_position)]
        rows: list[dict[str, str | None]] = []
        chunk = response.result
        while chunk is not None:
            rows.extend(dict(zip(names, values, strict=True)) for values in chunk.data_array or [])
            if chunk.next_chunk_index is None:
                break
            chunk = api.get_statement_result_chunk_n(response.statement_id, chunk.next_chunk_index)
        return rows

    def _redact(self, text: str) -> str:
        token = getattr(self.get_workspace_client().config, "token", None)
        return redact(text, secrets=[token])


def _state(response: StatementResponse) -> str:
    status = response.status
    return status.state.value if status and status.state else "PENDING"


def _position(column: Any) -> int:
    return column.position if column.position is not None else 0
