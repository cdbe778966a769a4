"""The ``models_repo`` resource: where ``landing_table_git_job`` reads schemas and writes dbt files.

Plain values only, built at the edge with :meth:`ModelsRepoResource.from_settings` from
``Settings.paths`` (``DATALOADER_MODELS_REPO``, ``DATALOADER_MODELS_BRANCH``,
``DATALOADER_MODELS_REMOTE``, ``DATALOADER_LAKE_ROOT``, ``DATALOADER_HOME``) and
``Settings.execution`` (``DATALOADER_EXECUTION``). No secrets: push credentials are whatever git
uses on the machine (SSH key, credential helper).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from dagsters.landing.git_repo import ModelsRepo
from dagsters.settings import DEFAULT_MODELS_BRANCH, Settings


class ModelsRepoResource(dg.ConfigurableResource):
    """The models repository's working copy, its branch and remote, and where schemas are read."""

    path: str = Field(description="Working copy the dbt files are written to (created if missing)")
    branch: str = Field(default=DEFAULT_MODELS_BRANCH, description="Branch the job commits to")
    remote: str | None = Field(
        default=None, description="Remote to push to; unset: origin, or the only remote, or none"
    )
    lock_dir: str = Field(description="Directory of the lock file serialising runs on the copy")
    lake_root: str = Field(description="Local lake the local loader writes Delta tables to")
    execution: str = Field(
        default="local", description="local (schemas from Delta) | databricks (Unity Catalog)"
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelsRepoResource:
        paths = settings.paths
        return cls(
            path=str(paths.models_repo),
            branch=paths.models_branch,
            remote=paths.models_remote,
            lock_dir=str(paths.home / "locks"),
            lake_root=str(paths.lake_root),
            execution=settings.execution,
        )

    def repo(self) -> ModelsRepo:
        return ModelsRepo(
            Path(self.path), branch=self.branch, remote=self.remote, lock_dir=Path(self.lock_dir)
        )
