"""The ``lakebase`` resource for local mode: the embedded server instead of ``LAKEBASE_HOST``.

``build_definitions`` uses it when ``settings.lakebase`` names no host. Like the product resource it
connects lazily: the embedded server is started, migrated and seeded with the demo rows when the
resource first builds a client in a process (a sensor tick, a run worker), never when the code
location merely loads. The wheel shares one server between the processes that start it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.lakebase import LakebaseConnection, LakebaseResource
from dagsters.settings import Settings


class EmbeddedLakebaseResource(LakebaseResource):
    """``LakebaseResource`` whose connection is the embedded server under ``home``."""

    home: str = Field(description="DATALOADER_HOME: the embedded server's data lives here")
    seed_demo: bool = Field(default=True, description="Seed the demo tables and control rows")

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: Any) -> EmbeddedLakebaseResource:
        return cls.from_settings(
            settings, home=str(settings.paths.home), sslmode="disable", **overrides
        )

    def connection(self) -> LakebaseConnection:
        # Imported here, not when the code location loads: only a process that connects needs
        # the embedded server, its migrations and the demo seed.
        from dagsters.local.demo import start_demo_lakebase
        from dagsters.local.embedded_lakebase import CONTROL_DATABASE

        server = start_demo_lakebase(Path(self.home), seed=self.seed_demo)
        return LakebaseConnection(server.conninfo(CONTROL_DATABASE))


def lakebase_resource(
    settings: Settings, workspace: DatabricksWorkspaceResource | None = None
) -> LakebaseResource:
    """The ``lakebase`` resource for ``settings``: the configured server, else the embedded one.

    ``workspace``: the code location's ``databricks_workspace`` (OAuth logins mint through it);
    unset: one built from ``settings``."""
    shared = {"workspace": workspace} if workspace is not None else {}
    if settings.lakebase.embedded:
        return EmbeddedLakebaseResource.for_settings(settings, **shared)
    return LakebaseResource.from_settings(settings, **shared)
